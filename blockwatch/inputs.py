"""Test lists a user brings: plain URL lists, Citizen Lab CSVs and OONI Run v2 descriptors.

``load_inputs`` reads one file into an :class:`InputList` of normalised, de-duplicated http(s)
URLs, each remembering where it came from (``list.csv:7``, ``run.json:nettests[0].inputs[3]``);
``services_from_inputs`` makes each URL a Service named by the URL (as OONI keys web
measurements). We never ship test lists (the Citizen Lab licence forbids it): users bring theirs.

Guarantees: bad input raises nothing but :class:`InputError` (a ``ValueError``) naming the file
and, where it applies, the line; file content only appears as ``repr()`` cut to 80 characters.
Memory and time are bounded: a regular file over ``max_bytes`` is refused from ``os.stat``
before a byte is read (other files once reading passes ``max_bytes``); text lines are read one
at a time and one over 64 KiB is skipped unkept; over ``max_urls`` URLs is an error; 1,000
skipped lines at most are listed, one last ``skipped`` entry counts the rest. NUL or non-UTF-8
bytes are refused (naming the line); a UTF-8 BOM and CRLF are fine. A line or entry that is not
a usable http(s) URL is skipped with its reason; a file with no usable URL is an error.

Detection (``fmt="auto"``): a name ending in ``.csv`` is a CSV, one ending in ``.json`` an OONI
Run descriptor (so that a CSV with the wrong columns is an error, not a plain list of nothing);
otherwise the content decides: a first non-whitespace byte ``{`` is an OONI Run descriptor; a
first line that parses as a CSV header with a ``url`` column (and no cell holding ``://``) is a
Citizen Lab test list; anything else is a plain list.

OONI Run v2 (ooni/spec ``backends/bk-005-ooni-run-v2.md``, version 2025.06.03), as read here:
top-level fields are those of the descriptor (section 3.0) and those the API adds (4.1 create
request and response, 4.4 engine descriptor), so a descriptor saved from any of these views
loads; only ``nettests`` is required (the engine descriptor has no ``name``). Nettest fields:
``test_name`` (required), ``inputs``, ``inputs_extra``, ``targets_name``,
``is_background_run_enabled``, ``is_manual_run_enabled``. Any other key is an error, including
``target_name`` (the spec's notes once spell ``targets_name`` so: taken for a typo). JSON
``null`` is an absent optional field. Only ``web_connectivity`` inputs are read; other nettests
are skipped (reason: their name), as is a ``web_connectivity`` without inputs (a
``targets_name`` list only the OONI backend computes, or OONI Probe's default list).
``inputs_extra`` is checked (objects, one per input); an entry's ``category_code`` becomes
its input's category. ``is_expired`` and the run flags are checked and ignored: the user
chose this file.

Size: the three formats share one bounded line reader (``_lines``), one error type and one list of
skipped entries, and a twelfth of the module is this docstring, the exact formats read, which
belongs beside the code that reads them.
"""

from __future__ import annotations

import codecs
import csv
import io
import ipaddress
import itertools
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from blockwatch.probes.model import Service

FORMATS: Final = ("auto", "plain", "csv", "ooni-run")
MAX_LINE: Final = 64 * 1024
MAX_URL: Final = 2048
MAX_LISTED_SKIPS: Final = 1000
_PORTS: Final = {"http": 80, "https": 443}
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
_LONG_LINE = f"line longer than {MAX_LINE} bytes"
_LONG_URL = f"URL longer than {MAX_URL} characters"
Lines = Iterator[tuple[int, str | None]]


