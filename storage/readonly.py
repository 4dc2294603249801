"""The user's own SQL, read-only (``blockwatch query``): an engine that cannot write, and one
statement's rows streamed from it.

Guarantees:

- ``read_only_query`` cannot write: SQLite is opened with ``mode=ro`` and ``query_only``,
  PostgreSQL runs the statement in a ``READ ONLY`` transaction, one statement only (a
  ``COMMIT; DELETE ...`` cannot step outside it). Any error is a ``StorageError``.
- Rows are streamed (``STREAM_ROWS`` at a time): memory stays flat however many rows.
- Opening a database here runs no migration: the file is not touched.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from blockwatch.storage.db import create_engine_for, parse_url
from blockwatch.storage.errors import StorageError, describe, hide_password
from blockwatch.storage.queries import STREAM_ROWS

_NO_ROWS = ("the statement returned no rows (only SELECT-like queries are allowed; nothing was "
            "changed)")


@dataclass(frozen=True, slots=True)
class QueryResult:
    """Column names, then rows streamed from one read-only transaction (iterate once)."""

    columns: tuple[str, ...]
    rows: Iterator[tuple[Any, ...]]


def read_only_engine(url: str) -> Engine:
    """An engine that cannot write: SQLite opened ``mode=ro`` with ``query_only``; PostgreSQL
    sessions default to read-only transactions. No migration runs (the file is not touched)."""
    where = hide_password(url)
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database or ""
        if path in ("", ":memory:"):
            raise StorageError(where, "an in-memory database has nothing to query")
        import pathlib
        import urllib.parse

        file = pathlib.Path(path)
        if not file.is_file():
            raise StorageError(where, f"no database file at {file}")
        uri = f"file:{urllib.parse.quote(str(file.resolve()))}?mode=ro"
        engine = create_engine("sqlite://", creator=lambda: _sqlite_ro(uri))
        return engine
    engine = create_engine_for(url)
    return engine.execution_options(postgresql_readonly=True)


def _sqlite_ro(uri: str) -> Any:
    import sqlite3

    conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
    conn.execute("PRAGMA query_only = ON")
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def read_only_query(engine: Engine, sql: str, params: Mapping[str, Any] | None = None,
                    where: str = "database") -> QueryResult:
    """Run one SQL statement that must not write; stream its rows. Writes fail with a
    ``StorageError`` saying the query was refused."""
    if not sql.strip():
        raise StorageError(where, "empty query")
    conn = engine.connect()
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
                raise StorageError(where, _NO_ROWS) from None
            conn.close()
            return QueryResult(found, iter(buffered))
        if not result.returns_rows:
            raise StorageError(where, _NO_ROWS)
        columns = tuple(result.keys())
    except SQLAlchemyError as exc:
        conn.close()
        raise StorageError(where, _refusal(describe(exc))) from exc
    except BaseException:
        conn.close()
        raise

    def rows() -> Iterator[tuple[Any, ...]]:
        try:
            for row in result:
                yield tuple(row)
        except SQLAlchemyError as exc:
            raise StorageError(where, _refusal(describe(exc))) from exc
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


def _refusal(problem: str) -> str:
    lowered = problem.lower()
    # a read-only SQLite connection answers "disk I/O error" to e.g. PRAGMA journal_mode
    if any(s in lowered for s in ("read-only", "readonly", "query_only", "read only",
                                  "disk i/o error")):
        return f"refused: queries are read-only ({problem})"
    return problem
