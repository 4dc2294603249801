"""Read-only queries for reports and researchers: service verdicts over time, timelines bucketed
in SQL, per-layer counts, vantages, and bulk loading of synthetic histories (tests and
benchmarks). The user's own read-only SQL (``blockwatch query``) is in ``storage.readonly``.

Guarantees:

- Every function here runs the same SQL on SQLite and PostgreSQL (bucketing is the only
  dialect-specific expression) and returns plain records, never ORM objects.
- "The" verdict of a service in a run is the service-level verdict (``measurement_id IS NULL``)
  with the highest ``id`` for that (run, service): re-analysis appends rows, the latest wins.
- Streams (``service_verdicts``) keep memory flat however many rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    String,
    exists,
    func,
    insert,
    literal_column,
    select,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import aliased

from blockwatch.storage.errors import StorageError, describe
from blockwatch.storage.store import Store
from blockwatch.storage.tables import MeasurementRow, RunRow, VerdictRow
from blockwatch.storage.types import ensure_utc, parse_utc

Bucket = Literal["minute", "hour", "day", "week"]
BUCKETS: tuple[Bucket, ...] = ("minute", "hour", "day", "week")
STREAM_ROWS = 2000


@dataclass(frozen=True, slots=True)
class ServiceVerdict:
    """The current verdict of one service in one run, with the run's vantage and time."""

    service: str
    vantage: str
    country: str | None
    run_id: str
    started_at: dt.datetime
    run_status: str
    verdict: str
    layer: str | None


@dataclass(frozen=True, slots=True)
class BucketCount:
    """How many runs of a vantage gave ``verdict`` for ``service`` in the bucket starting at
    ``start`` (UTC)."""

    start: dt.datetime
    service: str
    vantage: str
    verdict: str
    count: int


@dataclass(frozen=True, slots=True)
class LayerCount:
    """Current measurement verdicts of one service, vantage and probe (layer)."""

    service: str
    vantage: str
    probe: str
    verdict: str
    count: int


@dataclass(frozen=True, slots=True)
class VantageInfo:
    """A vantage as the runs describe it (its latest country), and the configurations used."""

    vantage: str
    country: str | None
    runs: int
    first: dt.datetime
    last: dt.datetime
    software_versions: tuple[str, ...]
    config_hashes: tuple[str, ...]
    statuses: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Filters:
    """Optional restrictions shared by the report queries (``None`` = everything)."""

    services: Sequence[str] | None = None
    vantages: Sequence[str] | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    # services whose measurements carry one of these categories (a test list's codes: NEWS)
    categories: Sequence[str] | None = None


NO_FILTERS = Filters()


def _current_service_verdicts(f: Filters) -> Any:
    """Service-level verdict rows that no later service-level row of the same (run, service)
    supersedes, joined to their run. NOT EXISTS lets both backends seek the
    (service, run_id) index instead of grouping every verdict."""
    v, r = VerdictRow, RunRow
    later = aliased(VerdictRow)
    superseded = exists().where(later.run_id == v.run_id, later.service == v.service,
                                later.measurement_id.is_(None), later.id > v.id)
    stmt = select().select_from(v).join(r, r.id == v.run_id).where(
        v.measurement_id.is_(None), ~superseded)
    if f.services:
        stmt = stmt.where(v.service.in_(list(f.services)))
    if f.categories:
        m = MeasurementRow
        stmt = stmt.where(v.service.in_(select(m.service).where(
            m.category.in_(list(f.categories))).distinct()))
    if f.vantages:
        stmt = stmt.where(r.vantage.in_(list(f.vantages)))
    if f.since is not None:
        stmt = stmt.where(r.started_at >= ensure_utc(f.since, "since"))
    if f.until is not None:
        stmt = stmt.where(r.started_at < ensure_utc(f.until, "until"))
    return stmt


