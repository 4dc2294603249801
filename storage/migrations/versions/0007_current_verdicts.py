"""The ``current_verdicts`` view: each measurement's and each service's verdict as it stands now.

Verdicts are append-only (a re-analysis adds rows); the current one of a run's measurement, or
of a run's service (``measurement_id`` NULL), is the row with the highest id. The view keeps
only those, so that a researcher's ``GROUP BY`` (Datasette, ``blockwatch report query``) does
not count a re-analysed verdict twice. Plain SQL that SQLite and PostgreSQL both run: GROUP BY
puts NULL measurement ids together, which is what a service verdict needs. A later migration
that rebuilds or alters ``verdicts`` drops the view first and creates it again after (SQLite's
batch mode renames tables, PostgreSQL refuses to alter a column a view depends on).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# the same text as storage.tables.CURRENT_VERDICTS (a migration is a frozen copy)
CURRENT_VERDICTS = (
    "CREATE VIEW current_verdicts AS SELECT * FROM verdicts WHERE id IN "
    "(SELECT max(id) FROM verdicts GROUP BY run_id, service, measurement_id)")


def upgrade() -> None:
    op.execute(CURRENT_VERDICTS)


def downgrade() -> None:
    op.execute("DROP VIEW current_verdicts")
