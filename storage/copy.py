"""Rows into PostgreSQL by COPY, the bulk path PostgreSQL is built for.

An ``INSERT`` of a few hundred rows through SQLAlchemy is either one statement a row (its
executemany) or one statement with thousands of parameters, which the driver parses out of the
statement's text each time and PostgreSQL plans each time. ``COPY ... FROM STDIN`` streams the
rows instead: at the collector it took a batch of 200 measurements from 267 to 82 us a
measurement (benchmarks/collector.py). Values are converted as the column types would: JSON
columns to JSON text, datetimes to aware UTC (a naive one is refused, as everywhere).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Table
from sqlalchemy.exc import DBAPIError

from blockwatch.storage.types import ensure_utc, json_text

_JSON: dict[str, frozenset[str]] = {}


def _json_columns(table: Table) -> frozenset[str]:
    found = _JSON.get(table.name)
    if found is None:
        found = _JSON[table.name] = frozenset(
            c.name for c in table.columns if isinstance(c.type, JSON))
    return found


def without_nul(value: Any) -> Any:
    """``value`` with every NUL character in its strings (at any depth) as U+FFFD: PostgreSQL
    stores no NUL in text nor ``\\u0000`` in JSONB, and a body, a DNS name or an imported
    record from a hostile source may hold one (SQLite keeps it as sent)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_nul(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        from blockwatch.probes.model import plain

        return without_nul(plain(value))
    return value


def copy_rows(session: Any, table: Table, rows: list[dict[str, Any]], *,
              into: str | None = None) -> None:
    """COPY ``rows`` (dicts with the same keys, each a column of ``table``) into ``table`` (or
    ``into``, a table of the same columns), on the session's connection and transaction."""
    if not rows:
        return
    columns = list(rows[0])
    json_columns = _json_columns(table)
    kinds = [c in json_columns for c in columns]

    def cell(column: str, is_json: bool, value: Any) -> Any:
        if value is None:
            return None
        if is_json:
            text = json_text(value)
            return json_text(without_nul(value)) if "\\u0000" in text else text
        if isinstance(value, dt.datetime):
            return ensure_utc(value, column)
        return without_nul(value) if isinstance(value, str) else value

    names = ", ".join(f'"{c}"' for c in columns)
    sql = f'COPY "{into or table.name}" ({names}) FROM STDIN'
    conn = session.connection()
    dbapi = conn.dialect.loaded_dbapi
    raw = conn.connection.dbapi_connection
    try:
        with raw.cursor() as cursor, cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row([cell(c, k, row[c])
                                for c, k in zip(columns, kinds, strict=True)])
    except dbapi.Error as exc:  # the driver's own, as SQLAlchemy would have raised it
        gone = bool(conn.dialect.is_disconnect(exc, raw, None))
        if gone:  # the pool must not hand this connection out again
            conn.invalidate(exc)
        raise DBAPIError.instance(sql, None, exc, dbapi.Error,
                                  connection_invalidated=gone) from exc
