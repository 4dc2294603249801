"""The collector's vantages: one row per submission token (issue #14).

A token is a random 256-bit secret shown once; only its SHA-256 is stored. The row fixes the
vantage (name, country, ASN) every submission made with it is stored under, and whether the
vantage is a control (outside the censored networks: its measurements judge the others').

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from blockwatch.storage.types import UTCDateTime

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "collector_tokens",
        sa.Column("vantage", sa.String(), nullable=False),
        sa.Column("secret_sha256", sa.String(), nullable=False),
        sa.Column("country", sa.String(), nullable=True),
        sa.Column("asn", sa.BigInteger(), nullable=True),
        sa.Column("control", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("vantage", name="pk_collector_tokens"),
        sa.UniqueConstraint("secret_sha256", name="uq_collector_tokens_secret_sha256"),
    )


def downgrade() -> None:
    op.drop_table("collector_tokens")
