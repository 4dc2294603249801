"""Change points: when blocking of a service started and ended, seen from one vantage.

Method (pure, deterministic; no I/O):

1. Each run's service verdict becomes a state: ``ok`` is OK; ``blocked`` and ``partial`` are
   BLOCKED (blocking evidence on all or some measurements); ``down``, ``inconclusive``,
   ``network_unavailable`` and anything else are *no evidence* and are skipped, like runs that
   never happened. An outage therefore never looks like an onset or an end; it only widens the
   window of a change that happens during it.
2. **Run-length rule.** A state is *established* once ``k`` consecutive conclusive sweeps agree
   (``k = min_sweeps``, default 5). A change point is a switch of the established state (OK ->
   BLOCKED: an onset; BLOCKED -> OK: an end). Single flaky sweeps, or up to ``k - 1`` in a row,
   never switch it. The state established first is where the history starts (no change point).
3. **Locating it.** Between the previous change (or the start) and the end of the confirming
   run, the split is placed where the most sweeps agree with "old state before, new state
   after" (a least-misclassification split). Ties give one wider window. The **window** is
   (last sweep in the old state before the split, first sweep in the new state at the split):
   the change happened after the first and no later than the second.
4. **Confidence** is the fraction of the conclusive sweeps within ``2k`` on either side of the
   split that agree with it (1.0 = perfectly clean).

A blocking **episode** runs from an onset (or from the first sweep, if the history starts
blocked) to an end (or the last sweep, if still blocked).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Final, Literal

OK: Final = "ok"
BLOCKED: Final = "blocked"
State = Literal["ok", "blocked"]
STATE_OF: dict[str, State] = {"ok": OK, "blocked": BLOCKED, "partial": BLOCKED}
DEFAULT_MIN_SWEEPS = 5


@dataclass(frozen=True, slots=True)
class Sweep:
    """One run's verdict for one service at one vantage."""

    at: dt.datetime
    verdict: str


@dataclass(frozen=True, slots=True)
class ChangePoint:
    """A switch of established state; it happened in (``last_before``, ``first_after``]."""

    service: str
    vantage: str
    kind: Literal["onset", "end"]
    last_before: dt.datetime
    first_after: dt.datetime
    confidence: float
    sweeps_before: int  # conclusive sweeps in the old state since the previous change
    sweeps_after: int  # conclusive sweeps in the new state until the next change

    @property
    def window_hours(self) -> float:
        return (self.first_after - self.last_before).total_seconds() / 3600


@dataclass(frozen=True, slots=True)
class Episode:
    """A stretch of established blocking. ``onset``/``end`` are None where the history starts
    or stops blocked; ``first_blocked``/``last_blocked`` are the sweeps that bound it."""

    service: str
    vantage: str
    onset: ChangePoint | None
    end: ChangePoint | None
    first_blocked: dt.datetime
    last_blocked: dt.datetime


@dataclass(frozen=True, slots=True)
class SeriesResult:
    """Everything detected in one service x vantage series."""

    service: str
    vantage: str
    changes: tuple[ChangePoint, ...]
    episodes: tuple[Episode, ...]
    initial: State | None  # the state established first (None: never established)
    conclusive: int
    first: dt.datetime | None  # first and last conclusive sweeps
    last: dt.datetime | None


