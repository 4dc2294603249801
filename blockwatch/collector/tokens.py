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

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from blockwatch.storage.errors import StorageError
from blockwatch.storage.tables import CollectorTokenRow

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


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _vantage(row: CollectorTokenRow) -> Vantage:
    return Vantage(row.vantage, row.country, row.asn, row.created_at, row.revoked_at)


def add(store: Any, name: str, *, country: str | None = None, asn: int | None = None) -> str:
    """A new vantage and its token (returned once, never stored)."""
    if not NAME.match(name):
        raise TokenError(f"vantage name {name!r}: 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    if country is not None and not COUNTRY.match(country):
        raise TokenError(f"country {country!r}: two capital letters (ISO 3166-1 alpha-2)")
    if asn is not None and not 0 < asn < 2**32:
        raise TokenError(f"asn {asn}: a number from 1 to 4294967295")
    token = PREFIX + secrets.token_urlsafe(32)
    row = CollectorTokenRow(vantage=name, secret_sha256=digest(token), country=country,
                            asn=asn, created_at=dt.datetime.now(dt.UTC), revoked_at=None)
    try:
        with store._transaction(write=True) as s:
            s.add(row)
    except StorageError as exc:
        if isinstance(exc.__cause__, IntegrityError):
            raise TokenError(f"vantage {name!r} has a token already (revoke it first, or "
                             "choose another name)") from None
        raise
    return token


def listed(store: Any) -> list[Vantage]:
    with store._transaction() as s:
        rows = s.scalars(select(CollectorTokenRow).order_by(CollectorTokenRow.vantage)).all()
        return [_vantage(r) for r in rows]


def revoke(store: Any, name: str) -> None:
    with store._transaction(write=True) as s:
        done = s.execute(update(CollectorTokenRow)
                         .where(CollectorTokenRow.vantage == name,
                                CollectorTokenRow.revoked_at.is_(None))
                         .values(revoked_at=dt.datetime.now(dt.UTC)))
        if done.rowcount != 1:
            raise TokenError(f"no vantage {name!r} with a valid token")


def check(store: Any, token: str) -> Vantage | None:
    """The vantage of ``token`` (revoked ones too: the caller tells 401 from 403), or None."""
    if not token.startswith(PREFIX) or len(token) > 128:
        return None
    with store._transaction() as s:
        row = s.scalars(select(CollectorTokenRow)
                        .where(CollectorTokenRow.secret_sha256 == digest(token))).first()
        return None if row is None else _vantage(row)
