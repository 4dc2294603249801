"""The store: save and query runs, measurements and verdicts (synchronous; call it from a thread
in async code).

Guarantees:

- Each write method is one transaction: a batch is stored whole or not at all, so a killed
  writer loses at most the batch in flight.
- Verdicts are append-only; a measurement's current verdict is its latest (highest id).
- ``measurements`` and ``export_rows`` stream (``yield_per``) inside one read transaction: memory
  stays flat however many rows, and the rows are one consistent snapshot.
- Every database error is a ``StorageError`` naming the database.
- One ``Store`` may be shared by threads (file SQLite and PostgreSQL: one pooled connection per
  call); iterate a stream to its end, or close it, to give its connection back.

Size: ``Store`` is the storage API, one class whose methods are every write and read the rest of
blockwatch makes of the database (runs, measurements, verdicts, the streams exports read, schedule
state), each one transaction on the same engine; splitting the class would scatter that API, and
the guarantees above, over several modules.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self, TypeVar, cast

from sqlalchemy import (
    JSON,
    Engine,
    Select,
    Table,
    delete,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from blockwatch.probes.model import Measurement, Run, RunInputs, Verdict
from blockwatch.storage.convert import (
    export_row,
    inputs_to_row,
    measurement_from_row,
    measurement_to_row,
    run_from_row,
    run_to_row,
    verdict_from_row,
    verdict_to_row,
)
from blockwatch.storage.copy import copy_rows, without_nul
from blockwatch.storage.errors import StorageError, describe
from blockwatch.storage.migrate import IMMEDIATE
from blockwatch.storage.tables import (
    MEASUREMENTS,
    VERDICTS,
    MeasurementRow,
    RunRow,
    ScheduleStateRow,
    VerdictRow,
)
from blockwatch.storage.types import UTCDateTime, ensure_utc, format_utc, json_text

YIELD_PER = 500


def _sqlite_binds() -> dict[tuple[str, str], Callable[[Any], Any]]:
    """How each non-plain column of the two tables written in bulk is stored on SQLite."""
    out: dict[tuple[str, str], Callable[[Any], Any]] = {}
    for table in (MEASUREMENTS, VERDICTS):
        for column in table.columns:
            if isinstance(column.type, UTCDateTime):
                out[(table.name, column.name)] = format_utc
            elif isinstance(column.type, JSON):
                out[(table.name, column.name)] = json_text
    return out


_SQLITE_BIND = _sqlite_binds()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleState:
    """One schedule group as the daemon last saw it (table ``schedule_state``)."""

    vantage: str
    group: str
    schedule: str
    next_run_at: dt.datetime | None = None
    last_run_id: str | None = None
    last_started_at: dt.datetime | None = None
    last_status: str | None = None
    daemon_pid: int | None = None
    daemon_host: str | None = None
    updated_at: dt.datetime = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.UTC))

T = TypeVar("T")


class RunCache:
    """The measurements of whole runs, least recently used first out, at most ``limit``
    measurements in all (``Store.control_measurements``)."""

    def __init__(self, limit: int = 50_000) -> None:
        self.limit, self.held = limit, 0
        self._runs: OrderedDict[str, list[Measurement]] = OrderedDict()

    def get(self, run_id: str) -> list[Measurement] | None:
        found = self._runs.get(run_id)
        if found is not None:
            self._runs.move_to_end(run_id)
        return found

    def put(self, run_id: str, measurements: list[Measurement]) -> None:
        if len(measurements) > self.limit or run_id in self._runs:
            return
        self._runs[run_id] = measurements
        self.held += len(measurements)
        while self.held > self.limit:
            _, gone = self._runs.popitem(last=False)
            self.held -= len(gone)


class Store:
    """Runs, measurements and verdicts in one database. Make one with ``open_store``."""

    def __init__(self, engine: Engine, where: str) -> None:
        self._engine = engine
        self._read = sessionmaker(engine, expire_on_commit=False)
        self._write = sessionmaker(engine.execution_options(**{IMMEDIATE: True}),
                                   expire_on_commit=False)
        self._closed = False
        self.url = where  # password hidden

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for read-only SQL of your own (e.g. ``pandas.read_sql``)."""
        return self._engine

    def __repr__(self) -> str:
        return f"<Store {self.url}>"

    # --- writing ----------------------------------------------------------------------------

    def start_run(self, run: Run) -> None:
        row = run_to_row(run)
        if self._engine.dialect.name == "postgresql":
            row = without_nul(row)  # an imported record's names may hold one
        with self._transaction(write=True) as s:
            s.execute(insert(RunRow), [row])

    def finish_run(
        self,
        run_id: str,
        *,
        status: str,
        finished_at: dt.datetime,
        summary: Mapping[str, Any],
        inputs: RunInputs | None = None,
    ) -> None:
        """Close a run: its status, end, summary and, when given, what its verdicts were
        judged on (``inputs``, read back by ``blockwatch reanalyze``)."""
        values = {
            "status": status,
            "finished_at": ensure_utc(finished_at, "finished_at"),
            "summary": dict(summary),
        }
        if self._engine.dialect.name == "postgresql":
            values["summary"] = without_nul(values["summary"])
        if inputs is not None:
            values.update(inputs_to_row(inputs))
        with self._transaction(write=True) as s:
            done = s.execute(update(RunRow).where(RunRow.id == run_id).values(**values))
            if done.rowcount != 1:  # type: ignore[attr-defined]
                raise StorageError(self.url, f"no run {run_id!r} to finish")

    def mark_crashed(self, vantage: str, group: str | None) -> list[str]:
        """Runs of ``vantage`` and ``group`` still ``running`` become ``crashed``: called by a
        run that holds that group's lock (or, ungrouped, the database's), so no process of
        this machine can still be writing them (a kill -9, a power cut). Their ids."""
        r = RunRow
        same = r.group_name.is_(None) if group is None else r.group_name == group
        with self._transaction(write=True) as s:
            ids = list(s.scalars(select(r.id).where(r.status == "running", r.vantage == vantage,
                                                    same)))
            if ids:
                s.execute(update(r).where(r.id.in_(ids)).values(status="crashed"))
        return ids

    def add_measurements(
        self, measurements: Sequence[Measurement], verdicts: Sequence[Verdict] = (), *,
        run_id: str | None = None,
    ) -> None:
        """Store a batch of measurements and their verdicts in one transaction.

        A verdict's run is ``run_id`` when given (a sweep writing its own results), else its
        measurement's (in this batch or already stored); a service-level verdict
        (``measurement_id=None``) takes the batch's run if the batch has exactly one.
        """
        if not measurements and not verdicts:
            return
        rows = [measurement_to_row(m) for m in measurements]
        runs = {m.id: m.run_id for m in measurements}
        with self._transaction(write=True) as s:
            if rows:
                self._insert(s, MEASUREMENTS, rows)
            if verdicts and run_id is not None:
                self._insert_verdicts(s, verdicts, lambda _v: run_id)
            elif verdicts:
                batch_run = _single({m.run_id for m in measurements})
                runs |= self._stored_runs(s, verdicts, runs)
                self._insert_verdicts(s, verdicts, lambda v: _run_of(v, runs, batch_run))

    def add_verdicts(self, run_id: str, verdicts: Sequence[Verdict], *,
                     inputs: RunInputs | None = None,
                     summary: Mapping[str, Any] | None = None) -> None:
        """Append verdicts for ``run_id`` (service-level ones, or a re-analysis) in one
        transaction; with ``inputs`` and ``summary``, record in the same transaction what they
        were judged on and the run's new summary (a judgement is stored whole or not at all,
        with one commit instead of three)."""
        if not verdicts and inputs is None and summary is None:
            return
        with self._transaction(write=True) as s:
            if verdicts:
                self._insert_verdicts(s, verdicts, lambda _v: run_id)
            values: dict[str, Any] = inputs_to_row(inputs) if inputs is not None else {}
            if summary is not None:
                values["summary"] = (without_nul(dict(summary))
                                     if self._engine.dialect.name == "postgresql"
                                     else dict(summary))
            if values:
                done = s.execute(update(RunRow).where(RunRow.id == run_id).values(**values))
                if done.rowcount != 1:  # type: ignore[attr-defined]
                    raise StorageError(self.url, f"no run {run_id!r}")

    def _insert_verdicts(
        self, s: Session, verdicts: Sequence[Verdict], run_of: Callable[[Verdict], str]
    ) -> None:
        now = dt.datetime.now(dt.UTC)
        rows = [verdict_to_row(v, run_id=run_of(v), created_at=now) for v in verdicts]
        self._insert(s, VERDICTS, rows)

    def _insert(self, s: Session, table: Table, rows: list[dict[str, Any]]) -> None:
        """Insert rows (all with the same keys). On SQLite, to the driver directly, values
        converted as the column types would (UTC text, JSON text): SQLAlchemy's per-row
        parameter processing costs more than SQLite's insert, and a sweep writes thousands of
        rows a second. On PostgreSQL by COPY (``storage.copy``); elsewhere a Core executemany
        (the ORM's bulk path costs more still)."""
        dialect = self._engine.dialect.name
        if dialect == "postgresql":
            copy_rows(s, table, rows)
            return
        if dialect != "sqlite":
            s.execute(table.insert(), rows)
            return
        columns = list(rows[0])
        convert = [_SQLITE_BIND.get((table.name, c)) for c in columns]
        sql = (f"INSERT INTO {table.name} ({', '.join(columns)}) "
               f"VALUES ({', '.join('?' * len(columns))})")
        values = [tuple(v if f is None or v is None else f(v)
                        for f, v in zip(convert, (r[c] for c in columns), strict=True))
                  for r in rows]
        driver = s.connection().connection.driver_connection
        assert driver is not None
        try:
            driver.executemany(sql, values)
        except sqlite3.Error as exc:  # the driver's own: not wrapped by SQLAlchemy here
            raise StorageError(self.url, describe(exc)) from exc

    def _stored_runs(
        self, s: Session, verdicts: Sequence[Verdict], known: Mapping[str, str]
    ) -> dict[str, str]:
        """Runs of the measurements that verdicts refer to but this batch does not contain."""
        wanted = {v.measurement_id for v in verdicts if v.measurement_id is not None} - set(known)
        if not wanted:
            return {}
        found = s.execute(
            select(MeasurementRow.id, MeasurementRow.run_id).where(MeasurementRow.id.in_(wanted))
        )
        runs = {mid: rid for mid, rid in found}
        missing = wanted - set(runs)
        if missing:
            raise StorageError(self.url, f"verdict for unknown measurement {min(missing)!r}")
        return runs

    def put_schedule_state(self, states: Sequence[ScheduleState]) -> None:
        """Insert or replace the rows of these (vantage, group)s, in one transaction."""
        if not states:
            return
        rows = [_schedule_row(st) for st in states]
        keys = [(r["vantage"], r["group_name"]) for r in rows]
        t = ScheduleStateRow
        with self._transaction(write=True) as s:
            s.execute(delete(t).where(tuple_(t.vantage, t.group_name).in_(keys)))
            s.execute(insert(t), rows)

    def drop_schedule_state(self, keys: Sequence[tuple[str, str]]) -> None:
        """Forget these (vantage, group)s: they are no longer scheduled."""
        if keys:
            t = ScheduleStateRow
            with self._transaction(write=True) as s:
                s.execute(delete(t).where(tuple_(t.vantage, t.group_name).in_(list(keys))))

    # --- reading ----------------------------------------------------------------------------

    def schedule_states(self) -> list[ScheduleState]:
        """Every scheduled group, by vantage then group name."""
        t = ScheduleStateRow
        with self._transaction() as s:
            rows = s.scalars(select(t).order_by(t.vantage, t.group_name))
            return [ScheduleState(
                vantage=r.vantage, group=r.group_name, schedule=r.schedule,
                next_run_at=r.next_run_at, last_run_id=r.last_run_id,
                last_started_at=r.last_started_at, last_status=r.last_status,
                daemon_pid=r.daemon_pid, daemon_host=r.daemon_host, updated_at=r.updated_at)
                for r in rows]

    def runs(self, limit: int = 50, group: str | None = None, *,
             vantages: list[str] | None = None, since: dt.datetime | None = None,
             until: dt.datetime | None = None) -> list[Run]:
        """The latest ``limit`` runs, newest first, optionally of one group, of some vantages,
        started at or after ``since`` and before ``until``."""
        stmt = select(RunRow).order_by(RunRow.started_at.desc(), RunRow.id.desc()).limit(limit)
        if group is not None:
            stmt = stmt.where(RunRow.group_name == group)
        if vantages:
            stmt = stmt.where(RunRow.vantage.in_(vantages))
        if since is not None:
            stmt = stmt.where(RunRow.started_at >= ensure_utc(since, "since"))
        if until is not None:
            stmt = stmt.where(RunRow.started_at < ensure_utc(until, "until"))
        with self._transaction() as s:
            return [run_from_row(r) for r in s.scalars(stmt)]

    def get_run(self, run_id: str) -> Run | None:
        """The run with this id or unique id prefix; ``StorageError`` if the prefix is
        ambiguous."""
        if not run_id:
            return None
        with self._transaction() as s:
            exact = s.get(RunRow, run_id)
            if exact is not None:
                return run_from_row(exact)
            # substr, not LIKE: LIKE is case-insensitive on SQLite and needs escaping
            prefix = func.substr(RunRow.id, 1, len(run_id)) == run_id
            found = list(s.scalars(select(RunRow).where(prefix).order_by(RunRow.id).limit(2)))
        if len(found) > 1:
            raise StorageError(
                self.url, f"run id prefix {run_id!r} is ambiguous ({found[0].id}, {found[1].id}, "
                "...); give more characters"
            )
        return run_from_row(found[0]) if found else None

    def measurements(
        self, run_id: str | None = None, since: dt.datetime | None = None
    ) -> Iterator[Measurement]:
        """Measurements in start order, optionally of one run and/or started at or after
        ``since``, streamed."""
        stmt = _filtered(select(MeasurementRow.__table__), run_id, since)
        for row in self._stream(stmt):
            yield self._rebuild(row, measurement_from_row)

    def control_measurements(
        self, vantages: Sequence[str], start: dt.datetime, end: dt.datetime,
        services: Sequence[str] | None = None, near: dt.datetime | None = None,
        cache: RunCache | None = None, ended: dt.datetime | None = None,
    ) -> list[Measurement]:
        """Measurements of the control ``vantages`` started in [start, end]: the other side of
        a comparison between vantages sharing this database.

        With ``services`` and ``near`` (what a run's judging asks for), only those services'
        measurements, and of each (vantage, service) only those of the vantage's run nearest
        in start time to ``near`` that measured the service inside the window (ties: the
        smaller run id); runs that started by ``ended`` (the judged run's end: the controls a
        sweep could see) before any that started later. The choice for one service does not
        depend on the others asked, so a sweep judging some services and a re-analysis judging
        all agree; and the rows read stay
        a run's worth per control vantage, however many runs the window holds (every 5 minutes
        for 6 hours is 144 runs). A ``cache`` (the collector's judging worker, which judges
        many runs against the same control runs) keeps the runs that are all stored."""
        if not vantages:
            return []
        start, end = ensure_utc(start, "start"), ensure_utc(end, "end")
        m = MeasurementRow
        if services is None or near is None:
            stmt = (select(m.__table__)
                    .where(m.vantage.in_(list(vantages)))
                    .where(m.started_at >= start).where(m.started_at <= end)
                    .order_by(m.started_at, m.id))
            return [self._rebuild(row, measurement_from_row) for row in self._stream(stmt)]
        near = ensure_utc(near, "near")
        r = RunRow
        # a run started at or before the window's end, and not finished before it began
        runs = (select(r.id, r.vantage, r.started_at, r.status, r.summary)
                .where(r.vantage.in_(list(vantages))).where(r.started_at <= end)
                .where(or_(r.finished_at.is_(None), r.finished_at >= start)))
        last = ensure_utc(ended, "ended") if ended is not None else end
        with self._transaction() as s:
            found = [(ensure_utc(t, "started_at") > last,
                      abs((ensure_utc(t, "started_at") - near).total_seconds()), run_id, vantage,
                      None if status == "running" else (summary or {}).get("measurements"))
                     for run_id, vantage, t, status, summary in s.execute(runs)]
        missing = {v: set(services) for v in vantages}
        out: list[Measurement] = []
        for _, _, run_id, vantage, count in sorted(found):
            wanted = missing[vantage]
            if not wanted:
                continue
            if cache is not None:
                whole = cache.get(run_id)
                if whole is None:
                    stmt = select(m.__table__).where(m.run_id == run_id)
                    whole = [self._rebuild(row, measurement_from_row)
                             for row in self._stream(stmt)]
                    if (isinstance(count, int) and not isinstance(count, bool)
                            and len(whole) >= count):  # ended, and all of it is here
                        cache.put(run_id, whole)
                got = [x for x in whole if x.service in wanted and start <= x.started_at <= end]
            else:
                stmt = (select(m.__table__).where(m.run_id == run_id)
                        .where(m.service.in_(sorted(wanted)))
                        .where(m.started_at >= start).where(m.started_at <= end))
                got = [self._rebuild(row, measurement_from_row) for row in self._stream(stmt)]
            wanted.difference_update(x.service for x in got)
            out += got
        out.sort(key=lambda x: (x.started_at, x.id))
        return out

    def verdicts(
        self, run_id: str | None = None, measurement_id: str | None = None, *,
        current: bool = False,
    ) -> list[Verdict]:
        """Verdicts in the order they were added (the last one of a measurement is current);
        ``current``: only those (the ``current_verdicts`` view's rows)."""
        v = VerdictRow
        stmt = select(v).order_by(v.id)
        if current:
            latest = select(func.max(v.id)).group_by(v.run_id, v.service, v.measurement_id)
            if run_id is not None:
                latest = latest.where(v.run_id == run_id)
            stmt = stmt.where(v.id.in_(latest))
        if run_id is not None:
            stmt = stmt.where(VerdictRow.run_id == run_id)
        if measurement_id is not None:
            stmt = stmt.where(VerdictRow.measurement_id == measurement_id)
        with self._transaction() as s:
            return [verdict_from_row(r) for r in s.scalars(stmt)]

    def export_rows(
        self, since: dt.datetime | None = None, run_id: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """One flat record per measurement with its latest verdict (see
        ``storage.export.EXPORT_FIELDS``), in start order, streamed."""
        m, v, r = MeasurementRow, VerdictRow, RunRow
        latest = (
            select(func.max(v.id)).where(v.measurement_id == m.id).correlate(m).scalar_subquery()
        )
        stmt = (
            select(m.__table__, v.verdict, v.rule_id, v.analyzer_version, v.evidence,
                   r.country, r.asn, v.layer.label("verdict_layer"),
                   r.started_at.label("run_started_at"), r.software_version)
            .join(r, r.id == m.run_id)
            .outerjoin(v, v.id == latest)
        )
        for row in self._stream(_filtered(stmt, run_id, since)):
            yield self._rebuild(row, export_row)

    # --- plumbing ---------------------------------------------------------------------------

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[Session]:
        if self._closed:
            raise StorageError(self.url, "store is closed")
        maker = self._write if write else self._read
        try:
            with maker() as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise StorageError(self.url, describe(exc), disconnected=bool(
                getattr(exc, "connection_invalidated", False))) from exc

    def _stream(self, stmt: Select[Any]) -> Iterator[Mapping[str, Any]]:
        with self._transaction() as s:
            for row in s.execute(stmt.execution_options(yield_per=YIELD_PER)):
                yield cast(Mapping[str, Any], row._mapping)

    def _rebuild(self, row: Mapping[str, Any], build: Callable[[Mapping[str, Any]], T]) -> T:
        try:
            return build(row)
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageError(
                self.url, f"measurement {row['id']!r} cannot be read by this version ({exc!r})"
            ) from exc


def _filtered(stmt: Select[Any], run_id: str | None, since: dt.datetime | None) -> Select[Any]:
    m = MeasurementRow
    if run_id is not None:
        stmt = stmt.where(m.run_id == run_id)
    if since is not None:
        stmt = stmt.where(m.started_at >= ensure_utc(since, "since"))
    return stmt.order_by(m.started_at, m.id)


def _schedule_row(st: ScheduleState) -> dict[str, Any]:
    def instant(value: dt.datetime | None, name: str) -> dt.datetime | None:
        return None if value is None else ensure_utc(value, name)

    return {"vantage": st.vantage, "group_name": st.group, "schedule": st.schedule,
            "next_run_at": instant(st.next_run_at, "next_run_at"),
            "last_run_id": st.last_run_id,
            "last_started_at": instant(st.last_started_at, "last_started_at"),
            "last_status": st.last_status, "daemon_pid": st.daemon_pid,
            "daemon_host": st.daemon_host, "updated_at": ensure_utc(st.updated_at, "updated_at")}


def _single(runs: set[str]) -> str | None:
    return next(iter(runs)) if len(runs) == 1 else None


def _run_of(v: Verdict, runs: Mapping[str, str], batch_run: str | None) -> str:
    if v.measurement_id is not None:
        return runs[v.measurement_id]
    if batch_run is None:
        raise ValueError(
            f"service verdict for {v.service!r} has no measurement and the batch is not of "
            "exactly one run; use Store.add_verdicts(run_id, ...)"
        )
    return batch_run
