"""The formats of ``blockwatch export``: storage's (JSONL, CSV, Parquet) and OONI's.

OONI's format is written by the OONI stage (``blockwatch.ooni.export``), which sits above
storage; storage never imports it, so the two lists meet here, in the wiring.
"""

from __future__ import annotations

from blockwatch.ooni.export import write_ooni
from blockwatch.storage.export import FORMATS as STORAGE_FORMATS
from blockwatch.storage.export import Format

FORMATS: dict[str, Format] = {**STORAGE_FORMATS, "ooni": Format(write_ooni)}
