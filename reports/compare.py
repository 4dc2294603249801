"""Comparison of reported events with what the probes observed.

For each comparable event (kind ``blocked``/``disrupted``, compared with observed onsets;
``unblocked``, compared with observed ends) and each vantage whose runs are in the event's
country, one ``Comparison`` with a label:

- ``agrees``: the observed window (last sweep before, first sweep after the change) overlaps
  the reported period widened by ``TOLERANCE`` (one day: reports use local dates, we use UTC,
  and news lags); a ``before`` date agrees with any change observed before it;
- ``observed before report``: the whole observed window lies before that period;
- ``observed later``: it lies after it;
- ``not observed``: the vantage has conclusive sweeps after the period started but no such
  change (and for an onset, no blocking at all);
- ``not covered``: the reported period lies outside the vantage's sweeps of the service (they
  end before it begins, or begin after it ends): the data cannot say when the change happened,
  so no difference in days is given (a 2014 report against sweeps of 2026 is not "observed
  4,722 days later");
- ``no data``: no conclusive sweep of the service from that vantage at all.

When a series has several changes of the right kind, the one nearest the reported period is
used. ``diff_days`` is the first sweep in the new state minus the start of the reported period
(for ``before``: minus the date), negative when observed earlier.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from blockwatch.reports.changes import ChangePoint, SeriesResult
from blockwatch.reports.events import END_KINDS, Event
from blockwatch.storage.types import iso_utc

TOLERANCE = dt.timedelta(days=1)
AGREES = "agrees"
BEFORE = "observed before report"
LATER = "observed later"
NOT_OBSERVED = "not observed"
NOT_COVERED = "not covered"
NO_DATA = "no data"
LABELS = (BEFORE, AGREES, LATER, NOT_OBSERVED, NOT_COVERED, NO_DATA)


@dataclass(frozen=True, slots=True)
class Comparison:
    event: Event
    vantage: str
    label: str
    window_start: dt.datetime | None  # last sweep in the old state (None: before the data)
    window_end: dt.datetime | None  # first sweep in the new state
    diff_days: float | None
    confidence: float | None
    note: str

    def record(self) -> dict[str, object]:
        def iso(t: dt.datetime | None) -> str | None:
            return iso_utc(t) if t else None

        return {"event_id": self.event.id, "service": self.event.service,
                "country": self.event.country, "event": self.event.event,
                "reported": self.event.date_text, "precision": self.event.precision,
                "vantage": self.vantage, "observed_from": iso(self.window_start),
                "observed_by": iso(self.window_end), "diff_days": self.diff_days,
                "label": self.label, "confidence": self.confidence,
                "source": self.event.source, "note": self.note}


def compare(events: Iterable[Event], results: Sequence[SeriesResult],
            countries: dict[str, str | None]) -> list[Comparison]:
    """``countries``: vantage -> country (from the runs)."""
    by_series = {(r.service, r.vantage): r for r in results}
    out = []
    for event in events:
        if not event.comparable:
            continue
        for vantage, country in sorted(countries.items()):
            if country != event.country:
                continue
            out.append(_one(event, vantage, by_series.get((event.service, vantage))))
    return out


def _one(event: Event, vantage: str, series: SeriesResult | None) -> Comparison:
    start, end = event.interval()
    lo = None if start is None else start - TOLERANCE
    hi = end + TOLERANCE
    ref = start if start is not None else end
    kind = "end" if event.event in END_KINDS else "onset"

    def result(label: str, note: str, c: ChangePoint | None = None,
               w_start: dt.datetime | None = None, w_end: dt.datetime | None = None
               ) -> Comparison:
        if c is not None:
            w_start, w_end = c.last_before, c.first_after
        diff = (round((w_end - ref).total_seconds() / 86400, 2)
                if w_end and label not in (NO_DATA, NOT_COVERED) else None)
        return Comparison(event, vantage, label, w_start, w_end, diff,
                          c.confidence if c else None, note)

    if series is None or series.last is None:
        return result(NO_DATA, "no conclusive sweep of this service from this vantage")
    if lo is not None and series.last < lo:
        return result(NOT_COVERED, f"sweeps end ({_day(series.last)}) before the reported "
                                   "period")
    if series.first is not None and series.first >= hi:
        return result(NOT_COVERED, f"sweeps start ({_day(series.first)}) after the reported "
                                   "period")
    changes = [c for c in series.changes if c.kind == kind]
    if changes:
        c = min(changes, key=lambda c: _distance(c, lo, hi))
        if (lo is None or c.first_after >= lo) and c.last_before < hi:
            return result(AGREES, "", c)
        return result(BEFORE if c.first_after < (lo or hi) else LATER, "", c)
    if kind == "onset" and series.initial == "blocked" and series.first is not None:
        # blocked at our first sweep, which precedes the report's end (checked above)
        label = AGREES if lo is None or series.first >= lo else BEFORE
        return result(label, "blocked from the first sweep", w_end=series.first)
    return result(NOT_OBSERVED, f"{series.conclusive} conclusive sweeps, no {kind} found")


def _day(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%d")


def _distance(c: ChangePoint, lo: dt.datetime | None, hi: dt.datetime) -> float:
    if lo is not None and c.first_after < lo:
        return (lo - c.first_after).total_seconds()
    if c.last_before >= hi:
        return (c.last_before - hi).total_seconds()
    return 0.0
