"""Reports: timelines, change points, reported events and their comparison, HTML rendering,
and a small Python API for researchers.

    from blockwatch import reports
    data = reports.load("~/.local/share/blockwatch/blockwatch.db", since="2014-06-01")
    data.measurements   # one row per measurement with its current verdict (DataFrame with pandas)
    data.verdicts       # one row per run x service: the current service verdict, with the run

``load`` reads through ``storage`` (never writes); with pandas installed it returns DataFrames,
without it lists of dicts (``as_frames=False`` forces lists). Imports only ``probes`` and
``storage``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from blockwatch.storage import Store, open_store
from blockwatch.storage.export import EXPORT_FIELDS
from blockwatch.storage.queries import Filters, service_verdicts
from blockwatch.storage.types import parse_utc

__all__ = ["Data", "load"]


@dataclass(frozen=True, slots=True)
class Data:
    measurements: Any  # pandas.DataFrame or list[dict]
    verdicts: Any


def load(source: str | Store, since: str | dt.datetime | None = None,
         until: str | dt.datetime | None = None, *, services: Sequence[str] | None = None,
         vantages: Sequence[str] | None = None, as_frames: bool | None = None) -> Data:
    """Measurements and service verdicts of a database (URL, path or open ``Store``).
    ``as_frames=None`` means DataFrames if pandas is installed; ``True`` requires it."""
    pd = _pandas(as_frames)
    filters = Filters(services=services, vantages=vantages, since=_instant(since),
                      until=_instant(until))
    # read-only, as `blockwatch report` opens it: never creates, migrates or writes a database
    store = open_store(source, read_only=True) if isinstance(source, str) else source
    try:
        # the export's documented columns, started_at as a datetime (as the verdicts' is)
        ms = [{**{k: r[k] for k in EXPORT_FIELDS}, "started_at": parse_utc(r["started_at"])}
              for r in store.export_rows(since=filters.since) if _keep(r, filters)]
        vs = [asdict(v) for v in service_verdicts(store, filters)]
    finally:
        if isinstance(source, str):
            store.close()
    if pd is None:
        return Data(ms, vs)
    return Data(pd.DataFrame.from_records(ms), pd.DataFrame.from_records(vs))


def _keep(row: dict[str, Any], f: Filters) -> bool:
    return ((not f.services or row["service"] in f.services)
            and (not f.vantages or row["vantage"] in f.vantages)
            and (f.until is None or parse_utc(row["started_at"]) < f.until))


def _instant(value: str | dt.datetime | None) -> dt.datetime | None:
    if value is None or isinstance(value, dt.datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=dt.UTC)
    try:
        return parse_utc(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a date (use YYYY-MM-DD or ISO 8601)") from None


def _pandas(as_frames: bool | None) -> Any:
    if as_frames is False:
        return None
    try:
        import pandas
    except ImportError:
        if as_frames:
            raise ImportError("reports.load(as_frames=True) needs pandas: "
                              "pip install 'blockwatch-censorship[pandas]'") from None
        return None
    return pandas
