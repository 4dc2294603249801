"""Reported events: what news, officials and researchers said was blocked, when, and where.

The built-in dataset is ``reports/data/events.csv`` (one row per event per service; see
``COLUMNS``); users add their own files in the same format. Reported dates are kept apart from
observed ones: a reported date has a precision, and comparisons honour it.

Guarantees of ``load_events``:

- Every row is validated; a bad file raises ``EventsError`` naming the file, the line and the
  column of *every* problem found (up to ``MAX_ERRORS``), never a traceback.
- Files are read as UTF-8 and must be small (``MAX_BYTES``), so a wrong file cannot exhaust
  memory; event ids are unique across all the files loaded together.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

COLUMNS = ("id", "service", "country", "event", "date", "precision", "end_date", "mechanism",
           "source", "source_date", "reference", "confidence", "notes")
REQUIRED = ("id", "service", "country", "event", "date", "precision", "source", "confidence")
EVENT_KINDS = ("blocked", "disrupted", "unblocked", "ordered", "rule", "statement",
               "not_blocked")
# Kinds that say when blocking started or ended, and so can be compared with observations.
ONSET_KINDS = ("blocked", "disrupted")
END_KINDS = ("unblocked",)
PRECISIONS = ("day", "month", "year", "before")
CONFIDENCES = ("high", "medium", "low")
MAX_BYTES = 5 * 1024 * 1024
MAX_ERRORS = 20

Precision = Literal["day", "month", "year", "before"]


class EventsError(Exception):
    """An events file is unreadable or invalid; the message names every problem."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One reported event. ``date`` is the first day of the reported period (``precision``
    day, month or year), or for ``before`` the day before which it had happened."""

    id: str
    service: str
    country: str
    event: str
    date: dt.date
    precision: Precision
    end_date: dt.date | None
    mechanism: str
    source: str
    source_date: str
    reference: str
    confidence: str
    notes: str
    origin: str  # file:line

    @property
    def comparable(self) -> bool:
        return self.event in ONSET_KINDS + END_KINDS and self.service != "*"

    def interval(self) -> tuple[dt.datetime | None, dt.datetime]:
        """The reported period as UTC instants [start, end); start is None for ``before``."""
        start = dt.datetime.combine(self.date, dt.time(), tzinfo=dt.UTC)
        if self.precision == "before":
            return None, start
        if self.precision == "day":
            return start, start + dt.timedelta(days=1)
        if self.precision == "month":
            y, m = (self.date.year + 1, 1) if self.date.month == 12 else (
                self.date.year, self.date.month + 1)
            return start, start.replace(year=y, month=m)
        return start, start.replace(year=self.date.year + 1)

    @property
    def date_text(self) -> str:
        text = {"day": self.date.isoformat(), "month": self.date.strftime("%Y-%m"),
                "year": str(self.date.year)}.get(self.precision)
        return text if text is not None else f"before {self.date.isoformat()}"


def builtin_path() -> str:
    return "reports/data/events.csv"


def load_events(paths: Sequence[str | Path] = (), *, builtin: bool = True) -> list[Event]:
    """The built-in events (unless ``builtin=False``) followed by those of ``paths``."""
    events: list[Event] = []
    if builtin:
        text = resources.files("blockwatch.reports").joinpath("data/events.csv").read_text("utf-8")
        events += parse_events(text, builtin_path())
    for path in paths:
        events += parse_events(_read(Path(path)), str(path))
    seen: dict[str, str] = {}
    dupes = []
    for e in events:
        if e.id in seen:
            dupes.append(f"{e.origin}: id {e.id!r} already used at {seen[e.id]}")
        seen.setdefault(e.id, e.origin)
    if dupes:
        raise EventsError("\n".join(dupes[:MAX_ERRORS]))
    return events


def _read(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise EventsError(f"{path}: {size} bytes is too large for an events file "
                              f"(at most {MAX_BYTES})")
        return path.read_text("utf-8")
    except UnicodeDecodeError as exc:
        raise EventsError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
                          ) from None
    except IsADirectoryError:
        raise EventsError(f"{path}: is a directory, not an events file") from None
    except OSError as exc:
        raise EventsError(f"{path}: cannot read ({exc.strerror})") from None


def parse_events(text: str, origin: str) -> list[Event]:
    """Events of one CSV text; ``EventsError`` listing every problem if any row is bad."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise EventsError(f"{origin}: empty file (expected a header: {','.join(COLUMNS)})")
        header = [h.strip() for h in header]
        problems = _check_header(header, origin)
        if problems:
            raise EventsError("\n".join(problems))
        events: list[Event] = []
        errors: list[str] = []
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                errors.append(f"{origin}:{line}: {len(row)} fields, expected {len(header)}")
                continue
            event, row_errors = _event(dict(zip(header, row, strict=True)), f"{origin}:{line}")
            errors += row_errors
            if event is not None:
                events.append(event)
            if len(errors) >= MAX_ERRORS:
                break
    except csv.Error as exc:
        raise EventsError(f"{origin}:{reader.line_num}: not valid CSV ({exc})") from None
    if errors:
        raise EventsError("\n".join(errors[:MAX_ERRORS]))
    return events


