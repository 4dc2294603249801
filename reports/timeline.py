"""Timelines: per service x vantage, how many runs gave each verdict in each hour, day or week.

The counting happens in SQL (``storage.queries.timeline_counts``); this module lays the counts
on a continuous calendar so that **gaps stay gaps**: a bucket without runs is reported as
``gap`` (zero runs), never as ``ok``, and a bucket whose runs gave no evidence either way (only
``down``, ``inconclusive``, ``network_unavailable``) is ``no evidence``. Weeks start on Monday,
all times are UTC.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from blockwatch.storage import Store
from blockwatch.storage.queries import NO_FILTERS, Bucket, BucketCount, Filters, timeline_counts
from blockwatch.storage.types import iso_utc

VERDICTS = ("ok", "blocked", "partial", "down", "inconclusive", "network_unavailable")
STEP = {"minute": dt.timedelta(minutes=1), "hour": dt.timedelta(hours=1),
        "day": dt.timedelta(days=1), "week": dt.timedelta(weeks=1)}


@dataclass(frozen=True, slots=True)
class Cell:
    """One bucket of one series."""

    start: dt.datetime
    counts: Counter[str]

    @property
    def runs(self) -> int:
        return sum(self.counts.values())

    @property
    def state(self) -> str:
        """``blocked``/``ok`` by majority of the conclusive runs, else ``no evidence`` or
        ``gap``."""
        if not self.runs:
            return "gap"
        blocked = self.counts["blocked"] + self.counts["partial"]
        ok = self.counts["ok"]
        if not blocked and not ok:
            return "no evidence"
        return "blocked" if blocked >= ok else "ok"


@dataclass(frozen=True, slots=True)
class Series:
    service: str
    vantage: str
    cells: tuple[Cell, ...]


@dataclass(frozen=True, slots=True)
class Timeline:
    bucket: Bucket
    buckets: tuple[dt.datetime, ...]
    series: tuple[Series, ...]
    verdicts: tuple[str, ...]  # every verdict seen, the usual ones first


def build(counts: Sequence[BucketCount], bucket: Bucket) -> Timeline:
    """Lay SQL counts on a continuous range of buckets (first to last bucket with runs)."""
    if not counts:
        return Timeline(bucket, (), (), VERDICTS)
    calendar = tuple(_calendar(min(c.start for c in counts), max(c.start for c in counts),
                               STEP[bucket]))
    by_series: dict[tuple[str, str], dict[dt.datetime, Counter[str]]] = {}
    seen = set()
    for c in counts:
        by_series.setdefault((c.service, c.vantage), {}).setdefault(c.start, Counter())[
            c.verdict] += c.count
        seen.add(c.verdict)
    series = tuple(
        Series(service, vantage, tuple(Cell(b, cells.get(b, Counter())) for b in calendar))
        for (service, vantage), cells in sorted(by_series.items()))
    extra = tuple(sorted(seen - set(VERDICTS)))
    return Timeline(bucket, calendar, series, VERDICTS + extra)


def timeline(store: Store, bucket: Bucket = "day",
             filters: Filters = NO_FILTERS) -> Timeline:
    return build(timeline_counts(store, bucket, filters), bucket)


def _calendar(first: dt.datetime, last: dt.datetime, step: dt.timedelta
              ) -> Iterator[dt.datetime]:
    at = first
    while at <= last:
        yield at
        at += step


def rows(tl: Timeline) -> Iterator[dict[str, object]]:
    """One flat record per series x bucket (gaps included), for CSV and JSON."""
    for s in tl.series:
        for cell in s.cells:
            yield {"bucket": iso_utc(cell.start), "service": s.service,
                   "vantage": s.vantage, "runs": cell.runs, "state": cell.state,
                   **{v: cell.counts[v] for v in tl.verdicts}}


def collapsed(s: Series) -> Iterator[tuple[dt.datetime, dt.datetime, Cell | None]]:
    """Runs of consecutive empty buckets folded into one (first, last, None) entry, so that a
    terminal table shows a long gap as one line."""
    gap_start: dt.datetime | None = None
    prev: dt.datetime | None = None
    for cell in s.cells:
        if not cell.runs:
            gap_start = gap_start or cell.start
            prev = cell.start
            continue
        if gap_start is not None and prev is not None:
            yield gap_start, prev, None
            gap_start = None
        yield cell.start, cell.start, cell
    if gap_start is not None and prev is not None:
        yield gap_start, prev, None
