"""The export query's rows as Arrow record batches read straight from SQLite, for Parquet.

Where the time went (py-spy, ``export --format parquet`` of 5.6 million measurements): about a
quarter in SQLite, the rest in Python: SQLite's values made into Python objects (a string per
cell, 20 cells a row), the garbage collector walking them, and Arrow turning them back into
columns. The ADBC SQLite driver (``adbc-driver-sqlite``, in the ``parquet`` extra) fills
Arrow's columns from SQLite's C API directly, with no Python object per value.

Guarantees:

- Same rows, same order, same values as ``export_batches``'s SQLAlchemy path (a test compares
  the two): the query is the one SQLAlchemy builds, compiled for SQLite, with its parameters.
- The read happens in a child process (``python -m blockwatch.storage.arrow_read``), which
  sends Arrow's IPC stream through a pipe: the driver links its own copy of SQLite, and two
  copies of SQLite in one process must not open the same file (closing one copy's file would
  drop the other's POSIX locks: https://www.sqlite.org/howtocorrupt.html, 2.2.1). The file is
  opened ``mode=ro`` (``immutable=1`` where ``read_only_engine`` would say so): nothing is
  written. The child reads while the parent writes Parquet, on two cores where there are.
- Memory stays a few batches: the pipe holds the child back while the parent writes.
- The driver infers each column's type from its first batch (a column of NULLs would be taken
  for integers, and a later string refused): the query's first row is therefore a typed
  sentinel (``''``, ``0.0``, ``0``) that sorts before every measurement (``started_at`` is
  never empty) and that the child checks and drops.
- A failure of the child (a locked or damaged file, a driver error) is a ``StorageError``
  carrying its message; text that is not UTF-8 is refused, as the ``sqlite3`` path refuses it.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine, Select, column, literal_column, select, union_all

from blockwatch.storage.errors import StorageError
from blockwatch.storage.types import format_utc

# the sentinel's value of each type (see the guarantees); strings for the other columns
_SENTINEL = {"runtime_s": "0.0", "queued_s": "0.0", "asn": "0"}
_STDERR_LIMIT = 4000


def available(engine: Engine) -> bool:
    """The driver is installed and the engine reads an SQLite file (not ``:memory:``)."""
    return (engine.dialect.name == "sqlite" and _database_file(engine) is not None
            and importlib.util.find_spec("adbc_driver_sqlite") is not None)


def _database_file(engine: Engine) -> Path | None:
    path = engine.url.database or ""
    if path in ("", ":memory:") or engine.url.query.get("mode") == "memory":
        return None
    file = Path(path)
    return file.resolve() if file.is_file() else None


def record_batches(engine: Engine, where: str, stmt: Select[Any], order: Sequence[str],
                   fields: Sequence[str], size: int) -> Iterator[Any]:
    """``stmt``'s rows (its columns labelled ``fields``, without ORDER BY) ordered by the
    labels ``order``, as ``pyarrow.RecordBatch`` es of at most ``size`` rows, with the values
    as SQLite stores them (``started_at`` the ISO text)."""
    import pyarrow as pa

    from blockwatch.storage.readonly import _unchangeable

    file = _database_file(engine)
    if file is None:
        raise StorageError(where, "no database file to read")
    uri = f"file:{urllib.parse.quote(str(file))}?mode=ro"
    if _unchangeable(file):
        uri += "&immutable=1"
    sentinel: list[Any] = [literal_column(_SENTINEL.get(name, "''")).label(name) for name in fields]
    query = union_all(select(*sentinel), stmt).order_by(*(column(name) for name in order))
    compiled = query.compile(dialect=engine.dialect,
                             compile_kwargs={"render_postcompile": True})
    params = [_bind(compiled.params[name]) for name in compiled.positiontup or ()]
    request = json.dumps({"uri": uri, "sql": compiled.string, "params": params,
                          "rows": size})
    with tempfile.TemporaryFile() as errors:
        child = subprocess.Popen([sys.executable, "-m", "blockwatch.storage.arrow_read"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors)
        assert child.stdin is not None and child.stdout is not None
        try:
            try:
                child.stdin.write(request.encode())
                child.stdin.close()
                for batch in pa.ipc.open_stream(child.stdout):
                    try:
                        batch.validate(full=True)  # UTF-8 among others, as sqlite3 checks it
                    except pa.ArrowInvalid as exc:
                        raise StorageError(where, f"a text in the database is not valid UTF-8 "
                                                  f"or a value is damaged ({exc})") from None
                    yield batch
            except (pa.ArrowInvalid, OSError) as exc:  # the child is gone, or its stream broke
                raise StorageError(where, _failure(child, errors) or
                                   f"the export's reader stopped: {exc}") from None
            if (said := _failure(child, errors)) is not None:
                raise StorageError(where, said)
        finally:
            if child.poll() is None:  # the caller stopped early, or the stream broke off
                child.kill()
                child.wait()
            child.stdout.close()


def _failure(child: subprocess.Popen[bytes], errors: IO[bytes]) -> str | None:
    """What the child said if it failed (it has ended, or ends within seconds), else None."""
    try:
        status = child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return None
    if status == 0:
        return None
    errors.seek(0)
    said = errors.read()[-_STDERR_LIMIT:].decode("utf-8", "replace").strip()
    return f"the export's reader failed: {said or f'exit status {status}'}"


def _bind(value: Any) -> Any:
    """A parameter as SQLite stores it (instants as ``types.format_utc`` text)."""
    return format_utc(value) if isinstance(value, dt.datetime) else value


class _Out:
    """A pipe written with ``os.write`` until every byte is out. (``sys.stdout.buffer`` lost
    data when the child was stopped and continued, as Ctrl-Z and ``fg`` do: a test sends
    SIGSTOP and SIGCONT.)"""

    closed = False

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = view.nbytes
        while view:
            view = view[os.write(self.fd, view):]
        return size

    def flush(self) -> None:
        pass


def _child() -> int:
    """Read a request (JSON on stdin), run it with the ADBC driver, write Arrow's IPC stream of
    its rows but the first (the sentinel) to stdout; an error is a message on stderr and exit
    status 1."""
    request = json.loads(sys.stdin.read())
    try:
        import adbc_driver_sqlite.dbapi as adbc
        import pyarrow as pa

        with adbc.connect(request["uri"]) as conn, conn.cursor() as cur:
            cur.adbc_statement.set_options(
                **{"adbc.sqlite.query.batch_rows": str(request["rows"])})
            cur.execute(request["sql"], request["params"] or None)
            reader = cur.fetch_record_batch()
            with pa.ipc.new_stream(_Out(sys.stdout.fileno()), reader.schema) as out:
                first = True
                for batch in reader:
                    if first:  # the sentinel: '' or 0 in every column
                        row = batch.slice(0, 1).to_pylist()
                        if not row or any(v not in ("", 0) for v in row[0].values()):
                            raise ValueError("the query's first row is not the sentinel")
                        batch, first = batch.slice(1), False
                    if batch.num_rows:
                        out.write_batch(batch)
    except BrokenPipeError:
        return 1  # the parent stopped reading
    except Exception as exc:  # every failure is reported to the parent
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child())
