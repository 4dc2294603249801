"""The report's headline: what is blocked where, at which layer, since when.

One streamed pass over the current service verdicts gives both the change points of every
series (``changes.detect``, as ``analysis.change_points``) and, per series, what a reader asks
first: is it blocked now (an established blocking episode still open at the last sweep), since
when (the onset's window, or the first sweep if the history starts blocked), at which layers
(the layers named by its blocked verdicts since then), and what the last sweep said. Series
with blocked sweeps but no established state (fewer than ``min_sweeps`` agreeing sweeps in a
row) are reported as *unconfirmed*, never as blocked. The same pass counts each series' runs
by verdict and the layer the verdict names (the report's per-layer table): the report reads
the service verdicts once (one per run and service), never the millions of measurement
verdicts. One series is in memory at a time.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Literal

from blockwatch.reports.changes import (
    BLOCKED,
    DEFAULT_MIN_SWEEPS,
    STATE_OF,
    ChangePoint,
    SeriesResult,
    Sweep,
    detect,
)
from blockwatch.reports.timeline import Timeline, build
from blockwatch.storage import Store
from blockwatch.storage.queries import (
    NO_FILTERS,
    Bucket,
    BucketCount,
    Filters,
    ServiceVerdict,
    service_verdicts,
)

BLOCKED_VERDICTS = frozenset(v for v, state in STATE_OF.items() if state == BLOCKED)
Status = Literal["blocked", "unconfirmed", "ended", "ok", "no evidence"]


@dataclass(frozen=True, slots=True)
class Line:
    """The headline's view of one service x vantage series."""

    service: str
    vantage: str
    status: Status
    onset: ChangePoint | None  # the open (or last) episode's onset; None: from the first sweep
    end: ChangePoint | None  # status "ended": the change that ended it
    since: dt.datetime | None  # first blocked sweep of the episode (blocked, ended)
    last_blocked: dt.datetime | None
    layers: tuple[tuple[str, int], ...]  # (layer, blocked sweeps naming it), most first
    blocked_sweeps: int  # blocked sweeps counted for ``layers`` (episode, or all if unconfirmed)
    conclusive: int  # sweeps that were ok or blocked
    last_at: dt.datetime  # the last sweep of the series (any verdict)
    last_verdict: str
    # every sweep of the series counted by (verdict, layer named by the verdict or ""), most
    # first: the report's per-layer table, read in the same pass
    by_layer: tuple[tuple[str, str, int], ...]


@dataclass(frozen=True, slots=True)
class Analysis:
    results: list[SeriesResult]  # change points, as ``analysis.change_points``
    lines: list[Line]
    timeline: Timeline  # as ``timeline.timeline(store, bucket, filters)``


def analyse(store: Store, filters: Filters = NO_FILTERS,
            min_sweeps: int = DEFAULT_MIN_SWEEPS, bucket: Bucket = "day") -> Analysis:
    """Change points, headline lines and the timeline of every series, in one pass over the
    current service verdicts (the timeline counted here as ``storage.queries.timeline_counts``
    counts in SQL: the same buckets, weeks from Monday)."""
    results: list[SeriesResult] = []
    lines: list[Line] = []
    counts: Counter[tuple[dt.datetime, str, str, str]] = Counter()
    floor = FLOORS[bucket]
    for (service, vantage), group in groupby(service_verdicts(store, filters),
                                             key=lambda v: (v.service, v.vantage)):
        verdicts = list(group)
        result = detect(service, vantage, (Sweep(v.started_at, v.verdict) for v in verdicts),
                        min_sweeps)
        results.append(result)
        lines.append(line(result, verdicts))
        counts.update((floor(v.started_at), service, vantage, v.verdict) for v in verdicts)
    cells = [BucketCount(start, service, vantage, verdict, n)
             for (start, service, vantage, verdict), n in sorted(counts.items())]
    return Analysis(results, lines, build(cells, bucket))


def _day(t: dt.datetime) -> dt.datetime:
    return t.replace(hour=0, minute=0, second=0, microsecond=0)


FLOORS: dict[str, Callable[[dt.datetime], dt.datetime]] = {
    "minute": lambda t: t.replace(second=0, microsecond=0),
    "hour": lambda t: t.replace(minute=0, second=0, microsecond=0),
    "day": _day,
    "week": lambda t: _day(t) - dt.timedelta(days=t.weekday()),
}


def line(r: SeriesResult, verdicts: Sequence[ServiceVerdict]) -> Line:
    """The headline line of series ``r`` computed from its ``verdicts`` (time order)."""
    last = verdicts[-1]
    episode = r.episodes[-1] if r.episodes else None
    by_layer = Counter((v.verdict, v.layer or "") for v in verdicts)
    if episode is not None:
        status: Status = "blocked" if episode.end is None else "ended"
        frm: dt.datetime | None = episode.first_blocked
    else:
        # blocked sweeps not (yet) making a state: with no state established at all, or the
        # latest conclusive sweeps after an established "ok" (a possible onset in the making)
        blocked_any = any(STATE_OF.get(verdict) == BLOCKED for verdict, _ in by_layer)
        unconfirmed = blocked_any and (r.initial is None or _trailing_blocked(verdicts) > 0)
        status = "unconfirmed" if unconfirmed else "ok" if r.conclusive else "no evidence"
        frm = None if r.initial is None else _trailing_start(verdicts)
    layers: Counter[str] = Counter(
        v.layer or "unknown" for v in verdicts
        if v.verdict in BLOCKED_VERDICTS and (frm is None or v.started_at >= frm))
    return Line(service=r.service, vantage=r.vantage, status=status,
                onset=episode.onset if episode else None,
                end=episode.end if episode else None, since=frm,
                last_blocked=episode.last_blocked if episode else None,
                layers=tuple(layers.most_common()), blocked_sweeps=sum(layers.values()),
                conclusive=r.conclusive, last_at=last.started_at, last_verdict=last.verdict,
                by_layer=tuple((vd, ly, n) for (vd, ly), n in by_layer.most_common()))


def _trailing_blocked(verdicts: Sequence[ServiceVerdict]) -> int:
    """How many of the last conclusive sweeps in a row were blocked."""
    n = 0
    for v in reversed(verdicts):
        state = STATE_OF.get(v.verdict)
        if state == BLOCKED:
            n += 1
        elif state is not None:
            break
    return n


def _trailing_start(verdicts: Sequence[ServiceVerdict]) -> dt.datetime | None:
    """The first of the last blocked sweeps in a row (None: the last conclusive one is ok)."""
    first = None
    for v in reversed(verdicts):
        state = STATE_OF.get(v.verdict)
        if state == BLOCKED:
            first = v.started_at
        elif state is not None:
            break
    return first


def layer_text(ln: Line) -> str:
    """``dns`` or ``dns (90%), tcp (10%)``: the layers of the blocked sweeps, most first."""
    if not ln.layers:
        return "-"
    if len(ln.layers) == 1:
        return ln.layers[0][0]
    return ", ".join(f"{name} ({100 * n / ln.blocked_sweeps:.0f}%)" for name, n in ln.layers)
