"""What each run's verdicts were judged on, in typed columns of ``runs``.

A re-analysis must judge a run on the same inputs as the sweep that stored it: which resolvers
and vantages were controls, which local networks hold real servers at bogon addresses, and
which window of other runs' measurements was read as controls. These travelled in the untyped
``summary`` JSON (and a control path's run was recognised by ``summary.control_for``); they
become columns, filled here from the summaries of existing runs:

* ``control_resolvers``, ``control_vantages``, ``local_networks``: JSON lists; NULL in
  ``control_resolvers`` means "not recorded" (a run stored before blockwatch kept them);
* ``controls_since`` / ``controls_until``: the window of control-vantage measurements read;
  both NULL: none were read (an OONI import carries its control in the run). For existing runs
  the end is the run's end and the start was not recorded (NULL: the configured
  ``[analysis] control_max_age_h`` before the start, as the sweep used);
* ``control_for``: the run this one was the control path of.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from blockwatch.storage.types import JSONType, UTCDateTime

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LISTS = ("control_resolvers", "control_vantages", "local_networks")


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def backfill(summary: Any, finished_at: Any) -> dict[str, Any]:
    """The columns of one existing run, from its summary (tested on its own)."""
    if isinstance(summary, str):
        try:
            summary = json.loads(summary)
        except ValueError:
            summary = None
    if not isinstance(summary, dict):
        return {}
    out: dict[str, Any] = {}
    if isinstance(summary.get("control_for"), str):
        out["control_for"] = summary["control_for"]
    controls = summary.get("controls")
    if isinstance(controls, dict):
        for key, column in (("resolvers", "control_resolvers"),
                            ("vantages", "control_vantages"),
                            ("local_networks", "local_networks")):
            out[column] = _strings(controls.get(key))
        # an OONI import's control is in the run; a sweep read other runs' measurements
        if out["control_vantages"] and summary.get("source") != "ooni" \
                and "control_for" not in out:
            out["controls_until"] = finished_at
    return out


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("control_for", sa.String(), nullable=True))
        for name in LISTS:
            batch.add_column(sa.Column(name, JSONType, nullable=True))
        batch.add_column(sa.Column("controls_since", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("controls_until", UTCDateTime(), nullable=True))
    conn = op.get_bind()
    runs = sa.table("runs", sa.column("id", sa.String()), sa.column("summary", JSONType),
                    sa.column("finished_at", UTCDateTime()),
                    sa.column("control_for", sa.String()),
                    *(sa.column(n, JSONType) for n in LISTS),
                    sa.column("controls_until", UTCDateTime()))
    rows = conn.execute(sa.select(runs.c.id, runs.c.summary, runs.c.finished_at)).all()
    for run_id, summary, finished_at in rows:
        values = backfill(summary, finished_at)
        if values:
            conn.execute(runs.update().where(runs.c.id == run_id).values(**values))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        for name in ("controls_until", "controls_since", *reversed(LISTS), "control_for"):
            batch.drop_column(name)
