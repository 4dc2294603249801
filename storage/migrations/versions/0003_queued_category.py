"""measurements.queued_s and measurements.category.

``queued_s``: a sweep bounds what it has in flight (queries per resolver, connections per
server, sockets); the time a measurement waited for those is recorded apart from the network's
time, so that a researcher can see that no timeout included it. ``category``: the service's
category (a test list's category code, e.g. NEWS), so results group by it in plain SQL.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("measurements") as batch:
        batch.add_column(sa.Column("queued_s", sa.Double(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("category", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("measurements") as batch:
        batch.drop_column("category")
        batch.drop_column("queued_s")