def service_verdicts(store: Store, filters: Filters = NO_FILTERS) -> Iterator[ServiceVerdict]:
    """Current service verdicts ordered by service, vantage, run start (streamed)."""
    v, r = VerdictRow, RunRow
    stmt = _current_service_verdicts(filters).add_columns(
        v.service, r.vantage, r.country, v.run_id, r.started_at, r.status, v.verdict, v.layer,
    ).order_by(v.service, r.vantage, r.started_at, v.run_id)
    for row in _stream(store, stmt):
        yield ServiceVerdict(*row)


def timeline_counts(store: Store, bucket: Bucket, filters: Filters = NO_FILTERS
                    ) -> list[BucketCount]:
    """Current service verdicts counted per bucket, service, vantage and verdict, grouped in
    SQL. Buckets without runs are absent: a gap is not "ok"."""
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {', '.join(BUCKETS)}, not {bucket!r}")
    v, r = VerdictRow, RunRow
    key = _bucket_key(_dialect(store), bucket, r.started_at).label("bucket")
    stmt = _current_service_verdicts(filters).add_columns(
        key, v.service, r.vantage, v.verdict, func.count().label("n"),
    ).group_by(key, v.service, r.vantage, v.verdict).order_by(key, v.service, r.vantage)
    return [BucketCount(_bucket_start(k), s, vt, vd, int(n))
            for k, s, vt, vd, n in _stream(store, stmt)]


def _bucket_key(dialect: str, bucket: Bucket, col: Any) -> ColumnElement[str]:
    """Text naming the bucket's start, parsed by ``_bucket_start`` (weeks start on Monday)."""
    if dialect == "sqlite":  # started_at is fixed-width ISO text: YYYY-MM-DDTHH...
        if bucket == "minute":
            return func.substr(col, 1, 16, type_=String)
        if bucket == "hour":
            return func.substr(col, 1, 13, type_=String)
        if bucket == "day":
            return func.substr(col, 1, 10, type_=String)
        return func.date(func.substr(col, 1, 10, type_=String), "weekday 0", "-6 days",
                         type_=String)
    trunc = func.date_trunc(bucket, col.op("AT TIME ZONE")(literal_column("'UTC'")))
    pattern = 'YYYY-MM-DD"T"HH24:MI' if bucket == "minute" else 'YYYY-MM-DD"T"HH24'
    return func.to_char(trunc, pattern, type_=String)


def _bucket_start(key: str) -> dt.datetime:
    if len(key) == 13:  # YYYY-MM-DDTHH (a minute's key is YYYY-MM-DDTHH:MM, read as it is)
        key += ":00"
    return parse_utc(key)


def layer_counts(store: Store, filters: Filters = NO_FILTERS) -> list[LayerCount]:
    """Current measurement verdicts per service, vantage, probe and verdict."""
    v, m, r = VerdictRow, MeasurementRow, RunRow
    later = aliased(VerdictRow)
    superseded = exists().where(later.measurement_id == v.measurement_id, later.id > v.id)
    stmt = (select(m.service, m.vantage, m.probe, v.verdict, func.count())
            .select_from(v).join(m, m.id == v.measurement_id).join(r, r.id == m.run_id)
            .where(v.measurement_id.is_not(None), ~superseded)
            .group_by(m.service, m.vantage, m.probe, v.verdict)
            .order_by(m.service, m.vantage, m.probe, v.verdict))
    if filters.services:
        stmt = stmt.where(m.service.in_(list(filters.services)))
    if filters.categories:
        stmt = stmt.where(m.category.in_(list(filters.categories)))
    if filters.vantages:
        stmt = stmt.where(m.vantage.in_(list(filters.vantages)))
    if filters.since is not None:
        stmt = stmt.where(r.started_at >= ensure_utc(filters.since, "since"))
    if filters.until is not None:
        stmt = stmt.where(r.started_at < ensure_utc(filters.until, "until"))
    return [LayerCount(s, vt, p, vd, int(n)) for s, vt, p, vd, n in _stream(store, stmt)]


