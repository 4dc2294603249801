"""Run one probe on one target: ids, timing, the overall deadline, and no exception escapes.

An unexpected exception in a probe is a bug in blockwatch or a hostile peer we did not foresee;
either way it becomes ``unknown_failure: ...`` for that one measurement, never a crashed sweep.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid

from probes.context import Probe, ProbeContext
from probes.failures import GENERIC_TIMEOUT, classify, unknown
from probes.model import Measurement, Observation, Target


def new_id() -> str:
    """A time-ordered id (UUIDv7 layout), so ids sort by creation time in the database."""
    ms = time.time_ns() // 1_000_000
    rand = uuid.uuid4().int & ((1 << 74) - 1)
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62)
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def deadline_for(ctx: ProbeContext) -> float:
    t = ctx.timeouts
    # DNS may be retried; every layer may run; a little slack for scheduling.
    return (1 + max(0, ctx.dns_retries)) * t.dns + t.tcp + t.tls + t.http + 5.0


async def run_probe(
    probe: Probe, target: Target, ctx: ProbeContext, *, run_id: str, vantage: str
) -> Measurement:
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    observations: tuple[Observation, ...] = ()
    failure: str | None
    operation: str | None
    try:
        async with asyncio.timeout(deadline_for(ctx)):
            result = await probe.observe(target, ctx)
        observations, failure, operation = result.observations, result.failure, result.operation
    except TimeoutError:
        failure, operation = GENERIC_TIMEOUT, "probe_deadline"
    except Exception as exc:
        failure = classify(exc)
        if not failure.startswith("unknown_failure"):
            failure = unknown(f"{type(exc).__name__}: {failure}")
        operation = "probe"
    return Measurement(
        id=new_id(),
        run_id=run_id,
        vantage=vantage,
        target=target,
        probe_version=probe.version,
        started_at=started,
        runtime_s=round(time.perf_counter() - t0, 6),
        observations=observations,
        failure=failure,
        failed_operation=operation,
    )