class InputError(ValueError):
    """A test list that cannot be used; the message names the file (and line: "list.csv:7: ...")."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InputURL:
    url: str  # normalised (see _normalise)
    category: str | None  # category_code from a CSV, None otherwise
    where: str  # "FILE:LINE", or "FILE:nettests[0].inputs[3]"


@dataclass(frozen=True, slots=True, kw_only=True)
class InputList:
    path: str
    format: str  # "plain" | "csv" | "ooni-run"
    urls: tuple[InputURL, ...]  # in file order, duplicates (after normalisation) removed
    skipped: tuple[tuple[str, str], ...]  # (where, reason)
    duplicates: int


class _Bad(Exception):
    """Why one URL cannot be used (its line or entry is skipped)."""


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _normalise(text: str) -> str:
    """Scheme and host lower-cased, IDN host to punycode, default port and fragment dropped."""
    scheme, sep, _ = text.partition("://")
    for bad, reason in ((not text, "empty URL"), (len(text) > MAX_URL, _LONG_URL),
                        (not text.isprintable(), "control or invisible character in URL"),
                        (not sep, "no http:// or https://"),
                        (scheme.lower() not in _PORTS, f"scheme {_show(scheme)} is not http(s)"),
                        (" " in text, "space in URL")):
        if bad:
            raise _Bad(reason)
    try:
        parts = urlsplit(text)
    except ValueError:
        raise _Bad("not a valid URL") from None
    if "@" in parts.netloc:
        raise _Bad("user name or password in URL")
    if not parts.hostname:
        raise _Bad("no host in URL")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise _Bad("invalid port in URL")
    netloc = _host(parts.hostname, bracketed=parts.netloc.startswith("["))
    if port is not None and port != _PORTS[parts.scheme]:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _host(host: str, *, bracketed: bool) -> str:
    if bracketed:
        try:
            return f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            raise _Bad(f"invalid IPv6 address {_show(host)}") from None
    try:
        name = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise _Bad(f"invalid host name {_show(host)}") from None
    labels = name.removesuffix(".").split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise _Bad(f"invalid host name {_show(host)}")
    if labels[-1].isdigit():
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            raise _Bad(f"invalid IPv4 address {_show(host)}") from None
    return name


class _Found:
    """URLs found so far (de-duplicated, at most max_urls) and the lines skipped."""

    def __init__(self, name: str, max_urls: int) -> None:
        self.name, self.max_urls = name, max_urls
        self.urls: dict[str, InputURL] = {}
        self.skipped: list[tuple[str, str]] = []
        self.n_skipped = self.duplicates = 0

    def skip(self, where: str, reason: str) -> None:
        self.n_skipped += 1
        if len(self.skipped) < MAX_LISTED_SKIPS:
            self.skipped.append((where, reason))

    def add(self, text: str, category: str | None, where: str) -> None:
        try:
            url = _normalise(text)
        except _Bad as e:
            self.skip(where, f"{e}: {_show(text)}" if text else str(e))
            return
        if url in self.urls:
            self.duplicates += 1
        elif len(self.urls) >= self.max_urls:
            raise InputError(f"{where}: more than the limit of {self.max_urls} URLs")
        else:
            self.urls[url] = InputURL(url=url, category=category, where=where)

    def result(self, path: str, fmt: str) -> InputList:
        if not self.urls:
            first = "; the first, {}: {}".format(*self.skipped[0]) if self.skipped else ""
            raise InputError(f"{self.name}: no URL found ({self.n_skipped} lines or entries "
                             f"skipped{first})")
        skipped = list(self.skipped)
        if self.n_skipped > len(skipped):
            skipped.append((self.name, f"{self.n_skipped - len(skipped)} more skipped, not listed"))
        return InputList(path=path, format=fmt, urls=tuple(self.urls.values()),
                         skipped=tuple(skipped), duplicates=self.duplicates)


# --- reading ----------------------------------------------------------------------------------


def _too_big(name: str, size: int | str, max_bytes: int) -> InputError:
    return InputError(f"{name}: {size} bytes, more than the limit of {max_bytes} bytes")


def _decode(decoder: codecs.IncrementalDecoder, raw: bytes, final: bool, where: str) -> str:
    if b"\0" in raw:
        raise InputError(f"{where}: NUL byte: binary data, not a text list")
    try:
        return str(decoder.decode(raw, final))
    except UnicodeDecodeError as e:
        raise InputError(f"{where}: not UTF-8 text (byte 0x{e.object[e.start]:02x})") from None


def _lines(fh: io.BufferedIOBase, name: str, max_bytes: int, limit: int) -> Lines:
    """Each line's number and text without its line ending; None for a line over limit bytes."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    total = 0
    for lineno in itertools.count(1):
        first, size = "", 0
        while True:  # a line over limit is read (and checked) piece by piece, never kept
            raw = fh.readline(limit + 1)
            total += len(raw)
            if total > max_bytes:
                raise _too_big(name, f"more than {max_bytes}", max_bytes)
            ends = raw.endswith(b"\n") or len(raw) <= limit
            piece = _decode(decoder, raw, ends, f"{name}:{lineno}")
            first, size = (piece if size == 0 else first), size + len(raw)
            if ends:
                break
        if size == 0:
            return
        if lineno == 1:
            first = first.removeprefix("\ufeff")
        yield lineno, first.rstrip("\r\n") if size <= limit else None


