"""The submission format: one vantage's runs, measurements and verdicts as JSON lines.

A batch is UTF-8 JSON lines, sent compressed (``Content-Encoding: gzip`` or ``zstd``, or
none)::

    {"batch": 1, "vantage": "home-pi"}
    {"run": {...}}           the storage row of a run (docs/schema.md: runs)
    {"measurement": {...}}   a measurements row, observations included
    {"verdict": {...}}       a verdicts row (without id and created_at)

Decoding is bounded: at most ``MAX_BODY`` bytes on the wire and ``MAX_DECODED`` once
decompressed (read in chunks, so a decompression bomb stops at the limit), at most
``MAX_LINE`` a line. Every record is checked against a typed model (unknown keys are refused,
so a typo is not silently dropped); each observation must parse as one this version knows.
Anything wrong refuses the whole batch with a message naming the line and the field.
"""

from __future__ import annotations

import datetime as dt
import gzip
import math
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from blockwatch.probes.model import observation_from_dict

FORMAT = 1
MAX_BODY = 16 * 2**20
MAX_DECODED = 32 * 2**20  # a client batch of 2,000 measurements is a few MiB
MAX_LINE = 8 * 2**20
MAX_RECORDS = 50_000


class BatchError(ValueError):
    """A batch that is refused whole; ``status``: the HTTP status that says why."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def _aware(v: dt.datetime) -> dt.datetime:
    if v.tzinfo is None:
        raise ValueError("a time without a time zone")
    return v.astimezone(dt.UTC)


def _finite(v: float) -> float:
    if not math.isfinite(v) or v < 0:
        raise ValueError("must be a finite number >= 0")
    return v


UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
Id = Annotated[str, Field(pattern=UUID)]
Text = Annotated[str, Field(max_length=4096)]
Short = Annotated[str, Field(max_length=256)]
Time = Annotated[dt.datetime, AfterValidator(_aware)]
Seconds = Annotated[float, AfterValidator(_finite)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunIn(_Strict):
    id: Id
    vantage: Short
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] | None = None
    asn: Annotated[int, Field(gt=0, lt=2**32)] | None = None
    group_name: Short | None = None
    started_at: Time
    finished_at: Time | None = None
    status: Literal["running", "complete", "interrupted", "failed", "network_unavailable",
                    "crashed"]
    software_version: Short = ""
    config_hash: Short = ""
    baseline: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    control_for: Id | None = None
    control_resolvers: list[Text] | None = None
    control_vantages: list[Short] | None = None
    local_networks: list[Short] | None = None
    controls_since: Time | None = None
    controls_until: Time | None = None


class MeasurementIn(_Strict):
    id: Id
    run_id: Id
    vantage: Short
    service: Text
    category: Short | None = None
    probe: Short
    probe_version: Short
    target: Text
    target_json: dict[str, Any]
    started_at: Time
    runtime_s: Seconds
    queued_s: Seconds = 0.0
    failure: Text | None = None
    failed_operation: Short | None = None
    observations: Annotated[list[dict[str, Any]], Field(max_length=10_000)]


class VerdictIn(_Strict):
    run_id: Id
    measurement_id: Id | None = None
    service: Text
    verdict: Short
    layer: Short | None = None
    rule_id: Short
    analyzer_version: Short
    evidence: Annotated[str, Field(max_length=65_536)] = ""
    details: dict[str, Any] = {}


class ControlsQuery(_Strict):
    """What a vantage asks the collector for: a control vantage's measurements of a window."""

    since: Time
    until: Time
    services: Annotated[list[Text], Field(max_length=5000)] = []

    @model_validator(mode="after")
    def _window(self) -> ControlsQuery:
        if not self.since <= self.until <= self.since + dt.timedelta(days=31):
            raise ValueError("since must come before until, at most 31 days before")
        return self


MODELS: dict[str, type[_Strict]] = {"run": RunIn, "measurement": MeasurementIn,
                                    "verdict": VerdictIn}


@dataclass(slots=True)
class Batch:
    vantage: str
    runs: list[RunIn] = field(default_factory=list)
    measurements: list[MeasurementIn] = field(default_factory=list)
    verdicts: list[VerdictIn] = field(default_factory=list)
    duplicates: int = 0  # records sent twice, identical, in this batch (kept once)


