"""Collector tokens: who may submit, as which vantage.

A token is ``bwc_`` and 43 URL-safe characters of a 256-bit random secret (``secrets``). It
is printed once, at ``blockwatch collector token add``; the database keeps only its SHA-256
(a fast hash is enough for a secret of that entropy: nothing to guess, nothing to stretch).
A token is checked in constant time per candidate by looking up its hash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from blockwatch.storage import collector as db

PREFIX = "bwc_"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
COUNTRY = re.compile(r"^[A-Z]{2}$")


class TokenError(ValueError):
    """A token command that cannot be done; the message says why."""


@dataclass(frozen=True, slots=True)
class Vantage:
    """What a valid token stands for."""

    name: str
    country: str | None
    asn: int | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None
    control: bool = False  # outside the censored networks: its measurements judge the others'



def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _vantage(row: Any) -> Vantage:
    return Vantage(row.vantage, row.country, row.asn, row.created_at, row.revoked_at,
                   bool(row.control))


def add(store: Any, name: str, *, country: str | None = None, asn: int | None = None,
        control: bool = False) -> str:
    """A new vantage and its token (returned once, never stored)."""
    if not NAME.match(name):
        raise TokenError(f"vantage name {name!r}: 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    if country is not None and not COUNTRY.match(country):
        raise TokenError(f"country {country!r}: two capital letters (ISO 3166-1 alpha-2)")
    if asn is not None and not 0 < asn < 2**32:
        raise TokenError(f"asn {asn}: a number from 1 to 4294967295")
    token = PREFIX + secrets.token_urlsafe(32)
    try:
        db.add_token(store, name, digest(token), country, asn, control)
    except db.Exists:
        raise TokenError(f"vantage {name!r} has a token already (revoke it first, or choose "
                         "another name)") from None
    return token


def listed(store: Any) -> list[Vantage]:
    return [_vantage(r) for r in db.tokens(store)]


def revoke(store: Any, name: str) -> None:
    if not db.revoke_token(store, name):
        raise TokenError(f"no vantage {name!r} with a valid token")


def check(store: Any, token: str) -> Vantage | None:
    """The vantage of ``token`` (revoked ones too: the caller tells 401 from 403), or None."""
    if not token.startswith(PREFIX) or len(token) > 128:
        return None
    row = db.token_by_hash(store, digest(token))
    return None if row is None else _vantage(row)
