"""Write export records (``Store.export_rows``) as JSON Lines or CSV.

Guarantees: the field set and order are fixed, ``EXPORT_FIELDS``: the fields of the export
contract first (ARCHITECTURE.md), then extras; new fields are only ever appended. JSONL writes
one object per line with ``observations`` as a list; CSV writes one row per record with
``observations`` JSON-encoded in one cell and empty cells for NULL. Both stream and return the
number of records written. Open CSV files with ``newline=""``.
"""

from __future__ import annotations

import csv
import datetime as dt
import gc
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from sqlalchemy import String, Text, cast, func, select, type_coerce
from sqlalchemy.exc import SQLAlchemyError

from blockwatch.probes.textsafe import csv_cell, json_safe
from blockwatch.storage import arrow_read
from blockwatch.storage.errors import StorageError, describe
from blockwatch.storage.store import Store
from blockwatch.storage.tables import MeasurementRow, RunRow, VerdictRow
from blockwatch.storage.types import ensure_utc

CONTRACT_FIELDS = (
    "measurement_id",
    "run_id",
    "vantage",
    "service",
    "target",
    "probe",
    "started_at",
    "runtime_s",
    "failure",
    "verdict",
    "rule_id",
    "analyzer_version",
    "observations",
)
EXPORT_FIELDS = (
    *CONTRACT_FIELDS,
    "category",
    "queued_s",
    "probe_version",
    "failed_operation",
    "evidence",
    "country",
    "asn",
)


def write_jsonl(rows: Iterable[Mapping[str, Any]], fh: TextIO) -> int:
    count = 0
    for row in rows:
        record = {name: row.get(name) for name in EXPORT_FIELDS}
        fh.write(json_safe(json.dumps(record, ensure_ascii=False, separators=(",", ":"))))
        fh.write("\n")
        count += 1
    return count


def write_csv(rows: Iterable[Mapping[str, Any]], fh: TextIO) -> int:
    writer = csv.writer(fh)
    writer.writerow(EXPORT_FIELDS)
    count = 0
    for row in rows:
        writer.writerow([_cell(name, row.get(name)) for name in EXPORT_FIELDS])
        count += 1
    return count


def _cell(name: str, value: Any) -> Any:
    """A CSV cell: text from the network printable and never a formula (``csv_cell``)."""
    if name == "observations":
        return csv_cell(json_safe(json.dumps(value if value is not None else [],
                                             ensure_ascii=False, separators=(",", ":"))))
    return "" if value is None else csv_cell(value)


PARQUET_BATCH = 65_536


def export_batches(store: Store, since: dt.datetime | None = None, run_id: str | None = None,
                   size: int = PARQUET_BATCH, *, until: dt.datetime | None = None,
                   vantages: Sequence[str] | None = None, services: Sequence[str] | None = None,
                   arrow: bool = False) -> Iterator[Any]:
    """The records of ``Store.export_rows`` (same rows, same order) as lists of at most
    ``size`` tuples of raw column values in ``EXPORT_FIELDS`` order, for columnar writers:
    ``started_at`` as the driver gives it (the stored ISO text on SQLite, an aware datetime on
    PostgreSQL), ``observations`` the stored JSON text (never decoded to be encoded again;
    NULL stays None), ``queued_s`` 0.0 where NULL. Streamed in one read transaction.

    ``arrow``: where ``storage.arrow_read`` can read (an SQLite file, ``adbc-driver-sqlite``
    installed), the same values as ``pyarrow.RecordBatch`` es instead of lists of tuples,
    read without a Python object per value (``write_parquet_batches`` takes both)."""
    m, v, r = MeasurementRow, VerdictRow, RunRow
    latest = (select(func.max(v.id)).where(v.measurement_id == m.id).correlate(m)
              .scalar_subquery())
    raw = {"measurement_id": m.id, "started_at": type_coerce(m.started_at, String),
           "observations": cast(m.observations, Text),
           "queued_s": func.coalesce(m.queued_s, 0.0), "verdict": v.verdict,
           "rule_id": v.rule_id, "analyzer_version": v.analyzer_version,
           "evidence": v.evidence, "country": r.country, "asn": r.asn}
    stmt = (select(*(raw.get(name, getattr(m, name, None)).label(name)  # type: ignore[union-attr]
                     for name in EXPORT_FIELDS))
            .select_from(m).join(r, r.id == m.run_id).outerjoin(v, v.id == latest))
    if run_id is not None:
        stmt = stmt.where(m.run_id == run_id)
    if since is not None:
        stmt = stmt.where(m.started_at >= ensure_utc(since, "since"))
    if until is not None:  # --until, --vantage, --service: as the row path's filters
        stmt = stmt.where(m.started_at < ensure_utc(until, "until"))
    if vantages:
        stmt = stmt.where(m.vantage.in_(list(vantages)))
    if services:
        stmt = stmt.where(m.service.in_(list(services)))
    if arrow and arrow_read.available(store.engine):
        yield from arrow_read.record_batches(store.engine, store.url, stmt,
                                             ("started_at", "measurement_id"), EXPORT_FIELDS,
                                             size)
        return
    stmt = stmt.order_by(m.started_at, m.id)
    try:
        with store.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=size).execute(stmt)
            for part in result.partitions(size):
                yield [tuple(row) for row in part]
    except SQLAlchemyError as exc:
        raise StorageError(store.url, describe(exc)) from exc


