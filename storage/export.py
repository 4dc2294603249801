"""Write export records (``Store.export_rows``) as JSON Lines or CSV.

Guarantees: the field set and order are fixed, ``EXPORT_FIELDS``: the fields of the export
contract first (ARCHITECTURE.md), then extras; new fields are only ever appended. JSONL writes
one object per line with ``observations`` as a list; CSV writes one row per record with
``observations`` JSON-encoded in one cell and empty cells for NULL. Both stream and return the
number of records written. Open CSV files with ``newline=""``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from blockwatch.probes.textsafe import csv_cell, json_safe
from blockwatch.storage.errors import StorageError

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


PARQUET_BATCH = 10_000


def write_parquet(rows: Iterable[Mapping[str, Any]], fh: Any) -> int:
    """Parquet (needs the ``parquet`` extra): the ``EXPORT_FIELDS`` columns, ``started_at`` a
    UTC timestamp, ``observations`` JSON text; written in row groups of ``PARQUET_BATCH`` so
    memory stays flat."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise StorageError("parquet export",
                           "needs pyarrow: pip install 'blockwatch-censorship[parquet]'") from None
    import datetime as dt

    types = {"runtime_s": pa.float64(), "queued_s": pa.float64(), "asn": pa.int64(),
             "started_at": pa.timestamp("us", tz="UTC")}
    schema = pa.schema([(name, types.get(name, pa.string())) for name in EXPORT_FIELDS])
    count = 0
    with pq.ParquetWriter(fh, schema) as writer:
        batch: list[dict[str, Any]] = []
        for row in rows:
            record = {name: row.get(name) for name in EXPORT_FIELDS}
            record["observations"] = _cell("observations", record["observations"])
            record["started_at"] = dt.datetime.fromisoformat(str(record["started_at"]))
            batch.append(record)
            if len(batch) >= PARQUET_BATCH:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                count += len(batch)
                batch = []
        if batch or not count:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            count += len(batch)
    return count


@dataclass(frozen=True, slots=True)
class Format:
    """An export format: ``write(rows, fh) -> count``; ``binary`` formats get a bytes file and
    need ``--output`` (they cannot go to a terminal)."""

    write: Callable[[Iterable[Mapping[str, Any]], Any], int]
    binary: bool = False
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
    "parquet": Format(write_parquet, binary=True, requires="pyarrow",
                      install="pip install 'blockwatch-censorship[parquet]'"),
}
