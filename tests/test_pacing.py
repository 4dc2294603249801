"""Our own limits (probes.pacing): waiting for them is recorded and never eats a deadline."""

from __future__ import annotations

import asyncio
import resource
import time

import pytest

from blockwatch.probes import pacing
from blockwatch.probes.pacing import Limiter, Limits, Meter


async def test_a_deadline_is_paused_while_its_measurement_queues() -> None:
    meter = Meter()
    with pacing.metering(meter):
        async with pacing.deadline(0.2):
            with pacing.waiting():
                await asyncio.sleep(0.4)  # longer than the deadline: ours, not the network's
            await asyncio.sleep(0.1)  # the network's time: 0.1 of 0.2 s
    assert 0.35 <= meter.queued < 0.6


async def test_the_network_time_still_runs_out() -> None:
    meter = Meter()
    with pacing.metering(meter), pytest.raises(TimeoutError):
        async with pacing.deadline(0.2):
            with pacing.waiting():
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)


async def test_overlapping_waits_count_once_and_unrecorded_waits_not_at_all() -> None:
    meter = Meter()

    async def wait(seconds: float, record: bool = True) -> None:
        with pacing.waiting(record):
            await asyncio.sleep(seconds)

    with pacing.metering(meter):
        await asyncio.gather(wait(0.3), wait(0.2))  # children share the meter
        await wait(0.3, record=False)  # a shared DNS answer: paused, not queued
    assert 0.25 <= meter.queued < 0.45


async def test_a_limiter_bounds_holders_and_records_the_wait() -> None:
    limiter = Limiter(1)
    meter = Meter()
    first = await limiter.acquire()

    async def second() -> None:
        with pacing.metering(meter):
            async with limiter.hold():
                pass

    task = asyncio.create_task(second())
    await asyncio.sleep(0.2)
    assert not task.done()
    first.release()
    first.release()  # idempotent
    await task
    assert 0.15 <= meter.queued < 0.4
    assert limiter.idle()


async def test_a_rate_limit_spaces_new_holders() -> None:
    limiter = Limiter(0, per_second=20)  # no bound on holders, 20 new ones a second
    started = time.monotonic()
    for _ in range(30):
        (await limiter.acquire()).release()
    # a second's worth at once (the bucket starts full), then one every 50 ms
    assert 0.45 <= time.monotonic() - started < 0.9


async def test_a_servers_limiter_is_forgotten_once_idle() -> None:
    limits = Limits(per_host=2, sockets=10)
    a = await limits.connection("192.0.2.1")
    b = await limits.connection("192.0.2.1")
    assert "192.0.2.1" in limits._hosts
    a.release()
    assert "192.0.2.1" in limits._hosts
    b.release()
    assert "192.0.2.1" not in limits._hosts


def test_the_socket_budget_follows_the_open_files_limit() -> None:
    budget = pacing.raise_fd_limit()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == hard or hard == resource.RLIM_INFINITY
    assert budget == max(16, soft - pacing.RESERVED_FDS)


async def test_a_cancelled_waiter_never_keeps_a_permit() -> None:
    limiter = Limiter(1)
    held = await limiter.acquire()
    first = asyncio.create_task(limiter.acquire())
    second = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.01)
    first.cancel()  # cancelled while waiting
    held.release()
    got = await asyncio.wait_for(second, 1.0)
    assert first.cancelled()
    # granted and cancelled in the same instant: the permit goes on to the next waiter
    third = asyncio.create_task(limiter.acquire())
    fourth = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.01)
    got.release()  # hands the permit to third ...
    third.cancel()  # ... which is cancelled before it resumes
    (await asyncio.wait_for(fourth, 1.0)).release()
    assert limiter.idle()
