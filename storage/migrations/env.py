"""Alembic environment for the blockwatch schema.

Normally run by ``storage.migrate.upgrade`` with an open connection in
``config.attributes["connection"]`` (already inside the transaction that makes the upgrade atomic).
For development (``alembic revision --autogenerate``, ``upgrade --sql``), the config built by
``storage.migrate.alembic_config(url)`` carries ``sqlalchemy.url`` instead.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy.engine import Connection

from blockwatch.storage.tables import Base

# SQLite cannot ALTER most things; batch mode recreates the table instead.
_OPTIONS: dict[str, Any] = {
    "target_metadata": Base.metadata,
    "render_as_batch": True,
    "compare_type": True,
}


def _run(connection: Connection) -> None:
    context.configure(connection=connection, **_OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def _offline() -> None:
    context.configure(url=context.config.get_main_option("sqlalchemy.url"), literal_binds=True,
                      **_OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def _online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from blockwatch.storage.db import create_engine_for  # only the development path needs an engine

    engine = create_engine_for(context.config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    _offline()
else:
    _online()
