"""The analyses the CLI, the HTML report and the Python API share: change points of every
series in a database, and their comparison with reported events.

Change points read the current service verdicts in one streamed, ordered query and keep one
series in memory at a time (a series is one service x vantage: a few bytes per sweep).
"""

from __future__ import annotations

from collections.abc import Iterable

from blockwatch.reports.changes import DEFAULT_MIN_SWEEPS, SeriesResult, detect_all
from blockwatch.reports.compare import Comparison, compare
from blockwatch.reports.events import Event
from blockwatch.storage import Store
from blockwatch.storage.queries import NO_FILTERS, Filters, service_verdicts, vantages


def change_points(store: Store, filters: Filters = NO_FILTERS,
                  min_sweeps: int = DEFAULT_MIN_SWEEPS) -> list[SeriesResult]:
    rows = ((v.service, v.vantage, v.started_at, v.verdict)
            for v in service_verdicts(store, filters))
    return detect_all(rows, min_sweeps)


def countries(store: Store) -> dict[str, str | None]:
    """vantage -> country of its latest run with a country."""
    return {v.vantage: v.country for v in vantages(store)}


def comparison(store: Store, events: Iterable[Event],
               filters: Filters = NO_FILTERS,
               min_sweeps: int = DEFAULT_MIN_SWEEPS,
               results: list[SeriesResult] | None = None) -> list[Comparison]:
    wanted = [e for e in events if e.comparable
              and (not filters.services or e.service in filters.services)]
    if results is None:
        services = sorted({e.service for e in wanted})
        narrowed = Filters(services=services, vantages=filters.vantages, since=filters.since,
                           until=filters.until, categories=filters.categories)
        results = change_points(store, narrowed, min_sweeps) if services else []
    known = countries(store)
    if filters.vantages:
        known = {v: c for v, c in known.items() if v in filters.vantages}
    return compare(wanted, results, known)
