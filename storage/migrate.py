"""Bring a database to the schema this software knows, atomically, without an alembic.ini.

Guarantees of ``upgrade``:

- it runs in one transaction that takes the write lock first (``BEGIN IMMEDIATE`` on SQLite, an
  advisory lock on PostgreSQL), so two processes opening a fresh database at once do not race:
  the second waits, then finds the schema at head;
- it is idempotent: at head, it changes nothing;
- a database without any of blockwatch's tables (a new file, an empty PostgreSQL database) gets
  today's schema from the ORM classes and is stamped HEAD, in the same locked transaction,
  without importing Alembic (about 13 MiB and 0.2 s of a first run); tests check that this
  schema is the migrations' own, table by table, column by column, index by index;
- it refuses, with ``StorageError``, a database stamped with a revision this software does not
  know (written by a newer blockwatch) and one that has blockwatch's tables but no revision;
- on SQLite, foreign keys are off while migrating (batch migrations drop and recreate tables,
  which ``ON DELETE CASCADE`` would otherwise empty) and checked before the commit.

``check_readable`` is the read-only counterpart (commands that only read): it writes nothing and
refuses, with a ``StorageError`` saying why, a database that is not at head (older: it cannot be
upgraded read-only; newer; empty; not blockwatch's).

For developers, ``alembic_config(url)`` drives the Alembic commands, e.g.
``command.revision(alembic_config("sqlite:///dev.db"), "add x", autogenerate=True, rev_id="0002")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Column, MetaData, PrimaryKeyConstraint, String, Table, inspect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from blockwatch.storage.errors import StorageError
from blockwatch.storage.migrations import HEAD
from blockwatch.storage.tables import Base

if TYPE_CHECKING:  # Alembic is imported only when a database is not at HEAD already
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
IMMEDIATE = "blockwatch_begin_immediate"  # execution option read by storage.db's BEGIN hook
_PG_LOCK = 0x626C6B77  # "blkw": the advisory lock id serialising migrations on PostgreSQL


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    return {s.revision for s in script.walk_revisions()}


def head() -> str:
    from alembic.script import ScriptDirectory

    rev = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert rev is not None
    return rev


def current(conn: Connection) -> set[str]:
    from alembic.runtime.migration import MigrationContext

    return set(MigrationContext.configure(conn).get_current_heads())


def _at_head(engine: Engine) -> bool:
    """The database is stamped with this software's HEAD, and nothing else (one SELECT, no
    Alembic: most opens of a database find it so)."""
    try:
        with engine.connect() as conn:
            found = {row[0] for row in conn.exec_driver_sql(
                "SELECT version_num FROM alembic_version")}
    except SQLAlchemyError:  # no such table yet, or a database that is no database
        return False
    return found == {HEAD}


def upgrade(engine: Engine, where: str) -> None:
    """Migrate the database behind ``engine`` to head (``where`` names it in errors)."""
    if _at_head(engine):
        return
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        if sqlite:
            _raw(conn, "PRAGMA foreign_keys = OFF")  # a no-op inside a transaction: do it first
        try:
            conn.execution_options(**{IMMEDIATE: True})
            with conn.begin():
                if engine.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK})")
                if _fresh(conn):
                    create_at_head(conn)
                else:
                    from alembic import command

                    _check(conn, where)
                    command.upgrade(alembic_config(connection=conn), "head")
                if sqlite and conn.exec_driver_sql("PRAGMA foreign_key_check").first():
                    raise StorageError(where, "migration left rows with dangling references")
        finally:
            if sqlite:
                _raw(conn, "PRAGMA foreign_keys = ON")


def check_readable(engine: Engine, where: str) -> None:
    """Refuse a database this software cannot read as it is, writing nothing."""
    if _at_head(engine):
        return
    with engine.connect() as conn:
        names = set(inspect(conn).get_table_names())
        if not names & {*Base.metadata.tables, _VERSION.name}:
            raise StorageError(where, "has no blockwatch tables: nothing has been stored in it "
                               "yet (a command that writes, e.g. `blockwatch run`, creates them)")
        _check(conn, where)  # a newer revision, or tables without one
        found = ", ".join(sorted(current(conn))) or "none"
    raise StorageError(
        where, f"schema revision {found} is older than this blockwatch's ({HEAD}); a command "
        "that only reads opens the database read-only and cannot upgrade it: a command that "
        "writes (`blockwatch run`, `reanalyze`, `import ooni`, the daemon) upgrades it, on this "
        "file or on a writable copy of it")


_VERSION = Table("alembic_version", MetaData(),  # as Alembic makes it
                 Column("version_num", String(32), nullable=False),
                 PrimaryKeyConstraint("version_num", name="alembic_version_pkc"))


def _fresh(conn: Connection) -> bool:
    """No table of blockwatch's and no schema revision: a new database."""
    names = set(inspect(conn).get_table_names())
    return not names & {*Base.metadata.tables, _VERSION.name}


def create_at_head(conn: Connection) -> None:
    """Today's schema from the ORM classes, stamped HEAD (inside the caller's transaction)."""
    Base.metadata.create_all(conn)
    _VERSION.create(conn)
    conn.execute(_VERSION.insert().values(version_num=HEAD))


def _check(conn: Connection, where: str) -> None:
    revisions = current(conn)
    unknown = revisions - known_revisions()
    if unknown:
        raise StorageError(
            where,
            f"schema revision {', '.join(sorted(unknown))} is newer than this blockwatch knows "
            f"(latest {head()}); upgrade blockwatch",
        )
    ours = set(Base.metadata.tables) & set(inspect(conn).get_table_names())
    if ours and not revisions:
        raise StorageError(
            where, f"has tables {', '.join(sorted(ours))} but no schema revision; "
            "not a blockwatch database"
        )


def _raw(conn: Connection, sql: str) -> None:
    """Run ``sql`` on the driver connection, outside SQLAlchemy's transaction handling."""
    driver = conn.connection.driver_connection
    assert driver is not None
    driver.execute(sql)
