"""The OONI stage: OONI's measurements in and out of blockwatch.

    from blockwatch.ooni import import_ooni
    report = import_ooni(store, ["2024-01-01.jsonl.gz"], catalogue)

- ``models``: OONI's data formats as typed (pydantic) models: the df-000 envelope, the
  df-001/002/005/006 test keys, web_connectivity's control; a record that does not fit is an
  ``OONIError`` naming the field;
- ``read``: OONI files (.json, .jsonl, gzip) to records, or why one was skipped;
- ``transform``: one OONI measurement to one blockwatch run, with one file per OONI test that
  needs its own handling (``TRANSFORMS``);
- ``export``: blockwatch's exported rows as OONI measurements (``export --format ooni``);
- ``importer``: read, transform, judge (``blockwatch.analysis.judge_run``) and store.

Above ``storage`` and ``analysis``: it may import ``probes``, ``analysis`` and ``storage``, and
nothing below imports it. Its names are imported when first used (PEP 562), so that writing
OONI's format does not load the analysis.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from blockwatch.ooni.export import ooni_envelope, write_ooni
    from blockwatch.ooni.importer import ImportReport, import_ooni
    from blockwatch.ooni.models import OONIError
    from blockwatch.ooni.read import Record, Skip, read_records
    from blockwatch.ooni.transform import (
        CONTROL_VANTAGE,
        IMPORT_GROUP,
        Imported,
        from_ooni,
        run_id_for,
        service_for,
    )

_WHERE = {
    "ooni_envelope": "blockwatch.ooni.export", "write_ooni": "blockwatch.ooni.export",
    "ImportReport": "blockwatch.ooni.importer", "import_ooni": "blockwatch.ooni.importer",
    "OONIError": "blockwatch.ooni.models",
    "Record": "blockwatch.ooni.read", "Skip": "blockwatch.ooni.read",
    "read_records": "blockwatch.ooni.read",
    "CONTROL_VANTAGE": "blockwatch.ooni.transform", "IMPORT_GROUP": "blockwatch.ooni.transform",
    "Imported": "blockwatch.ooni.transform", "from_ooni": "blockwatch.ooni.transform",
    "run_id_for": "blockwatch.ooni.transform", "service_for": "blockwatch.ooni.transform",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'blockwatch.ooni' has no attribute {name!r}")


__all__ = [
    "CONTROL_VANTAGE",
    "IMPORT_GROUP",
    "ImportReport",
    "Imported",
    "OONIError",
    "Record",
    "Skip",
    "from_ooni",
    "import_ooni",
    "ooni_envelope",
    "read_records",
    "run_id_for",
    "service_for",
    "write_ooni",
]
