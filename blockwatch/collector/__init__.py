"""The collector: many vantages submit their runs over HTTP(S) into one database (issue #14).

``tokens``: a vantage's access (a random 256-bit secret shown once, stored as its SHA-256; the
token fixes the vantage's name, country and ASN). ``batch``: the wire format (JSON lines,
gzip or zstd), decoded with bounded memory and checked against typed models. ``ingest``:
a batch stored in one transaction, idempotently (runs and measurements keyed by their
time-ordered ids), committed before the answer (its SQL in ``storage.collector``). ``outbox``
and ``client``: the vantage's side. ``app``: the ASGI service (Starlette, served
by uvicorn) that never stores, logs or answers with a client's address.
"""
