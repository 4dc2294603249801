"""The vantage's side: a stored run as submission batches, and one submission.

``batches(store, run_id)`` reads a run back from the local database (the run, its measurements
with their observations, its verdicts) and cuts it into batches of at most ``PER_BATCH``
measurements: the first carries the run, each carries the verdicts of its measurements, the
last the service verdicts. Each batch is complete in itself, so the collector stores any of
them alone (idempotently) and they may arrive in any order after the first.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from blockwatch.collector.batch import encode
from blockwatch.storage.convert import measurement_to_row, run_to_row, verdict_to_row

PER_BATCH = 2000


def json_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in row.items()}


def batches(store: Any, run_id: str, start: int = 0) -> Iterator[bytes]:
    """The run's batches from the ``start``-th on (the earlier ones are not encoded: the
    collector has them)."""
    run = store.get_run(run_id)
    if run is None:
        raise KeyError(run_id)
    run_row = json_row(run_to_row(run))
    by_measurement: dict[str | None, list[dict[str, Any]]] = {}
    for v in store.verdicts(run_id=run.id):
        row = verdict_to_row(v, run_id=run.id, created_at=dt.datetime.now(dt.UTC))
        row.pop("created_at", None)
        by_measurement.setdefault(v.measurement_id, []).append(row)
    chunk: list[Any] = []
    index = 0

    def cut(last: bool) -> bytes:
        rows = [json_row(measurement_to_row(m)) for m in chunk]
        verdicts = [v for m in chunk for v in by_measurement.get(m.id, ())]
        if last:
            verdicts += by_measurement.get(None, [])
        return encode(run.vantage, [run_row] if index == 0 else [], rows, verdicts)

    for m in store.measurements(run_id=run.id):
        chunk.append(m)
        if len(chunk) >= PER_BATCH:
            if index >= start:
                yield cut(last=False)
            chunk, index = [], index + 1
    if index >= start:
        yield cut(last=True)
