"""Daily Parquet partitions of the measurements, for DuckDB and other readers of a data lake:
``blockwatch export --format parquet --partition day -o DIR``.

Guarantees:

- Hive layout, one file a UTC day: ``DIR/date=YYYY-MM-DD/measurements.parquet`` (DuckDB:
  ``read_parquet('DIR/*/*.parquet', hive_partitioning = true)``), each written whole to a
  temporary name first and renamed over the old one, so a reader never sees half a file and an
  export run again replaces its days instead of adding to them.
- The columns and escaping of ``export --format parquet`` (``write_parquet_batches``), from the
  same streamed query: memory stays a batch however many days.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from blockwatch.storage.export import STARTED_AT, write_parquet_batches
from blockwatch.storage.types import ensure_utc

FILE = "measurements.parquet"


def day_of(value: Any) -> str:
    """The UTC date of a ``started_at`` as the export query gives it (the stored ISO text on
    SQLite, an aware datetime on PostgreSQL)."""
    if isinstance(value, dt.datetime):
        return ensure_utc(value, "started_at").date().isoformat()
    return str(value)[:10]


def whole_days(since: dt.datetime | None, until: dt.datetime | None
               ) -> tuple[dt.datetime | None, dt.datetime | None]:
    """``since`` down and ``until`` up to UTC midnight: every partition written holds its whole
    day, so that it can replace the one there."""
    def midnight(t: dt.datetime) -> dt.datetime:
        return ensure_utc(t).replace(hour=0, minute=0, second=0, microsecond=0)

    start = midnight(since) if since is not None else None
    end = None
    if until is not None:
        end = midnight(until)
        if end < ensure_utc(until):
            end += dt.timedelta(days=1)
    return start, end


def _parts(batches: Iterable[Any]) -> Iterator[tuple[str, Any]]:
    # rows come in start order, so each day is one run of consecutive parts
    for batch in batches:
        if not isinstance(batch, Sequence):  # a pyarrow.RecordBatch: started_at ISO text
            import pyarrow.compute as pc

            days = pc.utf8_slice_codeunits(batch.column(STARTED_AT), 0, 10).to_pylist()
            start = 0
            for day, run in itertools.groupby(days):
                length = sum(1 for _ in run)
                yield day, batch.slice(start, length)
                start += length
            continue
        for day, rows in itertools.groupby(batch, key=lambda r: day_of(r[STARTED_AT])):
            yield day, list(rows)


def write_parquet_days(batches: Iterable[Any], directory: Path
                       ) -> dict[str, int]:
    """Write ``export_batches``'s rows as one Parquet file a UTC day under ``directory``; the
    measurements written, by day."""
    directory.mkdir(parents=True, exist_ok=True)
    written: dict[str, int] = {}
    for day, group in itertools.groupby(_parts(batches), key=lambda p: p[0]):
        folder = directory / f"date={day}"
        folder.mkdir(exist_ok=True)
        temporary = folder / f".{FILE}.{os.getpid()}.tmp"
        try:
            with temporary.open("wb") as fh:
                written[day] = written.get(day, 0) + write_parquet_batches(
                    (rows for _, rows in group), fh)
            os.replace(temporary, folder / FILE)
        finally:
            temporary.unlink(missing_ok=True)
    return written
