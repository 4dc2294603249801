"""The SQL schema as ORM classes: ``runs``, ``measurements``, ``verdicts``, ``schedule_state``.

These classes are storage's private mapping of the vocabulary in ``probes.model``; nothing outside
``storage/`` sees them. The schema they describe is a contract with researchers (docs/schema.md)
and changes only through a migration in ``storage/migrations/versions``; a test checks that the
migrations and these classes agree.

Design notes:

- Observations are one JSON array per measurement, not a table per layer: they are written once,
  read whole, and their shape is owned by ``probes.model``; JSON functions reach inside them.
- Verdicts are append-only: re-analysis adds rows, and a measurement's current verdict is the one
  with the highest ``id`` (``sqlite_autoincrement`` guarantees ids are never reused); the view
  ``current_verdicts`` (migration 0007, ``CURRENT_VERDICTS``) holds those alone.
- ``service``/``probe``/``target`` are copies of fields of ``target_json`` so that the common
  queries can use an index.
- Constraint names follow a naming convention so that later migrations (batch mode on SQLite)
  can refer to them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from sqlalchemy import (
    DDL,
    BigInteger,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    event,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from blockwatch.storage.types import JSONType, UTCDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT on PostgreSQL (billions of verdicts across vantages); exactly INTEGER on SQLite, where
# only "INTEGER PRIMARY KEY" becomes the rowid and autoincrements.
VerdictId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 - SQLAlchemy reads this class attribute
        dt.datetime: UTCDateTime(),
        dict[str, Any]: JSONType,
        list[dict[str, Any]]: JSONType,
        list[str]: JSONType,
    }


class RunRow(Base):
    """One sweep from one vantage."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(primary_key=True)
    vantage: Mapped[str]
    country: Mapped[str | None]
    asn: Mapped[int | None] = mapped_column(BigInteger)  # 32-bit ASNs overflow a signed INTEGER
    group_name: Mapped[str | None]
    started_at: Mapped[dt.datetime]
    finished_at: Mapped[dt.datetime | None]
    status: Mapped[str]
    software_version: Mapped[str]
    config_hash: Mapped[str]
    baseline: Mapped[dict[str, Any]]
    summary: Mapped[dict[str, Any]]
    # what its verdicts were judged on (RunInputs; control_resolvers NULL: not recorded)
    control_for: Mapped[str | None]
    control_resolvers: Mapped[list[str] | None]
    control_vantages: Mapped[list[str] | None]
    local_networks: Mapped[list[str] | None]
    controls_since: Mapped[dt.datetime | None]
    controls_until: Mapped[dt.datetime | None]

    __table_args__ = (
        Index("ix_runs_started_at", "started_at"),
        Index("ix_runs_group_name_started_at", "group_name", "started_at"),
    )


class MeasurementRow(Base):
    """One probe of one target in one run, with all its observations."""

    __tablename__ = "measurements"

    id: Mapped[str] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    vantage: Mapped[str]
    service: Mapped[str]
    probe: Mapped[str]
    probe_version: Mapped[str]
    target: Mapped[str]
    target_json: Mapped[dict[str, Any]]
    started_at: Mapped[dt.datetime]
    runtime_s: Mapped[float] = mapped_column(Double)  # DOUBLE PRECISION on PostgreSQL
    failure: Mapped[str | None]
    failed_operation: Mapped[str | None]
    observations: Mapped[list[dict[str, Any]]]
    # columns added by migrations come last, in their order, so that a new database (built from
    # these classes) has the migrated one's column order: migration 0003's two
    # the part of runtime_s spent waiting for our own limits
    queued_s: Mapped[float] = mapped_column(Double, default=0.0, server_default="0")
    # the service's category (a test list's category code)
    category: Mapped[str | None]

    __table_args__ = (
        Index("ix_measurements_run_id", "run_id"),
        Index("ix_measurements_service_started_at", "service", "started_at"),
        Index("ix_measurements_started_at", "started_at"),
    )


class VerdictRow(Base):
    """An opinion about a measurement (``measurement_id`` set) or a whole service (NULL)."""

    __tablename__ = "verdicts"

    id: Mapped[int] = mapped_column(VerdictId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    measurement_id: Mapped[str | None] = mapped_column(
        ForeignKey("measurements.id", ondelete="CASCADE")
    )
    service: Mapped[str]
    verdict: Mapped[str]
    layer: Mapped[str | None]
    rule_id: Mapped[str]
    analyzer_version: Mapped[str]
    evidence: Mapped[str]
    details: Mapped[dict[str, Any]]
    created_at: Mapped[dt.datetime]

    __table_args__ = (
        # (measurement_id, id): "latest verdict of a measurement" is one index seek everywhere
        Index("ix_verdicts_measurement_id", "measurement_id", "id"),
        Index("ix_verdicts_service_run_id", "service", "run_id"),
        Index("ix_verdicts_run_id", "run_id"),
        {"sqlite_autoincrement": True},
    )


class ScheduleStateRow(Base):
    """What the daemon knows of one schedule group: next run, last run, who runs it."""

    __tablename__ = "schedule_state"

    vantage: Mapped[str] = mapped_column(primary_key=True)
    group_name: Mapped[str] = mapped_column(primary_key=True)
    schedule: Mapped[str]
    next_run_at: Mapped[dt.datetime | None]
    last_run_id: Mapped[str | None]
    last_started_at: Mapped[dt.datetime | None]
    last_status: Mapped[str | None]
    daemon_pid: Mapped[int | None]
    daemon_host: Mapped[str | None]
    updated_at: Mapped[dt.datetime]


class CollectorTokenRow(Base):
    """A vantage the collector accepts submissions from (migration 0005): the SHA-256 of its
    token, never the token; the vantage's name, country and ASN fix what it may write."""

    __tablename__ = "collector_tokens"

    vantage: Mapped[str] = mapped_column(primary_key=True)
    secret_sha256: Mapped[str] = mapped_column(unique=True)
    country: Mapped[str | None]
    asn: Mapped[int | None] = mapped_column(BigInteger)
    # a control vantage (outside the censored networks): its measurements judge the others'
    control: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[dt.datetime]
    revoked_at: Mapped[dt.datetime | None]



class OutboxRow(Base):
    """A run waiting to reach the collector (migration 0006): ``state`` pending (retried with
    backoff from ``next_attempt_at``) or rejected (the collector refused a batch for good:
    ``last_error`` says why); ``batches_sent`` batches of it are stored there already."""

    __tablename__ = "outbox"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"),
                                        primary_key=True)
    collector: Mapped[str]
    queued_at: Mapped[dt.datetime]
    state: Mapped[str]
    batches_sent: Mapped[int]
    attempts: Mapped[int]
    next_attempt_at: Mapped[dt.datetime]
    last_error: Mapped[str | None]


# the Core tables, typed as such (``__table__`` is typed as any FromClause)
MEASUREMENTS = cast(Table, MeasurementRow.__table__)
VERDICTS = cast(Table, VerdictRow.__table__)


# each run's measurement's and service's current verdict (the highest id); a new database gets
# it with the tables, a migrated one from migration 0007, which holds the same text
CURRENT_VERDICTS = (
    "CREATE VIEW current_verdicts AS SELECT * FROM verdicts WHERE id IN "
    "(SELECT max(id) FROM verdicts GROUP BY run_id, service, measurement_id)")
event.listen(Base.metadata, "after_create", DDL(CURRENT_VERDICTS))  # type: ignore[no-untyped-call]
