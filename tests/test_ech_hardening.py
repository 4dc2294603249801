"""The ech probe's review (after #17): connections that never opened are no ECH evidence,
ECHConfigs a client must ignore, and the worker process's life."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import gc
import multiprocessing
import multiprocessing.context
import os
import signal
import struct
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from dns_server import Behaviour, DNSServer
from judging import judge_run
from test_ech import NEWS, context, measured

from blockwatch.probes import ech_build, pacing
from blockwatch.probes import failures as F
from blockwatch.probes.context import ProbeContext
from blockwatch.probes.ech import ECHObservation, ECHProbe, outcome
from blockwatch.probes.ech_build import BUILDER, build
from blockwatch.probes.ech_hello import ECH_VERSION, ECHConfig, parse_ech_configs
from blockwatch.probes.errors import MalformedReply
from blockwatch.probes.model import Target
from blockwatch.probes.scope import Scope


def with_connect_timeouts(m, variants: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """``m`` with the hellos of ``variants`` turned into connections that timed out."""
    obs = tuple(dataclasses.replace(o, outcome="connect_failed", failure=F.GENERIC_TIMEOUT)
                if isinstance(o, ECHObservation) and o.variant in variants else o
                for o in m.observations)
    failure, op = outcome(obs)
    return dataclasses.replace(m, observations=obs, failure=failure, failed_operation=op)


def test_ech_hellos_whose_connections_timed_out_are_no_ech_blocking() -> None:
    """The plain hello was answered; the GREASE and real hellos' connects timed out twice (a
    lossy path): no hello with ECH ever went out, so nothing says ECH is filtered. It was
    ``ech.plain_only`` (ech_blocked) because a connect timeout is generic_timeout_error."""
    m = with_connect_timeouts(measured("home", {"plain": "server_hello", "grease": "timeout",
                                                "real": "timeout"}), ("grease", "real"))
    assert m.failed_operation == "ech_hello"
    (v, service) = judge_run([m], {"news": NEWS}, [])
    assert v.verdict != "ech_blocked" and v.rule_id == "ech.no_claim", v.rule_id
    assert service.verdict != "blocked"
    # one opened and was silenced, one never opened: not every ECH hello was filtered
    m = with_connect_timeouts(measured("home", {"plain": "server_hello", "grease": "timeout",
                                                "real": "timeout"}), ("real",))
    assert judge_run([m], {"news": NEWS}, [])[0].rule_id == "ech.no_claim"
    # with a control vantage that was answered: still no claim
    control = measured("vps", {"plain": "server_hello", "grease": "server_hello"})
    m = with_connect_timeouts(measured("home", {"plain": "server_hello", "grease": "timeout"}),
                              ("grease",))
    v = judge_run([m, control], {"news": NEWS}, [], control_vantages=["vps"])[0]
    assert v.verdict != "ech_blocked", v.rule_id


# --- the worker process's life --------------------------------------------------------------


def children() -> list[int]:
    return [p.pid for p in multiprocessing.active_children()]


@pytest.fixture
def fresh_builder() -> Iterator[None]:
    """No worker left by earlier tests (the ech tests run probes on contexts never closed)."""
    BUILDER.shutdown()
    BUILDER.users = 0
    yield
    BUILDER.shutdown()
    BUILDER.users = 0


def threads() -> list[str]:
    """Threads but the event loop's default executor's (``asyncio.to_thread``)."""
    return [t.name for t in threading.enumerate() if not t.name.startswith("asyncio_")]


def sweep_ctx() -> ProbeContext:
    return ProbeContext(scope=Scope.loopback()).for_sweep()


async def test_every_sweep_end_shuts_the_worker_down(fresh_builder: None) -> None:
    """Two sweeps in one process, as the daemon runs them: each starts the worker at its
    first build and ends it in ``ctx.aclose`` (the sweep's finally), with its threads."""
    before = threads()
    for _ in range(2):
        ctx = sweep_ctx()
        hello = await build(ctx, "a.test", None)
        assert hello[:1] == b"\x16"
        assert len(children()) == 1
        await ctx.aclose()
        assert children() == [] and BUILDER.pool is None
        assert threads() == before


async def test_the_worker_ends_with_the_last_of_two_sweeps(fresh_builder: None) -> None:
    one, two = sweep_ctx(), sweep_ctx()
    await build(one, "a.test", None)
    await build(two, "a.test", None)
    await one.aclose()
    assert len(children()) == 1  # the other sweep still builds
    await build(two, "b.test", None)
    await two.aclose()
    assert children() == []


async def test_an_interrupted_sweep_ends_the_worker(fresh_builder: None) -> None:
    ctx = sweep_ctx()
    task = asyncio.ensure_future(asyncio.gather(*(build(ctx, f"{i}.test", None)
                                                  for i in range(50))))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await ctx.aclose()  # what scheduler.sweep does in its finally
    assert children() == []


async def test_ctrl_c_does_not_kill_the_worker(fresh_builder: None,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    """SIGINT reaches the whole process group at a terminal: the worker ignores it (it died
    with a KeyboardInterrupt traceback, and the pool broke under the sweep)."""
    ctx = sweep_ctx()
    await build(ctx, "a.test", None)
    (pid,) = children()
    os.kill(pid, signal.SIGINT)
    await asyncio.sleep(0.3)
    await build(ctx, "b.test", None)
    assert children() == [pid]
    await ctx.aclose()
    assert "KeyboardInterrupt" not in capfd.readouterr().err


async def test_a_dead_worker_is_replaced_once_by_concurrent_builds(fresh_builder: None) -> None:
    ctx = sweep_ctx()
    await build(ctx, "a.test", None)
    (pid,) = children()
    os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.2)
    hellos = await asyncio.gather(*(build(ctx, f"{i}.test", None) for i in range(4)))
    assert all(h[:1] == b"\x16" for h in hellos)
    assert len(children()) == 1 and children() != [pid]  # one new worker, not one per build
    await ctx.aclose()
    assert children() == []


class _NoProcess(multiprocessing.context.SpawnContext):
    class Process(multiprocessing.context.SpawnProcess):
        def start(self) -> None:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")


async def test_a_thread_builds_where_no_process_can_start(
        fresh_builder: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """ProcessPoolExecutor spawns its worker at the first submit, not when it is made: a fork
    refused there (EAGAIN) raised out of the planner and every build."""
    monkeypatch.setattr(multiprocessing, "get_context", lambda method=None: _NoProcess())
    ctx = sweep_ctx()
    assert (await build(ctx, "a.test", None))[:1] == b"\x16"
    assert children() == []
    assert any(t.name.startswith("ech-hello") for t in threading.enumerate())
    await ctx.aclose()
    assert not any(t.name.startswith("ech-hello") for t in threading.enumerate())


async def test_waiting_for_the_builder_is_our_queue_not_the_network(
        fresh_builder: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy (or starting) worker delays a hello before anything is sent: the wait is the
    measurement's queued time and pauses its deadlines (it ran the runner's deadline down)."""
    from concurrent.futures import ThreadPoolExecutor

    def slow(sni: str | None, ech: bytes | None) -> bytes:
        time.sleep(0.4)
        return b"\x16hello"

    monkeypatch.setattr(ech_build, "client_hello", slow)
    BUILDER.pool = ThreadPoolExecutor(max_workers=1)
    ctx = sweep_ctx()
    meter = pacing.Meter()
    with pacing.metering(meter):
        async with meter.deadline(0.2):  # a deadline shorter than the wait: paused
            assert await build(ctx, "a.test", None) == b"\x16hello"
    assert meter.queued >= 0.3
    await ctx.aclose()


# --- ECHConfigList: what a client must ignore (RFC 9849 section 4) --------------------------


def config_bytes(config: ECHConfig, extensions: bytes = b"", trailing: bytes = b"",
                 name: bytes | None = None) -> bytes:
    """One ECHConfig's wire form with ``extensions`` (and bytes after them), its public name
    given as bytes when ``name`` is."""
    raw = config.public_name.encode() if name is None else name
    suites = b"".join(struct.pack("!HH", *x) for x in config.suites)
    contents = (struct.pack("!BHH", config.config_id, config.kem_id, len(config.public_key))
                + config.public_key + struct.pack("!H", len(suites)) + suites
                + struct.pack("!BB", config.max_name_length, len(raw)) + raw
                + struct.pack("!H", len(extensions)) + extensions + trailing)
    return struct.pack("!HH", ECH_VERSION, len(contents)) + contents


def config_list(*items: bytes) -> bytes:
    body = b"".join(items)
    return struct.pack("!H", len(body)) + body


GOOD = ECHConfig(config_id=7, kem_id=0x20, suites=((1, 1),), public_name="public.test",
                 public_key=b"k" * 32)


@pytest.mark.parametrize("name", ["bad name", "x\x1b[31m.test", ".test", "test.", "a..b",
                                  "-a.test", "a-.test", "1.2.3.4", "host.0x1f", "a" * 64 + ".t",
                                  "caf\u00e9.test"])
def test_a_config_whose_public_name_is_no_host_name_is_ignored(name: str) -> None:
    """It was kept, terminal escapes and all, and its name sent as the real hello's SNI."""
    raw = config_bytes(dataclasses.replace(GOOD, config_id=1), name=name.encode())
    assert parse_ech_configs(config_list(raw, config_bytes(GOOD))) == [GOOD]


def test_extensions_are_read_and_a_mandatory_one_ignores_the_config() -> None:
    optional = struct.pack("!HH", 0x0A0A, 3) + b"abc"
    mandatory = struct.pack("!HH", 0x8A0A, 0)
    assert parse_ech_configs(config_list(config_bytes(GOOD, optional))) == [GOOD]
    assert parse_ech_configs(config_list(config_bytes(GOOD, mandatory),
                                         config_bytes(GOOD, optional))) == [GOOD]
    assert parse_ech_configs(config_list(config_bytes(GOOD, optional + mandatory))) == []
    for broken in (struct.pack("!HH", 1, 9) + b"x", b"\x00"):  # a length past the end
        with pytest.raises(MalformedReply):
            parse_ech_configs(config_list(config_bytes(GOOD, broken)))
    with pytest.raises(MalformedReply):  # bytes after the extensions, inside the contents
        parse_ech_configs(config_list(config_bytes(GOOD, b"", b"junk")))


# --- sockets closed on every path -----------------------------------------------------------


async def test_no_socket_outlives_a_probe_finished_or_cancelled(fresh_builder: None) -> None:
    """Garbage, a reset, silence (the retry included), each run to its end, and silence
    cancelled halfway: once the sweep's context is closed (its DNS queries listen for late
    answers until then), the file descriptors open before are all that is open after (the
    builder's worker, started first, is not counted)."""
    from servers import LoopbackServer, abort_with_reset, silent
    from test_ech import replies

    async def reset(_s: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(16384)
        abort_with_reset(writer)

    await build(sweep_ctx(), "warm.test", None)  # a sweep still on: the worker stays
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for handler, cancel in ((replies(b"garbage!", close=True), False), (reset, False),
                                (silent, False), (silent, True)):
            async with LoopbackServer(handler) as server:
                with DNSServer({"news.test": Behaviour(addresses=("127.0.0.1",))}) as dns:
                    target = Target(service="news", probe="ech", host="news.test",
                                    port=server.port, sni="news.test")
                    ctx = context(dns).for_sweep()
                    task = asyncio.ensure_future(ECHProbe().observe(target, ctx))
                    if cancel:
                        await asyncio.sleep(0.5)
                        task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    await ctx.aclose()
        gc.collect()
    assert len(os.listdir("/proc/self/fd")) == before
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


async def test_a_sweep_starting_while_the_last_one_shuts_the_worker_down(
        fresh_builder: None) -> None:
    """The worker was let go only once its shutdown had finished, in a thread: a sweep
    building meanwhile met the pool shutting down (RuntimeError out of the probe)."""
    one = sweep_ctx()
    await build(one, "a.test", None)
    closing = asyncio.ensure_future(one.aclose())
    await asyncio.sleep(0)  # the shutdown has begun
    two = sweep_ctx()
    assert (await build(two, "b.test", None))[:1] == b"\x16"
    await closing
    await two.aclose()
    assert children() == []


async def test_a_hello_that_could_not_be_built_is_our_failure(
        fresh_builder: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing was sent: the measurement fails at ``probe`` (probe.bug, an error of ours), not
    as a hello the network left unanswered (it was tls_handshake, for the tls rules)."""
    from concurrent.futures import ThreadPoolExecutor

    def refuse(sni: str | None, ech: bytes | None) -> bytes:
        raise ValueError("label too long")

    monkeypatch.setattr(ech_build, "client_hello", refuse)
    BUILDER.pool = ThreadPoolExecutor(max_workers=1)
    with DNSServer({"news.test": Behaviour(addresses=("127.0.0.1",))}) as dns:
        ctx = context(dns).for_sweep()
        target = Target(service="news", probe="ech", host="news.test", port=9, sni="news.test")
        result = await ECHProbe().observe(target, ctx)
        await ctx.aclose()
    assert result.operation == "probe" and "ClientHello not built" in (result.failure or "")
    hellos = [o for o in result.observations if isinstance(o, ECHObservation)]
    assert hellos and all(o.outcome == "not_built" for o in hellos)
    m = dataclasses.replace(measured("home", {"plain": "server_hello"}),
                            observations=tuple(hellos), failure=result.failure,
                            failed_operation=result.operation)
    v = judge_run([m], {"news": NEWS}, [])[0]
    assert (v.rule_id, v.verdict) == ("probe.bug", "error")


def test_planning_starts_no_worker(fresh_builder: None) -> None:
    """The worker starts with a sweep's first build, not while the sweep is planned: a sweep
    that never builds (its network down: nothing is probed) never joins it, so nothing would
    shut down a worker the planner had started, and an idle process stayed behind."""
    from blockwatch.probes.ech import plan_targets
    from blockwatch.probes.targets import PlanContext

    assert plan_targets(NEWS, PlanContext())
    assert BUILDER.pool is None and children() == []