def write_parquet(rows: Iterable[Mapping[str, Any]], fh: Any) -> int:
    """Parquet from export records (``Store.export_rows``); ``write_parquet_batches`` is the
    fast way from ``export_batches``, which ``blockwatch export`` takes."""
    def batches() -> Iterator[list[tuple[Any, ...]]]:
        batch: list[tuple[Any, ...]] = []
        for row in rows:
            record = [row.get(name) for name in EXPORT_FIELDS]
            obs = record[OBSERVATIONS]
            record[OBSERVATIONS] = None if obs is None else json.dumps(
                obs, ensure_ascii=False, separators=(",", ":"))
            batch.append(tuple(record))
            if len(batch) >= PARQUET_BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    return write_parquet_batches(batches(), fh)


OBSERVATIONS = EXPORT_FIELDS.index("observations")
STARTED_AT = EXPORT_FIELDS.index("started_at")


def write_parquet_batches(batches: Iterable[Any], fh: Any) -> int:
    """Parquet (needs the ``parquet`` extra): the ``EXPORT_FIELDS`` columns, ``started_at`` a
    UTC timestamp, ``observations`` JSON text (``json_safe``: C1 controls and bidi overrides
    escaped, as in the other formats; NULL as ``[]``), one row group per batch, so memory stays
    flat (a batch at a time) and columns are built by Arrow, not row by row. A batch is a
    sequence of tuples or a ``pyarrow.RecordBatch`` of ``export_batches``. Python's cyclic
    garbage collector is paused meanwhile: it found nothing to free in millions of short-lived
    tuples of strings (none refers back to another) and took a fifth of the time walking them."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise StorageError("parquet export",
                           "needs pyarrow: pip install 'blockwatch-censorship[parquet]'") from None
    stamp = pa.timestamp("us", tz="UTC")
    types = {"runtime_s": pa.float64(), "queued_s": pa.float64(), "asn": pa.int64(),
             "started_at": stamp}
    schema = pa.schema([(name, types.get(name, pa.string())) for name in EXPORT_FIELDS])
    # the rows as given: started_at the stored text (SQLite) or a datetime (PostgreSQL)
    as_text = pa.struct([(n, pa.string() if n == "started_at" else schema.field(n).type)
                         for n in EXPORT_FIELDS])
    as_stamp = pa.struct(list(schema))
    count = 0
    collecting = gc.isenabled()
    gc.disable()
    try:
        with pq.ParquetWriter(fh, schema) as writer:
            for batch in batches:
                if not len(batch):
                    continue
                if isinstance(batch, pa.RecordBatch):  # the stored values (arrow_read)
                    text = True
                    columns = [c if c.type == t.type else pc.cast(c, t.type)
                               for c, t in zip(batch.columns, as_text.fields, strict=True)]
                else:
                    text = isinstance(batch[0][STARTED_AT], str)
                    # tuples to columns in Arrow's C++, not a Python loop per value
                    columns = pa.array(batch, type=as_text if text else as_stamp).flatten()
                if text:  # YYYY-MM-DDTHH:MM:SS.ffffffZ, parsed by Arrow
                    columns[STARTED_AT] = pc.cast(columns[STARTED_AT], stamp)
                columns[OBSERVATIONS] = _safe_json(pa, pc, columns[OBSERVATIONS])
                writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))
                count += len(batch)
            if not count:
                writer.write_table(schema.empty_table())
    finally:
        if collecting:
            gc.enable()
    return count


# probes.textsafe's unsafe characters in RE2's syntax (Arrow's regular expressions)
_UNSAFE_RE2 = (r"[\x00-\x08\x0b-\x1f\x7f-\x9f\x{200e}\x{200f}\x{202a}-\x{202e}"
               r"\x{2066}-\x{2069}]")


def _safe_json(pa: Any, pc: Any, column: Any) -> Any:
    """Observation JSON texts: NULL as ``[]``, and ``json_safe`` applied to the few texts with
    a character it escapes (found by Arrow, so that the others are never copied to Python)."""
    column = pc.fill_null(column, "[]")
    unsafe = pc.match_substring_regex(column, _UNSAFE_RE2)
    if not pc.any(unsafe).as_py():
        return column
    values = column.to_pylist()
    for i in pc.indices_nonzero(unsafe).to_pylist():
        values[i] = json_safe(values[i])
    return pa.array(values, pa.string())


@dataclass(frozen=True, slots=True)
class Format:
    """An export format: ``write(rows, fh) -> count``; ``binary`` formats get a bytes file and
    need ``--output`` (they cannot go to a terminal)."""

    write: Callable[[Iterable[Mapping[str, Any]], Any], int]
    binary: bool = False
    # the columnar way, from ``export_batches`` (same records), where the format has one
    write_batches: Callable[[Iterable[Sequence[tuple[Any, ...]]], Any], int] | None = None
    requires: str | None = None  # an optional module it needs, checked before any file is made
    install: str = ""

    def missing(self) -> str | None:
        """What to install if the format cannot work here, else None."""
        if self.requires is None:
            return None
        import importlib.util

        return None if importlib.util.find_spec(self.requires) else self.install


# storage's export formats by name; a new format is one function and one line here. OONI's
# format belongs to the OONI stage above storage: `blockwatch export` takes its formats from
# blockwatch.exports, which adds it.
FORMATS: dict[str, Format] = {
    "jsonl": Format(write_jsonl),
    "csv": Format(write_csv),
    "parquet": Format(write_parquet, binary=True, write_batches=write_parquet_batches,
                      requires="pyarrow",
                      install="pip install 'blockwatch-censorship[parquet]'"),
}
