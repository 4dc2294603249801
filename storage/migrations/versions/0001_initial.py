"""Initial schema: runs, measurements, verdicts.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from blockwatch.storage.types import JSONType, UTCDateTime

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than imported from blockwatch.storage.tables: a migration describes the
# schema as it was at this revision, whatever the ORM classes say later.
_VERDICT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("vantage", sa.String(), nullable=False),
        sa.Column("country", sa.String(), nullable=True),
        sa.Column("asn", sa.BigInteger(), nullable=True),
        sa.Column("group_name", sa.String(), nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("software_version", sa.String(), nullable=False),
        sa.Column("config_hash", sa.String(), nullable=False),
        sa.Column("baseline", JSONType, nullable=False),
        sa.Column("summary", JSONType, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
    )
    op.create_index("ix_runs_started_at", "runs", ["started_at"])
    op.create_index("ix_runs_group_name_started_at", "runs", ["group_name", "started_at"])

    op.create_table(
        "measurements",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("vantage", sa.String(), nullable=False),
        sa.Column("service", sa.String(), nullable=False),
        sa.Column("probe", sa.String(), nullable=False),
        sa.Column("probe_version", sa.String(), nullable=False),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("target_json", JSONType, nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("runtime_s", sa.Double(), nullable=False),
        sa.Column("failure", sa.String(), nullable=True),
        sa.Column("failed_operation", sa.String(), nullable=True),
        sa.Column("observations", JSONType, nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name="fk_measurements_run_id_runs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_measurements"),
    )
    op.create_index("ix_measurements_run_id", "measurements", ["run_id"])
    op.create_index(
        "ix_measurements_service_started_at", "measurements", ["service", "started_at"]
    )
    op.create_index("ix_measurements_started_at", "measurements", ["started_at"])

    op.create_table(
        "verdicts",
        sa.Column("id", _VERDICT_ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("measurement_id", sa.String(), nullable=True),
        sa.Column("service", sa.String(), nullable=False),
        sa.Column("verdict", sa.String(), nullable=False),
        sa.Column("layer", sa.String(), nullable=True),
        sa.Column("rule_id", sa.String(), nullable=False),
        sa.Column("analyzer_version", sa.String(), nullable=False),
        sa.Column("evidence", sa.String(), nullable=False),
        sa.Column("details", JSONType, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["measurement_id"],
            ["measurements.id"],
            name="fk_verdicts_measurement_id_measurements",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name="fk_verdicts_run_id_runs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_verdicts"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_verdicts_measurement_id", "verdicts", ["measurement_id", "id"])
    op.create_index("ix_verdicts_service_run_id", "verdicts", ["service", "run_id"])
    op.create_index("ix_verdicts_run_id", "verdicts", ["run_id"])


def downgrade() -> None:
    op.drop_table("verdicts")
    op.drop_table("measurements")
    op.drop_table("runs")