def _chunks(body: bytes, encoding: str) -> Iterator[bytes]:
    """The decompressed body, in pieces of at most 1 MiB."""
    step = 2**20
    if encoding in ("", "identity"):
        for i in range(0, len(body), step):
            yield body[i:i + step]
    elif encoding == "gzip":
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        data = body
        while data:
            yield d.decompress(data, step)
            data = d.unconsumed_tail
            if d.eof and d.unused_data:  # a second gzip member
                rest = d.unused_data
                d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                data = rest
        yield d.flush()
    elif encoding == "zstd":
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(body)
        while piece := reader.read(step):
            yield piece
    else:
        raise BatchError(f"Content-Encoding {encoding!r}: send one of gzip, zstd or none",
                         415)


def decompress(body: bytes, encoding: str) -> bytes:
    """The decoded body, refused (413) past ``MAX_DECODED`` whatever the compression ratio."""
    if len(body) > MAX_BODY:
        raise BatchError(f"batch of {len(body)} bytes: at most {MAX_BODY} on the wire", 413)
    out = bytearray()
    try:
        for piece in _chunks(body, encoding.strip().lower()):
            out += piece
            if len(out) > MAX_DECODED:
                raise BatchError(f"batch decompresses past {MAX_DECODED} bytes: refused", 413)
    except (zlib.error, EOFError, OSError, gzip.BadGzipFile) as exc:
        raise BatchError(f"the body is not valid {encoding}: {exc}", 400) from None
    except BatchError:
        raise
    except Exception as exc:  # zstandard.ZstdError
        raise BatchError(f"the body is not valid {encoding}: {exc}", 400) from None
    return bytes(out)


def _where(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    return f"{loc}: {first['msg']}"


def parse(text: bytes) -> Batch:
    """The batch in ``text`` (decompressed JSON lines), or BatchError naming the first fault."""
    lines = text.split(b"\n")
    if len(lines) > MAX_RECORDS + 2:
        raise BatchError(f"more than {MAX_RECORDS} records in one batch", 413)
    batch: Batch | None = None
    seen: dict[tuple[str, str], Any] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE:
            raise BatchError(f"line {n}: longer than {MAX_LINE} bytes", 413)
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise BatchError(f"line {n}: not JSON ({exc})") from None
        if not isinstance(record, dict) or len(record) != (2 if batch is None else 1):
            raise BatchError(f"line {n}: expected {{\"batch\": 1, \"vantage\": ...}} first, "
                             "then one of {\"run\"|\"measurement\"|\"verdict\": {...}} a line")
        if batch is None:
            if record.get("batch") != FORMAT or not isinstance(record.get("vantage"), str):
                raise BatchError(f"line {n}: not a blockwatch batch of format {FORMAT}")
            batch = Batch(vantage=record["vantage"])
            continue
        (kind, body), = record.items()
        model = MODELS.get(kind)
        if model is None:
            raise BatchError(f"line {n}: unknown record {kind!r}")
        try:
            item = model.model_validate(body)
        except ValidationError as exc:
            raise BatchError(f"line {n}: {kind} {_where(exc)}") from None
        if isinstance(item, MeasurementIn):
            for i, o in enumerate(item.observations):
                try:
                    observation_from_dict(o)
                except (KeyError, TypeError, ValueError) as exc:
                    raise BatchError(f"line {n}: measurement {item.id} observations[{i}]: "
                                     f"not an observation this collector reads ({exc!r})"
                                     ) from None
        if isinstance(item, RunIn | MeasurementIn):
            key = (kind, item.id)
            if key in seen:
                if seen[key] != item:
                    raise BatchError(f"line {n}: {kind} {item.id} appears twice, differently")
                batch.duplicates += 1
                continue
            seen[key] = item
        getattr(batch, f"{kind}s").append(item)
    if batch is None:
        raise BatchError("an empty batch")
    return batch


def encode(vantage: str, runs: Iterable[dict[str, Any]], measurements: Iterable[dict[str, Any]],
           verdicts: Iterable[dict[str, Any]]) -> bytes:
    """JSON lines of storage rows (the client's side), gzip-compressed."""
    return encode_lines(vantage, [line(kind, r) for kind, rows in (
        ("run", runs), ("measurement", measurements), ("verdict", verdicts)) for r in rows])


def line(kind: str, row: dict[str, Any]) -> bytes:
    """One record's line of a batch (``kind``: run, measurement or verdict)."""
    return orjson.dumps({kind: row}, default=_default)


def encode_lines(vantage: str, lines: Iterable[bytes]) -> bytes:
    """A batch of records already encoded by ``line`` (runs, then measurements, then
    verdicts), gzip-compressed."""
    out = [orjson.dumps({"batch": FORMAT, "vantage": vantage}), *lines]
    return gzip.compress(b"\n".join(out) + b"\n", compresslevel=6)


def _default(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        from blockwatch.probes.model import observation_to_dict

        return observation_to_dict(value)
    raise TypeError(f"not JSON: {type(value).__name__}")
