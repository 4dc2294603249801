"""Storage of runs, measurements and verdicts (SQLite or PostgreSQL), migrations and exports.

    from storage import open_store
    with open_store("sqlite:///results.db") as store:
        for m in store.measurements(since=...): ...

The only package that imports SQLAlchemy. The schema is documented in docs/schema.md.
"""

from storage.db import open_store
from storage.errors import StorageError
from storage.export import CONTRACT_FIELDS, EXPORT_FIELDS, write_csv, write_jsonl
from storage.store import Store

__all__ = [
    "CONTRACT_FIELDS",
    "EXPORT_FIELDS",
    "StorageError",
    "Store",
    "open_store",
    "write_csv",
    "write_jsonl",
]