def _check_header(header: list[str], origin: str) -> list[str]:
    problems = []
    unknown = [h for h in header if h not in COLUMNS]
    missing = [c for c in REQUIRED if c not in header]
    if unknown:
        problems.append(f"{origin}:1: unknown column(s) {', '.join(map(repr, unknown))} "
                        f"(columns: {','.join(COLUMNS)})")
    if missing:
        problems.append(f"{origin}:1: missing column(s) {', '.join(missing)}")
    if len(set(header)) != len(header):
        problems.append(f"{origin}:1: a column appears twice")
    return problems


def _event(raw: dict[str, str], where: str) -> tuple[Event | None, list[str]]:
    row = {c: raw.get(c, "").strip() for c in COLUMNS}
    errors = [f"{where}: {c}: required" for c in REQUIRED if not row[c]]
    if errors:
        return None, errors
    errors += _choice(row, "event", EVENT_KINDS, where)
    errors += _choice(row, "precision", PRECISIONS, where)
    errors += _choice(row, "confidence", CONFIDENCES, where)
    country = row["country"]
    if not (len(country) == 2 and country.isascii() and country.isalpha()
            and country.isupper()):
        errors.append(f"{where}: country: {country!r} is not a two-letter ISO code (e.g. CN)")
    date, date_errors = _date(row["date"], row["precision"], where)
    errors += date_errors
    end = None
    if row["end_date"]:
        end, end_errors = _date(row["end_date"], "day", where, column="end_date")
        errors += end_errors
        if date is not None and end is not None and end < date:
            errors.append(f"{where}: end_date: {end} is before date {date}")
    if errors or date is None:
        return None, errors
    return Event(id=row["id"], service=row["service"].lower(), country=country,
                 event=row["event"], date=date, precision=row["precision"],  # type: ignore[arg-type]
                 end_date=end, mechanism=row["mechanism"], source=row["source"],
                 source_date=row["source_date"], reference=row["reference"],
                 confidence=row["confidence"], notes=row["notes"], origin=where), []


def _choice(row: dict[str, str], column: str, allowed: Iterable[str], where: str) -> list[str]:
    allowed = tuple(allowed)
    if row[column] in allowed:
        return []
    return [f"{where}: {column}: {row[column]!r} is not one of {', '.join(allowed)}"]


_FORMATS = {"day": ("%Y-%m-%d", "YYYY-MM-DD"), "month": ("%Y-%m", "YYYY-MM"),
            "year": ("%Y", "YYYY")}


def _date(text: str, precision: str, where: str, column: str = "date"
          ) -> tuple[dt.date | None, list[str]]:
    """Parse ``text`` in the format its precision implies (``before`` takes any of them)."""
    wanted = list(_FORMATS.values()) if precision == "before" else [
        _FORMATS.get(precision, _FORMATS["day"])]
    for fmt, _ in wanted:
        try:
            return dt.datetime.strptime(text, fmt).date(), []  # noqa: DTZ007 - a date only
        except ValueError:
            continue
    shapes = " or ".join(shape for _, shape in wanted)
    what = f"precision {precision} needs " if precision in _FORMATS else "expected "
    return None, [f"{where}: {column}: {text!r} is not a valid date ({what}{shapes})"]
