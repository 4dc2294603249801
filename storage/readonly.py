"""Reading without writing: a ``Store`` for the commands that only read (``runs``, ``show``,
``export``, the reports, ...), and the user's own SQL (``blockwatch query``), one statement's
rows streamed.

Guarantees:

- ``open_reader(url)`` (``open_store(url, read_only=True)``) writes nothing and creates nothing
  beyond what SQLite's own readers do: no migration, no journal-mode switch, no directory made.
  A read-only copy (an archive, a mounted snapshot, a ``chmod 444`` file in a ``chmod 555``
  directory) is read as it is: where the file cannot change (a read-only mount, or a directory
  we cannot write, and no write-ahead log beside it) SQLite is told so (``immutable=1``) and
  needs no ``-wal``/``-shm`` files. A schema older than this software's is refused with a
  message saying it cannot be upgraded read-only; a newer one, an empty or a foreign database
  are refused as ``open_store`` refuses them.
- SQLite is opened ``mode=ro`` with ``query_only``; its authorizer allows reading only (SELECT,
  functions, pragmas that read), so ``ATTACH`` and ``VACUUM [INTO]`` (which attaches its output
  file) are refused before any file is opened, and no database can be attached at all.
  PostgreSQL sessions are read-only transactions.
- ``read_only_query`` cannot write: one statement only (a ``COMMIT; DELETE ...`` cannot step
  outside it). Its rows are streamed (``STREAM_ROWS`` at a time): memory stays flat however
  many rows. The statement being wrong (syntax, an unknown table, two statements, nothing to
  run) is a ``QueryError``; a refused write and any other error are ``StorageError``s.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from blockwatch.storage import migrate
from blockwatch.storage.db import BUSY_TIMEOUT_MS, _sqlite_begin, create_engine_for, parse_url
from blockwatch.storage.errors import QueryError, StorageError, describe, hide_password
from blockwatch.storage.queries import STREAM_ROWS
from blockwatch.storage.types import json_text, json_value

if TYPE_CHECKING:
    from blockwatch.storage.store import Store

_NO_ROWS = ("the statement returned no rows (only SELECT-like queries are allowed; nothing was "
            "changed)")


@dataclass(frozen=True, slots=True)
class QueryResult:
    """Column names, then rows streamed from one read-only transaction (iterate once)."""

    columns: tuple[str, ...]
    rows: Iterator[tuple[Any, ...]]


def open_reader(url: str) -> Store:
    """A ``Store`` that only reads the database at ``url``, as it is (see the guarantees)."""
    from blockwatch.storage.store import Store

    where = hide_password(url)
    engine = read_only_engine(url)
    try:
        migrate.check_readable(engine, where)
    except StorageError:
        engine.dispose()
        raise
    except (SQLAlchemyError, OSError) as exc:
        engine.dispose()
        raise StorageError(where, _open_problem(exc)) from exc
    return Store(engine, where)


def read_only_engine(url: str) -> Engine:
    """An engine that cannot write: SQLite opened ``mode=ro`` (``immutable=1`` where the file
    cannot change), ``query_only``, an authorizer that allows reading only; PostgreSQL sessions
    default to read-only transactions. No migration runs (the file is not touched)."""
    where = hide_password(url)
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine_for(url).execution_options(postgresql_readonly=True)
    path = parsed.database or ""
    if path in ("", ":memory:") or parsed.query.get("mode") == "memory":
        raise StorageError(where, "an in-memory database has nothing to read")
    file = Path(path)
    if not file.is_file():
        raise StorageError(where, f"no database file at {file}", missing=True)
    file = file.resolve()
    uri = f"file:{urllib.parse.quote(str(file))}?mode=ro"
    if _unchangeable(file):
        uri += "&immutable=1"
    engine = create_engine(parsed.set(database=str(file), query={}),
                           creator=lambda: _sqlite_ro(uri), json_serializer=json_text,
                           json_deserializer=json_value)
    event.listen(engine, "begin", _sqlite_begin)  # one snapshot per transaction, as db.py
    return engine


def _unchangeable(file: Path) -> bool:
    """Nothing can change the file while we read it, nor create SQLite's ``-wal``/``-shm`` files
    beside it: a read-only mount, or a directory we cannot write; and no write-ahead log with
    anything in it is there (it may hold committed transactions, or belong to a writer)."""
    try:
        if Path(f"{file}-wal").stat().st_size > 0:
            return False
    except OSError:
        pass  # no -wal

    try:
        if os.statvfs(file).f_flag & os.ST_RDONLY:
            return True
    except OSError:
        pass
    return not os.access(file.parent, os.W_OK | os.X_OK)


class _Denied:
    """What the authorizer refused last on one connection (for the error message)."""

    def __init__(self) -> None:
        self.what: str | None = None


class _ReadOnlyConnection(sqlite3.Connection):
    denied: _Denied


def _sqlite_ro(uri: str) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None,
                           factory=_ReadOnlyConnection)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA query_only = ON")
    conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)  # belt and braces with the authorizer
    denied = conn.denied = _Denied()

    def authorize(action: int, arg1: str | None, arg2: str | None, *_: Any) -> int:
        if (action in _READING or (action == sqlite3.SQLITE_PRAGMA and _reads(arg1, arg2))
                or (action == sqlite3.SQLITE_UPDATE and arg1 in _SCHEMA_TABLES)):
            # (pragma_table_info() and kin announce an UPDATE of the schema table they read;
            # the schema cannot be written through SQL, and CREATE/DROP/ALTER are denied)
            return sqlite3.SQLITE_OK
        if denied.what is None:  # the first refusal says what the statement wanted
            denied.what = _action_name(action, arg1, arg2)
        return sqlite3.SQLITE_DENY

    conn.set_authorizer(authorize)
    return conn


_READING = frozenset({sqlite3.SQLITE_READ, sqlite3.SQLITE_SELECT, sqlite3.SQLITE_FUNCTION,
                      sqlite3.SQLITE_RECURSIVE, sqlite3.SQLITE_TRANSACTION})
_SCHEMA_TABLES = frozenset({"sqlite_master", "sqlite_temp_master", "sqlite_schema",
                            "sqlite_temp_schema"})
# pragmas that only read, whatever their argument (table_info(runs), integrity_check(10), ...)
_READ_PRAGMAS = frozenset({
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
    "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check", "database_list",
    "collation_list", "function_list", "module_list", "pragma_list", "compile_options"})
# pragmas that read without an argument and set something with one
_SETTING_PRAGMAS = frozenset({
    "user_version", "application_id", "schema_version", "page_count", "page_size",
    "freelist_count", "encoding", "journal_mode", "data_version", "auto_vacuum",
    "foreign_keys", "query_only", "busy_timeout", "cache_size", "synchronous",
    "read_uncommitted"})  # SQLAlchemy asks it on connecting


def _reads(pragma: str | None, argument: str | None) -> bool:
    name = (pragma or "").lower()
    return name in _READ_PRAGMAS or (argument is None and name in _SETTING_PRAGMAS)


def _action_name(action: int, arg1: str | None, arg2: str | None) -> str:
    """What a denied action is, for 'this one needs ...'."""
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return "ATTACH or VACUUM, which would open or create another file"
    if action == sqlite3.SQLITE_PRAGMA:
        return f"PRAGMA {arg1}" + (" with a value" if arg2 is not None else "")
    name = next((n for n in _ACTION_NAMES if getattr(sqlite3, f"SQLITE_{n}", None) == action),
                f"SQLite action {action}").replace("_", " ")
    if action in (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE):
        if arg1 in _SCHEMA_TABLES:
            return "a change to the schema (CREATE, DROP or ALTER)"
        return f"{name} on table {arg1}"
    return name


_ACTION_NAMES = ("INSERT", "UPDATE", "DELETE", "CREATE_TABLE", "CREATE_INDEX", "CREATE_VIEW",
                 "CREATE_TRIGGER", "CREATE_TEMP_TABLE", "CREATE_TEMP_INDEX", "CREATE_TEMP_VIEW",
                 "CREATE_TEMP_TRIGGER", "CREATE_VTABLE", "DROP_TABLE", "DROP_INDEX", "DROP_VIEW",
                 "DROP_TRIGGER", "DROP_TEMP_TABLE", "DROP_TEMP_INDEX", "DROP_TEMP_VIEW",
                 "DROP_TEMP_TRIGGER", "DROP_VTABLE", "ALTER_TABLE", "REINDEX", "ANALYZE",
                 "SAVEPOINT")


_CANNOT_OPEN = ("SQLITE_CANTOPEN", "SQLITE_READONLY_DIRECTORY", "SQLITE_READONLY_CANTINIT",
                "SQLITE_READONLY_RECOVERY")


def _open_problem(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlite_errorname", "") in _CANNOT_OPEN:
        return (f"cannot open it read-only ({orig}): its write-ahead log (-wal) cannot be read "
                "where it is; copy the database with its -wal and -shm files somewhere writable")
    return describe(exc)


def read_only_query(engine: Engine, sql: str, params: Mapping[str, Any] | None = None,
                    where: str = "database") -> QueryResult:
    """Run one SQL statement that must not write; stream its rows. Writes fail with a
    ``StorageError`` saying the query was refused; a wrong statement with a ``QueryError``."""
    if not sql.strip():
        raise QueryError(where, "empty query")
    try:
        conn = engine.connect()
        denied = getattr(_driver(conn), "denied", None)
    except SQLAlchemyError as exc:
        raise StorageError(where, _open_problem(exc)) from exc
    if denied is not None:
        denied.what = None  # what SQLAlchemy's own statements were refused, if any, is not news
    postgresql = engine.dialect.name == "postgresql"
    try:
        if postgresql:  # belt and braces with postgresql_readonly
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        try:
            result = conn.execute(text(sql), params or {},
                                  execution_options={"yield_per": STREAM_ROWS})
        except DBAPIError as exc:
            # PostgreSQL streams through a server-side cursor (DECLARE ... CURSOR FOR), which
            # takes only SELECT/VALUES: run anything else (EXPLAIN, SHOW; writes, which the
            # READ ONLY transaction then refuses) again with an ordinary, buffered cursor.
            if not (postgresql and getattr(exc.orig, "sqlstate", None) in _NOT_DECLARABLE):
                raise
            conn.rollback()
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            found, buffered = _pg_one_statement(conn, sql, params)
            if found is None:
                raise QueryError(where, _NO_ROWS) from None
            conn.close()
            return QueryResult(found, iter(buffered))
        if not result.returns_rows:
            raise QueryError(where, _NO_ROWS)
        columns = tuple(result.keys())
    except SQLAlchemyError as exc:
        failure = _failure(where, exc, conn)
        conn.close()
        raise failure from exc
    except BaseException:
        conn.close()
        raise

    def rows() -> Iterator[tuple[Any, ...]]:
        try:
            for row in result:
                yield tuple(row)
        except SQLAlchemyError as exc:
            raise _failure(where, exc, conn) from exc
        finally:
            conn.close()

    return QueryResult(columns, rows())


def _pg_one_statement(conn: Connection, sql: str, params: Mapping[str, Any] | None
                      ) -> tuple[tuple[str, ...] | None, list[tuple[Any, ...]]]:
    """Run ``sql`` on PostgreSQL with the extended protocol, which takes exactly one statement
    (the simple protocol would run ``COMMIT; DELETE ...`` outside the read-only transaction),
    and return its columns (``None``: it returns no rows) and rows, buffered. Errors become
    ``DBAPIError``s."""
    import psycopg

    compiled = text(sql).compile(dialect=conn.dialect)
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    try:
        with driver.cursor() as cur:
            # binary results force the extended protocol (psycopg uses the simple one otherwise)
            cur.execute(compiled.string, compiled.construct_params(dict(params or {})),
                        binary=True)
            if cur.description is None:
                return None, []
            return (tuple(d.name for d in cur.description), [tuple(r) for r in cur.fetchall()])
    except psycopg.Error as exc:
        raise DBAPIError(None, None, exc) from exc


_NOT_DECLARABLE = ("42601", "0A000")  # syntax error; feature not supported (a write in WITH)


def _failure(where: str, exc: SQLAlchemyError, conn: Connection) -> StorageError:
    """The error ``exc`` as the user should read it: a refusal (the query would have written),
    a ``QueryError`` (the statement is wrong) or a database problem."""
    problem = describe(exc)
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlite_errorname", "") in _CANNOT_OPEN:
        return StorageError(where, _open_problem(exc))
    what = getattr(getattr(_driver(conn), "denied", None), "what", None)
    if "cannot VACUUM" in problem:  # refused before the authorizer sees its ATTACH
        what = "VACUUM, which would rewrite the database or create another file"
    if what or getattr(orig, "sqlite_errorname", None) == "SQLITE_AUTH":
        return StorageError(where, f"refused: queries are read-only, and this one needs "
                            f"{what or 'a write'}; nothing was changed or created")
    refused = _refusal(problem)
    if refused != problem:
        return StorageError(where, refused)
    sqlstate = str(getattr(orig, "sqlstate", None) or "")
    if (getattr(orig, "sqlite_errorname", None) == "SQLITE_ERROR"
            or isinstance(orig, sqlite3.ProgrammingError)  # two statements
            or sqlstate.startswith("22")  # PostgreSQL: a data exception (1/0, a bad cast)
            or (sqlstate.startswith("42") and sqlstate != "42501")):  # syntax, no such table
        return QueryError(where, problem)
    return StorageError(where, problem)


def _driver(conn: Connection) -> Any:
    try:
        return conn.connection.driver_connection
    except SQLAlchemyError:  # the connection is gone: no detail to add
        return None


def _refusal(problem: str) -> str:
    lowered = problem.lower()
    # a read-only SQLite connection answers "disk I/O error" to e.g. PRAGMA journal_mode
    if any(s in lowered for s in ("read-only", "readonly", "query_only", "read only",
                                  "disk i/o error")):
        return f"refused: queries are read-only ({problem})"
    return problem
