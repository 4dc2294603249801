"""Open a store: URL -> engine with the right settings -> schema at head -> ``Store``.

Guarantees of ``open_store``:

- SQLite files run in WAL mode (readers never block the writer, a crash loses at most the
  transaction in flight) with ``synchronous=NORMAL``, ``foreign_keys=ON`` and a 5 s busy
  timeout; the file's directory is created. SQLAlchemy, not the sqlite3 module, emits ``BEGIN``
  (reads see one snapshot; writes take the lock up front with ``BEGIN IMMEDIATE``).
- PostgreSQL URLs (``postgresql+psycopg://...``) get the same schema and queries; nothing
  SQLite-specific is sent to them.
- Every failure to open (not a URL, unknown scheme, missing driver, unwritable directory, a file
  that is not a SQLite database, a schema newer than this software, ...) is a ``StorageError``
  with a one-line message; the engine is disposed before it is raised.

``open_store(url, read_only=True)`` is for commands that only read: it opens the database as it
is, writing and creating nothing, and never migrates (``storage.readonly.open_reader``).

A plain path (no ``://``) means a SQLite file; ``sqlite://`` is an in-memory database for tests,
usable from one thread at a time.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from blockwatch.storage import migrate
from blockwatch.storage.errors import StorageError, describe, hide_password
from blockwatch.storage.store import Store
from blockwatch.storage.types import json_text, json_value

BUSY_TIMEOUT_MS = 5000

# Compact JSON keeps observation columns small; UTF-8 stays readable in the sqlite3 shell.
def open_store(url: str, *, pre_ping: bool = True, read_only: bool = False,
               pool_size: int | None = None) -> Store:
    """Open (creating or upgrading as needed) the database at ``url``. ``pre_ping=False``: a
    server's pooled connection is not checked before each use (a round trip each time); a
    caller that says so tries again itself on ``StorageError.disconnected``. ``read_only``:
    open an existing database at this software's schema as it is, for reading only.
    ``pool_size``: connections a server's pool keeps open (SQLAlchemy's default 5; a busier
    caller, the collector, keeps more, since one opened beyond it is closed after its use and
    the next is a new, cold database backend)."""
    if read_only:
        from blockwatch.storage.readonly import open_reader

        return open_reader(url)
    where = hide_password(url)
    engine = create_engine_for(url, pre_ping=pre_ping, pool_size=pool_size)
    try:
        migrate.upgrade(engine, where)
    except StorageError:
        engine.dispose()
        raise
    except (SQLAlchemyError, OSError) as exc:
        engine.dispose()
        raise StorageError(where, describe(exc)) from exc
    return Store(engine, where)


def create_engine_for(url: str, *, pre_ping: bool = True,
                      pool_size: int | None = None) -> Engine:
    """An engine for ``url`` with blockwatch's connection settings (no connection made yet)."""
    where = hide_password(url)
    parsed = parse_url(url)
    kwargs: dict[str, Any] = {"json_serializer": json_text, "json_deserializer": json_value}
    if parsed.get_backend_name() == "sqlite":
        if _is_memory(parsed):
            kwargs |= {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        else:
            _make_parent(Path(parsed.database or ""), where)
    else:  # a long-lived process (a collector, the daemon) outlives a server restart: a pooled
        # connection is checked before use instead of failing the request that draws it
        kwargs["pool_pre_ping"] = pre_ping
        if pool_size is not None:
            kwargs |= {"pool_size": pool_size, "max_overflow": pool_size}
    try:
        engine = create_engine(parsed, **kwargs)
    except NoSuchModuleError as exc:
        raise StorageError(
            where,
            f"unknown URL scheme {parsed.drivername!r} "
            "(use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB)",
        ) from exc
    except ImportError as exc:
        raise StorageError(where, f"database driver not installed ({exc})") from exc
    except (ArgumentError, TypeError, ValueError) as exc:
        raise StorageError(where, f"bad database URL ({describe(exc)})") from exc
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def parse_url(url: str) -> URL:
    if "://" not in url:
        if not url.strip():
            raise StorageError(repr(url), "empty database URL")
        return URL.create("sqlite", database=str(Path(url).expanduser()))
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StorageError(hide_password(url), f"not a database URL ({describe(exc)})") from exc
    # plain postgresql:// would mean psycopg2 to SQLAlchemy; blockwatch[postgresql] is psycopg 3
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _is_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


def _make_parent(path: Path, where: str) -> None:
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise StorageError(where, f"{parent} is not a directory")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise StorageError(where, f"cannot create directory {parent}: {reason}") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        # SQLite needs to create the database and its -wal/-shm files next to each other
        raise StorageError(where, f"directory {parent} is not writable")


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # We emit BEGIN ourselves (see _sqlite_begin): sqlite3's legacy mode would not, for SELECT.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")  # first: WAL switch may wait
        _enable_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")  # durable enough in WAL, much faster
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _enable_wal(cursor: sqlite3.Cursor) -> None:
    # Switching a fresh file to WAL needs an exclusive lock, and SQLite answers "locked" at
    # once instead of calling the busy handler: retry for as long as busy_timeout would wait.
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _sqlite_begin(conn: Connection) -> None:
    # A deferred transaction that has read cannot wait for the write lock (SQLITE_BUSY at once);
    # writers take it at BEGIN, where busy_timeout applies.
    immediate = conn.get_execution_options().get(migrate.IMMEDIATE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