def _detect(head: bytes, suffix: str) -> str:
    if suffix.lower() in _BY_SUFFIX:
        return _BY_SUFFIX[suffix.lower()]
    head = head.removeprefix(codecs.BOM_UTF8)
    if head.lstrip()[:1] == b"{":
        return "ooni-run"
    line = head.split(b"\n", 1)[0].decode("utf-8", "replace").rstrip("\r")
    try:
        cells = [c.strip().lower() for c in next(csv.reader([line]), [])]
    except csv.Error:
        return "plain"
    return "csv" if "url" in cells and not any("://" in c for c in cells) else "plain"


_BY_SUFFIX: Final = {".csv": "csv", ".json": "ooni-run"}


def _read_plain(lines: Lines, found: _Found) -> None:
    for lineno, text in lines:
        where = f"{found.name}:{lineno}"
        if text is None:
            found.skip(where, _LONG_LINE)
        elif (url := text.strip()) and not url.startswith("#"):
            found.add(url, None, where)


def _category(cell: str) -> str | None:
    code = cell.strip()
    if len(code) > 32 or not code.isprintable():
        raise _Bad(f"category_code is not a short printable code: {_show(code)}")
    return code or None


def _read_csv(lines: Lines, found: _Found) -> None:
    def feed() -> Iterator[str]:
        for lineno, text in lines:
            if text is None:
                found.skip(f"{found.name}:{lineno}", _LONG_LINE)
            yield (text or "") + "\n"

    reader = csv.reader(feed())
    try:
        header = next(reader, None)
        if header is None:
            return
        cols = [c.strip().lower() for c in header]
        if "url" not in cols:
            raise InputError(f"{found.name}:{reader.line_num}: no 'url' column: found "
                             f"{_show(header)}; expected url and optionally category_code "
                             "(url,category_code,category_description,date_added,source,notes)")
        url_at = cols.index("url")
        cat_at = cols.index("category_code") if "category_code" in cols else None
        start = reader.line_num + 1
        for row in reader:
            where, start = f"{found.name}:{start}", reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(cols):
                found.skip(where, f"{len(row)} fields, the header has {len(cols)}")
                continue
            try:
                category = None if cat_at is None else _category(row[cat_at])
            except _Bad as e:
                found.skip(where, str(e))
                continue
            found.add(row[url_at].strip(), category, where)
    except csv.Error as e:
        raise InputError(f"{found.name}:{reader.line_num}: not a valid CSV file: {e}") from None


