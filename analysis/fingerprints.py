"""Block-page and forged-DNS fingerprints in OONI's format: load, validate, precompile, match.

A fingerprint file is a JSON list of objects with ``name``, ``location_found`` (``dns``,
``body`` or ``header.<name>``), ``pattern``, ``pattern_type`` (``full``, ``prefix``,
``contains`` or ``regexp``), ``scope`` and optionally ``expected_countries`` (a comma-separated
string or a list), ``confidence_no_fp`` (an integer) and ``other_names``: exactly OONI's files.

Guarantees:

- A file that is missing, too large (``MAX_FILE_BYTES``), not JSON, not a list, or holds an
  entry with a missing or wrong field raises ``FingerprintError`` naming the file, the entry (by
  index and name) and the field; nothing is half-loaded. Names must be unique across the files
  of one ``FingerprintSet``.
- Patterns are compiled once at load (regexps too, so a broken regexp is a load error, never a
  matching-time crash). DNS ``full`` patterns are a dictionary lookup.
- Known false positives (scope ``fp``) are returned before any other match, so a caller that
  checks the first match never calls a CDN's captcha a block page.
- Matching reads only what it is given; callers bound it (the HTTP probe keeps a body sample).

The built-in set (``analysis/data/fingerprints/*.json``) is small and written from public facts,
each entry saying where the fact comes from; OONI's own, much larger lists can be added with
``[analysis] fingerprints``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

PatternType = Literal["full", "prefix", "contains", "regexp"]
PATTERN_TYPES: tuple[str, ...] = ("full", "prefix", "contains", "regexp")
MAX_FILE_BYTES = 16 * 1024 * 1024  # OONI's HTTP list is ~400 KB; 16 MiB is room, not a hazard
FALSE_POSITIVE = "fp"
# Scopes whose match is a signature strong enough without a control (national, ISP, product,
# institution, injected block page); "vbw" (vague block word) and unknown scopes are weak.
STRONG_SCOPES = frozenset({"nat", "isp", "prod", "inst", "injb"})
_REQUIRED = ("name", "location_found", "pattern", "pattern_type", "scope")


class FingerprintError(ValueError):
    """A fingerprint file or entry is wrong; the message names the file, entry and field."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Fingerprint:
    name: str
    location: str  # "dns", "body" or "header.<lower-case name>"
    pattern: str
    pattern_type: str
    scope: str
    countries: tuple[str, ...] = ()
    confidence: int = 0
    source: str = ""
    regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @property
    def false_positive(self) -> bool:
        return self.scope == FALSE_POSITIVE

    @property
    def strong(self) -> bool:
        return self.scope in STRONG_SCOPES

    def matches(self, text: str) -> bool:
        if self.pattern_type == "full":
            return text == self.pattern
        if self.pattern_type == "prefix":
            return text.startswith(self.pattern)
        if self.pattern_type == "contains":
            return self.pattern in text
        assert self.regex is not None
        return self.regex.search(text) is not None