def vantages(store: Store) -> list[VantageInfo]:
    """Every vantage with its run count, time span, software versions, config hashes and run
    statuses. The country is the one of the vantage's latest run."""
    r = RunRow
    spans = select(r.vantage, func.count(), func.min(r.started_at), func.max(r.started_at)
                   ).group_by(r.vantage).order_by(r.vantage)
    details = select(r.vantage, r.country, r.software_version, r.config_hash, r.status,
                     func.count(), func.max(r.started_at)
                     ).group_by(r.vantage, r.country, r.software_version, r.config_hash,
                                r.status)
    out: dict[str, dict[str, Any]] = {}
    for vantage, n, first, last in _stream(store, spans):
        out[vantage] = {"runs": int(n), "first": _aware(first), "last": _aware(last),
                        "country": None, "country_at": None, "versions": set(),
                        "hashes": set(), "statuses": {}}
    for vantage, country, version, digest, status, n, last in _stream(store, details):
        info = out[vantage]
        last = _aware(last)
        if country and (info["country_at"] is None or last > info["country_at"]):
            info["country"], info["country_at"] = country, last
        info["versions"].add(version)
        info["hashes"].add(digest)
        info["statuses"][status] = info["statuses"].get(status, 0) + int(n)
    return [VantageInfo(name, i["country"], i["runs"], i["first"], i["last"],
                        tuple(sorted(i["versions"])), tuple(sorted(i["hashes"])),
                        dict(sorted(i["statuses"].items())))
            for name, i in out.items()]


def short_run_ids(store: Store, ids: Sequence[str], least: int = 13) -> dict[str, str]:
    """Each run id cut to its shortest prefix of at least ``least`` characters that no other
    run's id starts with, so that what ``runs`` shows, ``show`` takes. Runs made in the same
    millisecond share 13 characters (OONI measurements imported from the same second always
    do). The longest prefix an id shares is the one with its neighbours in id order: two
    indexed lookups an id."""
    r = RunRow
    out: dict[str, str] = {}
    try:
        with store.engine.connect() as conn:
            for run_id in ids:
                n = least
                for nearest in (select(r.id).where(r.id < run_id).order_by(r.id.desc()),
                                select(r.id).where(r.id > run_id).order_by(r.id)):
                    other = conn.scalar(nearest.limit(1))
                    if other is not None:
                        n = max(n, _shared(run_id, other) + 1)
                out[run_id] = run_id[:n]
    except SQLAlchemyError as exc:
        raise StorageError(store.url, describe(exc)) from exc
    return out


def _shared(a: str, b: str) -> int:
    """How many leading characters ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    return next((k for k in range(n) if a[k] != b[k]), n)


def _aware(value: Any) -> dt.datetime:
    # aggregates lose the column type on SQLite (text comes back) and keep it on PostgreSQL
    if isinstance(value, str):
        return parse_utc(value)
    assert isinstance(value, dt.datetime)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _dialect(store: Store) -> str:
    return str(store.engine.dialect.name)


def _stream(store: Store, stmt: Any) -> Iterator[tuple[Any, ...]]:
    try:
        with store.engine.connect() as conn:
            result = conn.execution_options(yield_per=STREAM_ROWS).execute(stmt)
            for row in result:
                yield tuple(row)
    except SQLAlchemyError as exc:
        raise StorageError(store.url, describe(exc)) from exc


# --- bulk loading (synthetic histories for tests and benchmarks) ----------------------------

_TABLES: dict[str, Any] = {"runs": RunRow.__table__, "measurements": MeasurementRow.__table__,
           "verdicts": VerdictRow.__table__}


def bulk_insert(store: Store, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert rows (column name -> value, as in docs/schema.md; instants aware datetimes) into
    one table in one transaction. For loading synthetic histories fast; no validation."""
    if not rows:
        return
    try:
        with store.engine.begin() as conn:
            conn.execute(insert(_TABLES[table]), list(rows))
    except SQLAlchemyError as exc:
        raise StorageError(store.url, describe(exc)) from exc
