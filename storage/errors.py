"""The one exception storage raises, and how foreign errors become it.

    Exception
     └── StorageError        bad input (URL, file, schema) or database trouble (locked, full, ...)
          └── QueryError     the user's own SQL is wrong (syntax, unknown table, two statements)

Errors of SQLAlchemy, the DBAPI driver, Alembic and the OS are translated where they cross into
storage (``raise StorageError(...) from exc``), so callers catch one class. The message is one line
naming the database (password hidden) and what is wrong; the original error stays on
``__cause__`` for debugging. Programming errors (a naive datetime, a verdict without a run) stay
``ValueError``.
"""

from __future__ import annotations

import re

_PASSWORD = re.compile(r"(//[^:/@]*:)[^@/]*@")

# SQLite's own words are terse; say what the user can do about them.
_HINTS = {
    "file is not a database": "not a SQLite database (file is not a database)",
    "unable to open database file": (
        "cannot open the database file (does its directory exist and is it writable?)"
    ),
    "database is locked": "database is locked by another writer (gave up after 5 s)",
    "attempt to write a readonly database": "the database is read-only",
}


class StorageError(Exception):
    """A database could not be opened, read or written. ``where`` names it, password hidden."""

    def __init__(self, where: str, problem: str, *, disconnected: bool = False,
                 missing: bool = False) -> None:
        self.where = where
        self.problem = problem
        # the connection was lost (a server restart): the transaction rolled back, the pool
        # dropped the connection, and the same work may be tried again on a new one
        self.disconnected = disconnected
        # a read-only open found no database file: nothing has been stored there yet
        self.missing = missing
        super().__init__(f"{where}: {problem}")


class QueryError(StorageError):
    """``blockwatch query``: the statement itself is wrong (a syntax error, an unknown table or
    column, more than one statement, nothing to run): bad input, not a database problem."""


def hide_password(url: str) -> str:
    """The URL as safe to print: ``postgresql://user:***@host/db``."""
    from sqlalchemy.engine import make_url  # here, so that catching StorageError is cheap

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not even a URL: scrub what looks like a password and show the rest
        return _PASSWORD.sub(r"\1***@", url)


def describe(exc: BaseException) -> str:
    """One line saying what went wrong, without SQL, parameters or SQLAlchemy's links."""
    from sqlalchemy.exc import DBAPIError, StatementError

    cause: BaseException = exc
    if isinstance(exc, DBAPIError | StatementError) and exc.orig is not None:
        cause = exc.orig
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    text = re.sub(r"^\([\w.]+\)\s*", "", text)  # "(sqlite3.OperationalError) ..."
    for needle, hint in _HINTS.items():
        if needle in text:
            return hint
    return text