def _countries(value: Any, where: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise FingerprintError(f"{where}: expected_countries must be a string or a list")
    return tuple(c.strip().upper() for c in value if c.strip())


def _text(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise FingerprintError(f"{where}: {key} must be a non-empty string")
    return value


def parse_entry(entry: Any, where: str) -> Fingerprint:
    """One validated, compiled fingerprint; ``where`` prefixes every error message."""
    if not isinstance(entry, dict):
        raise FingerprintError(f"{where}: must be an object, not {type(entry).__name__}")
    missing = [k for k in _REQUIRED if k not in entry]
    name = entry.get("name")
    if isinstance(name, str) and name:
        where = f"{where} ({name})"
    if missing:
        raise FingerprintError(f"{where}: missing {missing[0]}")
    name = _text(entry, "name", where)
    location = _text(entry, "location_found", where).lower()
    if location not in ("dns", "body") and not (location.startswith("header.") and location[7:]):
        raise FingerprintError(
            f"{where}: location_found {location!r} must be dns, body or header.<name>")
    pattern = _text(entry, "pattern", where)
    ptype = _text(entry, "pattern_type", where)
    if ptype not in PATTERN_TYPES:
        raise FingerprintError(
            f"{where}: pattern_type {ptype!r} must be one of {', '.join(PATTERN_TYPES)}")
    regex = None
    if ptype == "regexp":
        try:
            regex = re.compile(pattern, re.DOTALL)
        except re.error as exc:
            raise FingerprintError(f"{where}: pattern is not a valid regexp: {exc}") from None
    confidence = entry.get("confidence_no_fp", 0)
    if not isinstance(confidence, int) or isinstance(confidence, bool):
        raise FingerprintError(f"{where}: confidence_no_fp must be an integer")
    source = entry.get("source", "")
    return Fingerprint(
        name=name, location=location, pattern=pattern, pattern_type=ptype,
        scope=_text(entry, "scope", where).lower(),
        countries=_countries(entry.get("expected_countries"), where), confidence=confidence,
        source=source if isinstance(source, str) else "", regex=regex,
    )


def parse_list(data: Any, source: str) -> list[Fingerprint]:
    if not isinstance(data, list):
        raise FingerprintError(f"{source}: must be a JSON list of fingerprints, "
                               f"not {type(data).__name__}")
    return [parse_entry(e, f"{source}: entry {i}") for i, e in enumerate(data)]


def load_file(path: str | Path) -> list[Fingerprint]:
    """Read and validate one fingerprint file (size-checked before it is read)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_FILE_BYTES:
            raise FingerprintError(f"{p}: {size} bytes is too large for a fingerprint file "
                                   f"(limit {MAX_FILE_BYTES})")
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FingerprintError(f"{p}: no such fingerprint file") from None
    except IsADirectoryError:
        raise FingerprintError(f"{p}: is a directory, not a fingerprint file") from None
    except UnicodeDecodeError as exc:
        raise FingerprintError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise FingerprintError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FingerprintError(
            f"{p}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    return parse_list(data, str(p))


@dataclass(frozen=True, slots=True)
class HTTPMatch:
    fingerprint: Fingerprint
    where: str  # "body" or "header.<name>"


class FingerprintSet:
    """Fingerprints ready to match: false positives first, then the rest in load order."""

    def __init__(self, fingerprints: Iterable[Fingerprint]) -> None:
        seen: dict[str, Fingerprint] = {}
        for fp in fingerprints:
            if fp.name in seen:
                raise FingerprintError(f"fingerprint name {fp.name!r} is defined twice")
            seen[fp.name] = fp
        ordered = sorted(seen.values(), key=lambda f: not f.false_positive)  # stable: fp first
        self._dns_full: dict[str, Fingerprint] = {}
        self._dns_other: list[Fingerprint] = []
        self._http: list[Fingerprint] = []
        for fp in ordered:
            if fp.location == "dns":
                if fp.pattern_type == "full":
                    self._dns_full.setdefault(fp.pattern, fp)
                else:
                    self._dns_other.append(fp)
            else:
                self._http.append(fp)
        self.names = tuple(seen)

    def __len__(self) -> int:
        return len(self.names)

    def match_dns(self, address: str) -> Fingerprint | None:
        """The fingerprint of a forged DNS answer, if ``address`` is a known one."""
        found = self._dns_full.get(address)
        if found is not None:
            return found
        return next((fp for fp in self._dns_other if fp.matches(address)), None)

    def match_http(self, body: str | None,
                   headers: Sequence[tuple[str, str]] = ()) -> list[HTTPMatch]:
        """Every HTTP fingerprint matching the body or a header: false positives first."""
        by_name: dict[str, list[str]] = {}
        for key, value in headers:
            by_name.setdefault(f"header.{key.lower()}", []).append(value)
        out: list[HTTPMatch] = []
        for fp in self._http:
            if fp.location == "body":
                if body and fp.matches(body):
                    out.append(HTTPMatch(fp, "body"))
            elif any(fp.matches(v) for v in by_name.get(fp.location, ())):
                out.append(HTTPMatch(fp, fp.location))
        return out


EMPTY = FingerprintSet(())


def builtin() -> list[Fingerprint]:
    """The fingerprints shipped in ``analysis/data/fingerprints``."""
    folder = resources.files("blockwatch.analysis").joinpath("data/fingerprints")
    out: list[Fingerprint] = []
    for item in sorted(folder.iterdir(), key=lambda i: i.name):
        if item.name.endswith(".json"):
            source = f"analysis/data/fingerprints/{item.name}"
            try:
                data = json.loads(item.read_text("utf-8"))
            except json.JSONDecodeError as exc:
                raise FingerprintError(
                    f"{source}:{exc.lineno}: not valid JSON: {exc.msg}") from None
            out.extend(parse_list(data, source))
    return out


def load(paths: Iterable[str | Path] = (), *, include_builtin: bool = True) -> FingerprintSet:
    """The built-in fingerprints plus those of ``paths`` (files, or folders of ``*.json``)."""
    found: list[Fingerprint] = builtin() if include_builtin else []
    for path in paths:
        p = Path(path)
        files = sorted(p.glob("*.json")) if p.is_dir() else [p]
        if p.is_dir() and not files:
            raise FingerprintError(f"{p}: folder holds no *.json fingerprint file")
        for f in files:
            found.extend(load_file(f))
    return FingerprintSet(found)
