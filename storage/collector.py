"""The collector's and the outbox's SQL (issue #14): the tables ``collector_tokens`` and
``outbox``, and a submitted batch inserted idempotently. The collector's logic (what a token
may write, the HTTP answers, when to retry) lives in ``blockwatch.collector``; here only the
statements, each in one transaction of the store.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from blockwatch.storage.copy import copy_rows, without_nul
from blockwatch.storage.errors import StorageError
from blockwatch.storage.tables import (
    MEASUREMENTS,
    VERDICTS,
    CollectorTokenRow,
    MeasurementRow,
    OutboxRow,
    RunRow,
    VerdictRow,
)
from blockwatch.storage.types import ensure_utc


class Refused(ValueError):
    """A batch the database must not take: ``forbidden`` (another vantage's) or not."""

    def __init__(self, message: str, *, forbidden: bool = False) -> None:
        super().__init__(message)
        self.forbidden = forbidden


class Exists(ValueError):
    """A row that is there already (a vantage's second token)."""


# --- tokens ------------------------------------------------------------------------------------


def add_token(store: Any, vantage: str, secret_sha256: str, country: str | None,
              asn: int | None, control: bool = False) -> None:
    row = CollectorTokenRow(vantage=vantage, secret_sha256=secret_sha256, country=country,
                            asn=asn, control=control, created_at=dt.datetime.now(dt.UTC),
                            revoked_at=None)
    try:
        with store._transaction(write=True) as s:
            s.add(row)
    except StorageError as exc:
        if isinstance(exc.__cause__, IntegrityError):
            raise Exists(vantage) from None
        raise


def tokens(store: Any) -> list[CollectorTokenRow]:
    with store._transaction() as s:
        return list(s.scalars(select(CollectorTokenRow).order_by(CollectorTokenRow.vantage)))


def revoke_token(store: Any, vantage: str) -> bool:
    """False when there is no valid token of ``vantage``."""
    with store._transaction(write=True) as s:
        done = s.execute(update(CollectorTokenRow)
                         .where(CollectorTokenRow.vantage == vantage,
                                CollectorTokenRow.revoked_at.is_(None))
                         .values(revoked_at=dt.datetime.now(dt.UTC)))
        return bool(done.rowcount == 1)


def token_by_hash(store: Any, secret_sha256: str) -> CollectorTokenRow | None:
    with store._transaction() as s:
        row: CollectorTokenRow | None = s.scalars(
            select(CollectorTokenRow)
            .where(CollectorTokenRow.secret_sha256 == secret_sha256)).first()
        return row


def control_vantages(store: Any) -> list[str]:
    """The vantages whose tokens say they are controls (revoked ones too: their measurements
    stay what they were)."""
    with store._transaction() as s:
        return list(s.scalars(select(CollectorTokenRow.vantage)
                              .where(CollectorTokenRow.control.is_(True))
                              .order_by(CollectorTokenRow.vantage)))


def complete_runs(store: Any, run_ids: Sequence[str]) -> list[str]:
    """Of ``run_ids``, the runs that ended and whose measurements are all stored (as many as
    their summary counts)."""
    if not run_ids:
        return []
    with store._transaction() as s:
        rows = s.execute(select(RunRow.id, RunRow.status, RunRow.summary)
                         .where(RunRow.id.in_(set(run_ids)))).all()
        out = []
        for run_id, status, summary in rows:
            if status == "running":
                continue
            want = (summary or {}).get("measurements", 0)
            have = s.scalar(select(func.count()).select_from(MeasurementRow)
                            .where(MeasurementRow.run_id == run_id))
            if isinstance(want, int) and (have or 0) >= want:
                out.append(run_id)
        return sorted(out)


def control_rows(store: Any, vantage: str, since: dt.datetime, until: dt.datetime,
                 services: Sequence[str], limit: int) -> tuple[list[Any], list[Any]]:
    """The runs and measurements of ``vantage`` started from ``since`` to ``until``, of the
    ``services`` (all when empty), at most ``limit`` measurements (the newest first kept),
    in start order: what a vantage asks the collector for to judge its own run."""
    from blockwatch.storage.convert import measurement_from_row, run_from_row

    m = MeasurementRow
    stmt = (select(m.__table__).where(m.vantage == vantage)
            .where(m.started_at >= ensure_utc(since, "since"))
            .where(m.started_at <= ensure_utc(until, "until")))
    if services:
        stmt = stmt.where(m.service.in_(sorted(set(services))))
    stmt = stmt.order_by(m.started_at.desc(), m.id).limit(limit)
    with store._transaction() as s:
        measurements = [measurement_from_row(r._mapping) for r in s.execute(stmt)]
        measurements.reverse()
        run_ids = sorted({x.run_id for x in measurements})
        runs = [run_from_row(r) for r in s.scalars(select(RunRow).where(RunRow.id.in_(run_ids))
                                                   .order_by(RunRow.started_at))] \
            if run_ids else []
    return runs, measurements


def ping(store: Any) -> None:
    """One round trip to the database (StorageError when it does not answer)."""
    with store._transaction() as s:
        s.execute(select(1))


def warm(store: Any, connections: int) -> None:
    """Open ``connections`` pooled connections (at most the pool's size) at once and read the
    tables a batch writes on each, before the first submission: a new PostgreSQL backend's
    first statements load its catalogue caches, and the first batches after a (re)start, each
    on a new connection, took 0.4-0.6 s more than later ones (the benchmark's slowest
    submissions). SQLite: nothing to do."""
    import threading

    if store.engine.dialect.name != "postgresql":
        return
    connections = min(connections, store.engine.pool.size())

    failed: list[BaseException] = []
    opened = threading.Barrier(connections, timeout=30)

    def one() -> None:
        try:
            with store._transaction() as s:
                s.execute(select(RunRow.id).where(RunRow.id == "")).all()
                s.execute(select(MeasurementRow.id).where(MeasurementRow.id == "")).all()
                s.execute(select(VerdictRow.id).where(VerdictRow.run_id == "")).all()
                opened.wait()  # all at once: each thread holds its own connection
        except BaseException as exc:
            opened.abort()
            failed.append(exc)

    threads = [threading.Thread(target=one) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    real = [e for e in failed if not isinstance(e, threading.BrokenBarrierError)]
    if real:
        raise real[0]


# --- a submitted batch -------------------------------------------------------------------------


def _insert(dialect: str, table: Any) -> Any:
    """INSERT ... ON CONFLICT (id) DO NOTHING RETURNING id, executed with many rows at once:
    one compiled statement (cached), sent as multi-row VALUES by SQLAlchemy's
    "insertmanyvalues". Only the number of ids returned is used: asking for them in parameter
    order (``sort_by_parameter_order``) would make SQLAlchemy send an upsert one row a
    statement, which was 2 statements a measurement and half the collector's time."""
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    return ins.on_conflict_do_nothing(index_elements=["id"]).returning(table.c.id)


def _key(row: Sequence[Any]) -> tuple[Any, ...]:
    run_id, measurement_id, *rest = row
    return (run_id, measurement_id or "", *rest)


# PostgreSQL takes a batch's rows by COPY (``storage.copy``); measurements through a staging
# table, so that ON CONFLICT still makes a resent batch store nothing twice.
_STAGING = ("CREATE TEMP TABLE IF NOT EXISTS bw_staging_measurements "
            "(LIKE measurements INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")


def _copy_measurements(s: Any, rows: list[dict[str, Any]]) -> int:
    """The measurements by COPY into a staging table, then into ``measurements`` ``ON CONFLICT
    (id) DO NOTHING``; the number new."""
    s.execute(text(_STAGING))
    copy_rows(s, MEASUREMENTS, rows, into="bw_staging_measurements")
    names = ", ".join(f'"{c}"' for c in rows[0])
    return len(s.execute(text(
        f"INSERT INTO measurements ({names}) SELECT {names} FROM bw_staging_measurements "
        "ON CONFLICT (id) DO NOTHING RETURNING id")).all())


VERDICT_KEY = ("run_id", "measurement_id", "service", "verdict", "rule_id", "analyzer_version")


def insert_batch(store: Any, vantage: str, runs: list[dict[str, Any]],
                 measurements: list[dict[str, Any]],
                 verdicts: list[dict[str, Any]]) -> tuple[int, int, int]:
    """Rows of one vantage in one transaction: runs and measurements ``ON CONFLICT (id) DO
    NOTHING``, verdicts unless the same (``VERDICT_KEY``) is stored; (new runs, new
    measurements, new verdicts). ``Refused``: a run id that is another vantage's, a
    measurement of a run neither sent nor stored, a verdict of another vantage's measurement;
    nothing is stored then."""
    run_ids = {r["id"] for r in runs} | {m["run_id"] for m in measurements} | {
        v["run_id"] for v in verdicts}
    now = dt.datetime.now(dt.UTC)
    with store._transaction(write=True) as s:
        dialect = s.get_bind().dialect.name
        owners = dict(s.execute(select(RunRow.id, RunRow.vantage)
                                .where(RunRow.id.in_(run_ids))).all()) if run_ids else {}
        foreign = sorted(i for i, v in owners.items() if v != vantage)
        if foreign:
            raise Refused(f"run {foreign[0]} belongs to another vantage", forbidden=True)
        missing = sorted(run_ids - owners.keys() - {r["id"] for r in runs})
        if missing:
            raise Refused(f"run {missing[0]} is neither in this batch nor stored: send the run "
                          "with its first measurements")
        wanted = {v["measurement_id"] for v in verdicts if v["measurement_id"]} - {
            m["id"] for m in measurements}
        if wanted:
            found = set(s.scalars(select(MeasurementRow.id).where(
                MeasurementRow.id.in_(wanted), MeasurementRow.vantage == vantage)).all())
            if wanted - found:
                raise Refused(f"a verdict of measurement {sorted(wanted - found)[0]}, which "
                              "is neither in this batch nor this vantage's")
        if dialect == "postgresql":  # no NUL in PostgreSQL text (storage.copy.without_nul)
            runs = [without_nul(r) for r in runs]
        new_runs = len(s.scalars(_insert(dialect, RunRow.__table__), runs).all()) \
            if runs else 0
        if not measurements:
            new_ms = 0
        elif dialect == "postgresql":
            new_ms = _copy_measurements(s, measurements)
        else:
            new_ms = len(s.scalars(_insert(dialect, MeasurementRow.__table__),
                                   measurements).all())
        fresh: list[dict[str, Any]] = []
        if verdicts:
            cols = [getattr(VerdictRow, c) for c in VERDICT_KEY]
            stored = {_key(r) for r in s.execute(select(*cols).where(
                VerdictRow.run_id.in_({v["run_id"] for v in verdicts}))).all()}
            for v in verdicts:
                key = _key([v[c] for c in VERDICT_KEY])
                if key not in stored:
                    stored.add(key)
                    fresh.append({**v, "created_at": now})
            if fresh and dialect == "postgresql":
                copy_rows(s, VERDICTS, fresh)
            elif fresh:  # RETURNING, so that they go as multi-row VALUES
                s.execute(insert(VERDICTS).returning(VERDICTS.c.id), fresh).all()
    return new_runs, new_ms, len(fresh)


# --- the outbox --------------------------------------------------------------------------------


def enqueue(store: Any, run_id: str, collector: str) -> None:
    now = dt.datetime.now(dt.UTC)
    with store._transaction(write=True) as s:
        if s.get(OutboxRow, run_id) is None:
            s.add(OutboxRow(run_id=run_id, collector=collector, queued_at=now, state="pending",
                            batches_sent=0, attempts=0, next_attempt_at=now, last_error=None))


def outbox(store: Any) -> list[OutboxRow]:
    with store._transaction() as s:
        return list(s.scalars(select(OutboxRow).order_by(OutboxRow.queued_at)))


def update_outbox(store: Any, run_id: str, **values: Any) -> None:
    with store._transaction(write=True) as s:
        s.execute(update(OutboxRow).where(OutboxRow.run_id == run_id).values(**values))


def drop_from_outbox(store: Any, run_id: str) -> None:
    with store._transaction(write=True) as s:
        s.execute(delete(OutboxRow).where(OutboxRow.run_id == run_id))