_KINDS: Final[dict[str, tuple[str, Callable[[Any], bool]]]] = {
    "string": ("a string", lambda v: isinstance(v, str)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "object": ("an object", lambda v: isinstance(v, dict)),
    "revision": ("an integer or a string",
                 lambda v: isinstance(v, str | int) and not isinstance(v, bool)),
}
_TOP: Final = {
    "name": "string", "name_intl": "map:string", "short_description": "string",
    "short_description_intl": "map:string", "description": "string",
    "description_intl": "map:string", "icon": "string", "color": "string", "author": "string",
    "is_expired": "bool", "expiration_date": "string", "nettests": "list:object",
    "oonirun_link_id": "string", "title": "string", "date_created": "string",
    "date_updated": "string", "revision": "revision", "is_mine": "bool",
}
_NETTEST: Final = {
    "test_name": "string", "inputs": "list:string", "inputs_extra": "list:object",
    "targets_name": "string", "is_background_run_enabled": "bool",
    "is_manual_run_enabled": "bool",
}


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    return "null" if value is None else names.get(type(value), "a number")


def _check(obj: dict[str, Any], fields: dict[str, str], path: str, name: str) -> None:
    """Unknown keys and values of the wrong type are errors; null is an absent field."""
    unknown = sorted(set(obj) - set(fields))
    if unknown:
        shown = ", ".join(_show(k) for k in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise InputError(f"{name}: {path or 'top level'}: unknown field(s) {shown}, not in the "
                         f"OONI Run v2 spec (known: {', '.join(fields)})")
    for key, spec in fields.items():
        if obj.get(key) is None:
            continue
        outer, _, inner = spec.rpartition(":")
        where, value = f"{path}.{key}" if path else key, obj[key]
        items: list[tuple[str, Any]] = [(where, value)]
        if outer and not isinstance(value, list if outer == "list" else dict):
            expected = "a list" if outer == "list" else "an object"
            raise InputError(f"{name}: {where}: expected {expected}, got {_json_type(value)}")
        if outer == "list":
            items = [(f"{where}[{i}]", v) for i, v in enumerate(value)]
        elif outer == "map":
            items = [(f"{where}[{_show(k)}]", v) for k, v in value.items()]
        what, ok = _KINDS[inner]
        for at, v in items:
            if not ok(v):
                raise InputError(f"{name}: {at}: expected {what}, got {_json_type(v)}")


def _read_ooni(lines: Lines, found: _Found) -> None:
    name, text = found.name, "\n".join(line or "" for _, line in lines)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{name}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
    except (RecursionError, ValueError):  # ValueError: an integer over int's digit limit
        raise InputError(f"{name}: not valid JSON here: nested too deeply or a number too "
                         "long") from None
    if not isinstance(doc, dict):
        raise InputError(f"{name}: not an OONI Run descriptor: {_json_type(doc)}, not an object")
    _check(doc, _TOP, "", name)
    if doc.get("nettests") is None:
        raise InputError(f"{name}: not an OONI Run descriptor: no 'nettests'")
    for i, test in enumerate(doc["nettests"]):
        _check(test, _NETTEST, f"nettests[{i}]", name)
        if test.get("test_name") is None:
            raise InputError(f"{name}: nettests[{i}]: no 'test_name'")
        _read_nettest(test, f"nettests[{i}]", found)


def _read_nettest(test: dict[str, Any], path: str, found: _Found) -> None:
    where = f"{found.name}:{path}"
    if test["test_name"] != "web_connectivity":
        found.skip(where, f"test_name {_show(test['test_name'])} is not web_connectivity")
        return
    inputs: list[str] = test.get("inputs") or []
    extra: list[Any] = test.get("inputs_extra") or []
    if inputs and extra and len(inputs) != len(extra):
        raise InputError(f"{found.name}: {path}.inputs_extra: {len(extra)} entries for "
                         f"{len(inputs)} inputs (the spec wants one per input)")
    if not inputs:
        targets = test.get("targets_name")
        found.skip(where, f"web_connectivity with targets_name {_show(targets)}: a list only the "
                   "OONI backend computes" if targets else
                   "web_connectivity without inputs (OONI Probe's default list)")
    for j, url in enumerate(inputs):
        code = extra[j].get("category_code") if j < len(extra) else None
        try:
            category = _category(code) if isinstance(code, str) else None
        except _Bad:
            category = None  # an odd code does not cost the URL
        found.add(url.strip(), category, f"{where}.inputs[{j}]")


# --- API --------------------------------------------------------------------------------------


def load_inputs(path: str | Path, fmt: str = "auto", *, max_bytes: int = 32 * 1024 * 1024,
                max_urls: int = 100_000) -> InputList:
    """Read a test list (``fmt``: auto, plain, csv or ooni-run); raises only InputError."""
    if fmt not in FORMATS:
        raise InputError(f"unknown input format {_show(fmt)}: expected {', '.join(FORMATS)}")
    found = _Found(str(path) if str(path).isprintable() else _show(str(path)), max_urls)
    try:
        info = os.stat(path)
        if stat.S_ISREG(info.st_mode) and info.st_size > max_bytes:
            raise _too_big(found.name, info.st_size, max_bytes)
        with io.BufferedReader(io.FileIO(path), 2 * MAX_LINE) as fh:
            kind = _detect(fh.peek(MAX_LINE), Path(path).suffix) if fmt == "auto" else fmt
            read = {"ooni-run": _read_ooni, "csv": _read_csv}.get(kind, _read_plain)
            read(_lines(fh, found.name, max_bytes, max_bytes if kind == "ooni-run" else MAX_LINE),
                 found)
    except OSError as e:
        raise InputError(f"{found.name}: cannot read: {e.strerror or type(e).__name__}") from None
    return found.result(str(path), kind)


def services_from_inputs(inputs: InputList) -> list[Service]:
    """One Service per URL, named by the URL (as OONI keys web measurements)."""
    return [Service(name=u.url, title=urlsplit(u.url).hostname or u.url,
                    category=u.category or "input", urls=(u.url,), source=u.where)
            for u in inputs.urls]
