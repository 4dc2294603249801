"""The vantage's side: a stored run as submission batches, and one submission.

``batches(store, run_id)`` reads a run back from the local database (the run, its measurements
with their observations, its verdicts) and cuts it into batches of at most ``PER_BATCH``
measurements and about ``PER_BATCH_BYTES`` of them as JSON (TLS observations carry certificate
chains: 2,000 measurements of many handshakes would pass the collector's ``MAX_DECODED``, and
a batch it refuses for its size would be refused at every retry): the first carries the run,
each carries the verdicts of its measurements, the last the service verdicts. Each batch is
complete in itself, so the collector stores any of them alone (idempotently) and they may arrive
in any order after the first.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

from blockwatch.collector.batch import encode_lines, line
from blockwatch.storage.convert import measurement_to_row, run_to_row, verdict_to_row

PER_BATCH = 2000
PER_BATCH_BYTES = 8 * 2**20  # a quarter of batch.MAX_DECODED: the run and verdicts fit beside


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
    chunk: list[tuple[str, bytes]] = []  # (measurement id, its line): encoded once
    index = 0
    size = 0

    def cut(last: bool) -> bytes:
        verdicts = [v for mid, _ in chunk for v in by_measurement.get(mid, ())]
        if last:
            verdicts += by_measurement.get(None, [])
        return encode_lines(run.vantage, [
            *([line("run", run_row)] if index == 0 else []), *(x for _, x in chunk),
            *(line("verdict", v) for v in verdicts)])

    for m in store.measurements(run_id=run.id):
        encoded = line("measurement", json_row(measurement_to_row(m)))
        chunk.append((m.id, encoded))
        size += len(encoded)
        if len(chunk) >= PER_BATCH or size >= PER_BATCH_BYTES:
            if index >= start:
                yield cut(last=False)
            chunk, index, size = [], index + 1, 0
    if index >= start:
        yield cut(last=True)