def detect(service: str, vantage: str, sweeps: Iterable[Sweep],
           min_sweeps: int = DEFAULT_MIN_SWEEPS) -> SeriesResult:
    """Change points and episodes of one series (``sweeps`` in time order)."""
    if min_sweeps < 1:
        raise ValueError("min_sweeps must be at least 1")
    points = [(s.at, STATE_OF[s.verdict]) for s in sweeps if s.verdict in STATE_OF]
    states = [st for _, st in points]
    switches = list(_switches(states, min_sweeps))
    changes: list[ChangePoint] = []
    lo = 0
    for n, (new, confirm_end) in enumerate(switches[1:], start=1):
        old = switches[n - 1][0]
        s_min, s_max = _best_split(states, lo, confirm_end, old)
        hi = switches[n + 1][1] if n + 1 < len(switches) else len(states)
        changes.append(ChangePoint(
            service=service, vantage=vantage, kind="onset" if new == BLOCKED else "end",
            last_before=points[s_min - 1][0], first_after=points[s_max][0],
            confidence=_confidence(states, s_min, s_max, old, min_sweeps),
            sweeps_before=sum(1 for x in states[lo:s_min] if x == old),
            sweeps_after=sum(1 for x in states[s_max:hi] if x == new)))
        lo = s_max
    initial = switches[0][0] if switches else None
    return SeriesResult(service, vantage, tuple(changes),
                        tuple(_episodes(service, vantage, points, initial, changes)),
                        initial, len(points), points[0][0] if points else None,
                        points[-1][0] if points else None)


def _switches(states: Sequence[State], k: int) -> Iterator[tuple[State, int]]:
    """(newly established state, index just past the run of k that confirmed it)."""
    established: State | None = None
    run_state: State | None = None
    run_len = 0
    for i, st in enumerate(states):
        run_len = run_len + 1 if st == run_state else 1
        run_state = st
        if run_len == k and st != established:
            established = st
            yield st, i + 1


def _best_split(states: Sequence[str], lo: int, hi: int, old: str) -> tuple[int, int]:
    """Earliest and latest split s in (lo, hi) maximising #old in [lo, s) + #new in [s, hi)."""
    score = sum(1 for x in states[lo:hi] if x != old)  # split at lo: everything "new"
    best, s_min, s_max = -1, lo + 1, lo + 1
    for s in range(lo + 1, hi):
        score += 1 if states[s - 1] == old else -1
        if score > best:
            best, s_min, s_max = score, s, s
        elif score == best:
            s_max = s
    return s_min, s_max


def _confidence(states: Sequence[str], s_min: int, s_max: int, old: str, k: int) -> float:
    before = states[max(0, s_min - 2 * k):s_min]
    after = states[s_max:s_max + 2 * k]
    agree = sum(1 for x in before if x == old) + sum(1 for x in after if x != old)
    total = len(before) + len(after) + (s_max - s_min)  # a tie's ambiguous middle counts against
    return round(agree / total, 3) if total else 0.0


def _episodes(service: str, vantage: str, points: Sequence[tuple[dt.datetime, str]],
              initial: str | None, changes: Sequence[ChangePoint]) -> Iterator[Episode]:
    if initial is None:
        return
    blocked_times = [t for t, st in points if st == BLOCKED]
    onset: ChangePoint | None = None
    open_from: dt.datetime | None = points[0][0] if initial == BLOCKED else None
    for c in changes:
        if c.kind == "onset":
            onset, open_from = c, c.first_after
        elif open_from is not None:
            yield _episode(service, vantage, onset, c, open_from, c.last_before, blocked_times)
            onset, open_from = None, None
    if open_from is not None:
        yield _episode(service, vantage, onset, None, open_from, points[-1][0], blocked_times)


def _episode(service: str, vantage: str, onset: ChangePoint | None, end: ChangePoint | None,
             start: dt.datetime, stop: dt.datetime, blocked: Sequence[dt.datetime]) -> Episode:
    inside = [t for t in blocked if start <= t <= stop]
    return Episode(service, vantage, onset, end, inside[0] if inside else start,
                   inside[-1] if inside else stop)


def detect_all(rows: Iterable[tuple[str, str, dt.datetime, str]],
               min_sweeps: int = DEFAULT_MIN_SWEEPS) -> list[SeriesResult]:
    """``detect`` for every series of ``rows`` = (service, vantage, started_at, verdict),
    ordered by service, vantage, time (as ``storage.queries.service_verdicts`` yields them)."""
    out = []
    for (service, vantage), group in groupby(rows, key=lambda r: (r[0], r[1])):
        out.append(detect(service, vantage, (Sweep(at, v) for _, _, at, v in group),
                          min_sweeps))
    return out
