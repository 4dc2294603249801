"""A batch into the database: one transaction, idempotent, committed before the answer.

Guarantees of ``store_batch``:

- the token's vantage is the only one a batch may write: a run or measurement naming another
  vantage refuses the batch (403); so does a run id already stored under another vantage, or a
  measurement of a run that is not this vantage's;
- runs and measurements are inserted with ``ON CONFLICT (id) DO NOTHING``: a batch sent again
  (an answer lost on the way back, a retry after a crash) stores nothing twice; verdicts, which
  have no id of their own, are skipped when the same (run, measurement, service, verdict, rule,
  analyzer) is stored already;
- the token's country and ASN, when it has them, replace the run's own (the collector, not the
  volunteer's config, says where a vantage is);
- everything or nothing: any failure rolls the whole batch back.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.dialects import postgresql, sqlite

from blockwatch.collector.batch import Batch, BatchError
from blockwatch.collector.tokens import Vantage
from blockwatch.storage.tables import MeasurementRow, RunRow, VerdictRow

CHUNK = 500  # rows per INSERT statement


@dataclass(frozen=True, slots=True)
class Stored:
    runs: int
    measurements: int
    verdicts: int
    duplicates: int  # records already stored, or sent twice in the batch

    def to_dict(self) -> dict[str, int]:
        return {"runs": self.runs, "measurements": self.measurements,
                "verdicts": self.verdicts, "duplicates": self.duplicates}


def _insert(dialect: str, table: Any, rows: list[dict[str, Any]]) -> Any:
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    return ins.values(rows).on_conflict_do_nothing(index_elements=["id"]).returning(table.c.id)


def _check_vantage(batch: Batch, vantage: Vantage) -> None:
    if batch.vantage != vantage.name:
        raise BatchError(f"the batch says vantage {batch.vantage!r}; this token is "
                         f"{vantage.name!r}'s", 403)
    for kind, items in (("run", batch.runs), ("measurement", batch.measurements)):
        other = next((x for x in items if x.vantage != vantage.name), None)
        if other is not None:
            raise BatchError(f"{kind} {other.id} claims vantage {other.vantage!r}; this token "
                             f"is {vantage.name!r}'s", 403)


def store_batch(store: Any, batch: Batch, vantage: Vantage) -> Stored:
    _check_vantage(batch, vantage)
    now = dt.datetime.now(dt.UTC)
    run_rows = []
    for r in batch.runs:
        row = r.model_dump()
        if vantage.country is not None:
            row["country"] = vantage.country
        if vantage.asn is not None:
            row["asn"] = vantage.asn
        run_rows.append(row)
    m_rows = [m.model_dump() for m in batch.measurements]
    run_ids = {r["id"] for r in run_rows} | {m["run_id"] for m in m_rows} | {
        v.run_id for v in batch.verdicts}
    with store._transaction(write=True) as s:
        dialect = s.get_bind().dialect.name
        owners = dict(s.execute(select(RunRow.id, RunRow.vantage)
                                .where(RunRow.id.in_(run_ids))).all()) if run_ids else {}
        foreign = sorted(i for i, v in owners.items() if v != vantage.name)
        if foreign:
            raise BatchError(f"run {foreign[0]} belongs to another vantage", 403)
        missing = sorted(run_ids - owners.keys() - {r["id"] for r in run_rows})
        if missing:
            raise BatchError(f"run {missing[0]} is neither in this batch nor stored: send the "
                             "run with its first measurements")
        new_runs: set[str] = set()
        for i in range(0, len(run_rows), CHUNK):
            new_runs |= set(s.scalars(_insert(dialect, RunRow.__table__,
                                              run_rows[i:i + CHUNK])).all())
        new_ms: set[str] = set()
        for i in range(0, len(m_rows), CHUNK):
            new_ms |= set(s.scalars(_insert(dialect, MeasurementRow.__table__,
                                            m_rows[i:i + CHUNK])).all())
        _check_verdict_targets(s, batch, vantage)
        verdicts = _new_verdicts(s, batch, now)
        if verdicts:
            s.execute(insert(VerdictRow), verdicts)
    sent = len(run_rows) + len(m_rows) + len(batch.verdicts)
    stored = len(new_runs) + len(new_ms) + len(verdicts)
    return Stored(len(new_runs), len(new_ms), len(verdicts),
                  batch.duplicates + sent - stored)


def _check_verdict_targets(s: Any, batch: Batch, vantage: Vantage) -> None:
    """Every verdict's measurement is in this batch or stored under this vantage."""
    wanted = {v.measurement_id for v in batch.verdicts if v.measurement_id} - {
        m.id for m in batch.measurements}
    if not wanted:
        return
    found = set(s.scalars(select(MeasurementRow.id).where(
        MeasurementRow.id.in_(wanted), MeasurementRow.vantage == vantage.name)).all())
    if wanted - found:
        raise BatchError(f"a verdict of measurement {sorted(wanted - found)[0]}, which is "
                         "neither in this batch nor this vantage's")


def _key(run_id: str, measurement_id: str | None, service: str, verdict: str, rule_id: str,
         analyzer: str) -> tuple[str, str, str, str, str, str]:
    return (run_id, measurement_id or "", service, verdict, rule_id, analyzer)


def _new_verdicts(s: Any, batch: Batch, now: dt.datetime) -> list[dict[str, Any]]:
    """The batch's verdicts not stored yet (a verdict has no id: its content is its key)."""
    if not batch.verdicts:
        return []
    runs = {v.run_id for v in batch.verdicts}
    v = VerdictRow
    stored = {_key(*r) for r in s.execute(
        select(v.run_id, v.measurement_id, v.service, v.verdict, v.rule_id,
               v.analyzer_version).where(v.run_id.in_(runs))).all()}
    out = []
    for x in batch.verdicts:
        key = _key(x.run_id, x.measurement_id, x.service, x.verdict, x.rule_id,
                   x.analyzer_version)
        if key not in stored:
            stored.add(key)
            out.append({**x.model_dump(), "created_at": now})
    return out


