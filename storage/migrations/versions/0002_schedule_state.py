"""Schedule state: each daemon-scheduled group's next run and last outcome.

So that ``blockwatch schedule --status`` works from any shell (or another machine, on
PostgreSQL), the daemon writes what it knows here instead of keeping it in memory.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from blockwatch.storage.types import UTCDateTime

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "schedule_state",
        sa.Column("vantage", sa.String(), nullable=False),
        sa.Column("group_name", sa.String(), nullable=False),
        sa.Column("schedule", sa.String(), nullable=False),
        sa.Column("next_run_at", UTCDateTime(), nullable=True),
        sa.Column("last_run_id", sa.String(), nullable=True),
        sa.Column("last_started_at", UTCDateTime(), nullable=True),
        sa.Column("last_status", sa.String(), nullable=True),
        sa.Column("daemon_pid", sa.Integer(), nullable=True),
        sa.Column("daemon_host", sa.String(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("vantage", "group_name", name="pk_schedule_state"),
    )


def downgrade() -> None:
    op.drop_table("schedule_state")
