"""Run one probe on one target: ids, timing, the overall deadline, and no exception escapes.

An unexpected exception in a probe is a bug in blockwatch or a hostile peer we did not foresee;
either way it becomes ``unknown_failure: ...`` for that one measurement, never a crashed sweep.

The overall deadline is a guard against a probe that hangs, not a measurement: it is paused
while the probe waits for our own limits (``probes.pacing``), and the time it waited is the
measurement's ``queued_s``.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Callable

from blockwatch.probes import pacing
from blockwatch.probes.context import Probe, ProbeContext
from blockwatch.probes.failures import GENERIC_TIMEOUT, classify, unknown
from blockwatch.probes.model import Measurement, Observation, Target


def new_id() -> str:
    """A time-ordered id (UUIDv7 layout), so ids sort by creation time in the database. Its 74
    random bits need to be unique, not secret: Python's generator (seeded from the OS when it
    is imported) gives them without a system call per id."""
    ms = time.time_ns() // 1_000_000
    rand = random.getrandbits(74)
    value = (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62)
    value |= rand & ((1 << 62) - 1)
    h = f"{value:032x}"  # uuid.UUID's text form, without building a UUID
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def deadline_for(ctx: ProbeContext) -> float:
    t = ctx.timeouts
    # DNS may be confirmed (asked twice); every layer may run; a little slack.
    return 2 * t.dns + t.tcp + t.tls + t.http + 5.0


async def run_probe(
    probe: Probe, target: Target, ctx: ProbeContext, *, run_id: str, vantage: str,
    on_background: Callable[[], None] | None = None,
) -> Measurement:
    """``on_background`` is called once the probe only listens (a DNS query's injection
    window): the sweep may then give its name's slot to the next name."""
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    observations: tuple[Observation, ...] = ()
    failure: str | None
    operation: str | None
    meter = pacing.Meter()
    meter.on_background = on_background
    token = pacing.METER.set(meter)
    try:
        async with meter.deadline(deadline_for(ctx)):
            result = await probe.observe(target, ctx)
        observations, failure, operation = result.observations, result.failure, result.operation
    except TimeoutError:
        failure, operation = GENERIC_TIMEOUT, "probe_deadline"
    except Exception as exc:
        failure = classify(exc)
        if not failure.startswith("unknown_failure"):
            failure = unknown(f"{type(exc).__name__}: {failure}")
        operation = "probe"
    finally:
        pacing.METER.reset(token)
    return Measurement(
        id=new_id(),
        run_id=run_id,
        vantage=vantage,
        target=target,
        probe_version=probe.version,
        started_at=started,
        runtime_s=round(time.perf_counter() - t0, 6),
        queued_s=round(meter.queued, 6),
        observations=observations,
        failure=failure,
        failed_operation=operation,
    )
