"""Storage of runs, measurements and verdicts (SQLite or PostgreSQL), migrations and exports.

    from blockwatch.storage import open_store
    with open_store("sqlite:///results.db") as store:
        for m in store.measurements(since=...): ...

The only package that imports SQLAlchemy. The schema is documented in docs/schema.md.
Its names are imported when first used (PEP 562), so that a command that only catches
``StorageError`` does not pay for SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from blockwatch.storage.errors import StorageError

if TYPE_CHECKING:
    from blockwatch.storage.db import open_store
    from blockwatch.storage.export import CONTRACT_FIELDS, EXPORT_FIELDS, write_csv, write_jsonl
    from blockwatch.storage.store import Store

_WHERE = {"open_store": "blockwatch.storage.db", "CONTRACT_FIELDS": "blockwatch.storage.export",
          "EXPORT_FIELDS": "blockwatch.storage.export", "write_csv": "blockwatch.storage.export",
          "write_jsonl": "blockwatch.storage.export", "Store": "blockwatch.storage.store"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'blockwatch.storage' has no attribute {name!r}")


__all__ = [
    "CONTRACT_FIELDS",
    "EXPORT_FIELDS",
    "StorageError",
    "Store",
    "open_store",
    "write_csv",
    "write_jsonl",
]
