"""The one dialer (probes.dial) against real loopback sockets: RFC 8305 interleaving, the scope
before any socket, our queue outside the connect timeout, the source address, SOCKS5 failures
split between our proxy and the target, and the probes and the baseline that now use it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trustme
from servers import LoopbackServer, SocksBehaviour, blackhole_port, refusing_port, silent, socks5

from blockwatch.probes import failures as F
from blockwatch.probes import pacing, pptp
from blockwatch.probes.catalogue import parse_endpoint
from blockwatch.probes.context import Lookup, ProbeContext, Timeouts
from blockwatch.probes.dial import Dialer, interleave
from blockwatch.probes.errors import OutOfScopeError, ProxyConnectError, SocksReplyError
from blockwatch.probes.model import Target, TCPObservation, VPNObservation
from blockwatch.probes.pacing import Limits
from blockwatch.probes.runner import run_probe
from blockwatch.probes.scope import Scope
from blockwatch.probes.socks import parse_proxy
from blockwatch.probes.tcp import TCPProbe
from blockwatch.probes.tor import TorProbe
from blockwatch.scheduler.baseline import check_baseline

FAST = Timeouts(dns=0.5, tcp=0.5, tls=1.0, http=1.0)


@contextmanager
def dropping(host: str, port: int) -> Iterator[None]:
    """``host:port`` drops SYNs: a listener with a full backlog (0) that never accepts."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind((host, port))
        listener.listen(0)
        filler.connect((host, port))
        yield


def test_interleave_alternates_families_from_the_first_address() -> None:
    assert interleave(("1.1.1.1", "1.0.0.1", "2606::1", "2606::2", "2606::3")) == (
        "1.1.1.1", "2606::1", "1.0.0.1", "2606::2", "2606::3")
    assert interleave(("2606::1", "1.1.1.1", "1.0.0.1")) == ("2606::1", "1.1.1.1", "1.0.0.1")
    assert interleave(("1.1.1.1", "1.0.0.1")) == ("1.1.1.1", "1.0.0.1")


async def test_race_tries_the_other_family_second() -> None:
    # 127.0.0.2 drops; 127.0.0.1 and ::1 both accept. In the resolver's order the IPv4 twin
    # would be next; interleaved, IPv6 is, 0.25 s after the first attempt.
    with socket.socket() as v4, socket.socket(socket.AF_INET6) as v6:
        v4.bind(("127.0.0.1", 0))
        v4.listen(8)
        port = v4.getsockname()[1]
        v6.bind(("::1", port))
        v6.listen(8)
        with dropping("127.0.0.2", port):
            started = time.monotonic()
            conn = await Dialer(Scope.loopback()).race(("127.0.0.2", "127.0.0.1", "::1"), port,
                                                       5.0)
            took = time.monotonic() - started
            conn.close()
    assert conn.address == "::1"
    assert 0.2 <= took < 0.5


async def test_race_raises_the_first_addresss_error() -> None:
    with refusing_port() as port:
        dialer = Dialer(Scope.from_entries(["127.0.0.1/32"]))
        with pytest.raises(OutOfScopeError):
            await dialer.race(("127.0.0.2", "127.0.0.1"), port, 1.0)
        with pytest.raises(ConnectionRefusedError):
            await dialer.race(("127.0.0.1", "127.0.0.2"), port, 1.0)


async def test_the_scope_comes_before_any_socket() -> None:
    async with LoopbackServer(silent) as server:
        with pytest.raises(OutOfScopeError):
            await Dialer(Scope.from_entries(["10.0.0.0/8"])).connect("127.0.0.1", server.port, 1)
        await asyncio.sleep(0.05)
    assert server.accepted == 0


async def test_our_queue_is_not_part_of_the_connect_timeout() -> None:
    limits = Limits(per_host=1)
    async with LoopbackServer(silent) as server:
        dialer = Dialer(Scope.loopback(), limits=limits)
        held = await limits.connection("127.0.0.1")  # the only connection to the address
        meter = pacing.Meter()
        with pacing.metering(meter):
            waiting = asyncio.create_task(dialer.connect("127.0.0.1", server.port, 0.2))
        await asyncio.sleep(0.5)  # longer than the connect timeout
        assert not waiting.done()
        held.release()
        conn = await waiting
        conn.close()
    assert meter.queued >= 0.45
    assert limits._hosts == {}  # every share given back


async def test_source_address_of_the_same_family_only() -> None:
    async with LoopbackServer(silent) as v4, LoopbackServer(silent, host="::1") as v6:
        dialer = Dialer(Scope.loopback(), source_address="127.0.0.2")
        (await dialer.connect("127.0.0.1", v4.port, 1.0)).close()
        (await dialer.connect("::1", v6.port, 1.0)).close()  # not bound: another family
        await asyncio.sleep(0.05)
    assert v4.peers == ["127.0.0.2"] and v6.peers == ["::1"]


# --- SOCKS5: our proxy's failures apart from the target's --------------------------------------


def through(port: int) -> Dialer:
    return Dialer(Scope.loopback(), proxy=parse_proxy(f"socks5://127.0.0.1:{port}"))


async def test_tunnel_failures_of_our_proxy_and_of_the_target() -> None:
    with refusing_port() as port, pytest.raises(ProxyConnectError) as refused:
        await through(port).tunnel("127.0.0.1", "example.test", 443, 0.3)
    assert isinstance(refused.value.__cause__, ConnectionRefusedError)
    with blackhole_port() as port, pytest.raises(ProxyConnectError) as silent_proxy:
        await through(port).tunnel("127.0.0.1", "example.test", 443, 0.3)
    assert F.classify(silent_proxy.value) == F.GENERIC_TIMEOUT
    async with LoopbackServer(socks5(SocksBehaviour(reply=0x05))) as proxy:
        with pytest.raises(SocksReplyError):
            await through(proxy.port).tunnel("127.0.0.1", "example.test", 443, 0.3)


async def _close_after_greeting(_s: LoopbackServer, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
    await reader.readexactly(3)  # version, one method, no authentication
    writer.write(b"\x05")  # half a reply, then gone
    await writer.drain()


@contextlib.asynccontextmanager
async def _closing_proxy() -> AsyncIterator[tuple[int, Timeouts]]:
    async with LoopbackServer(_close_after_greeting) as proxy:
        yield proxy.port, FAST


@contextlib.asynccontextmanager
async def _silent_proxy() -> AsyncIterator[tuple[int, Timeouts]]:
    with blackhole_port() as port:
        yield port, Timeouts(tcp=0.3)


@pytest.mark.parametrize("probe", ["tcp", "http"])
@pytest.mark.parametrize(("proxy", "failure"), [
    (_closing_proxy, F.EOF_ERROR),  # closes mid-negotiation: EOF on our side
    (_silent_proxy, F.GENERIC_TIMEOUT),  # never answers: our side too
])
async def test_a_broken_proxy_is_our_side(probe: str, proxy: Any, failure: str) -> None:
    from blockwatch.probes.http import HTTPProbe

    async with proxy() as (port, timeouts):
        ctx = ProbeContext(scope=Scope.loopback(), timeouts=timeouts,
                           proxy=f"socks5://127.0.0.1:{port}")
        if probe == "tcp":
            result = await TCPProbe().observe(
                Target(service="s", probe="tcp", host="example.test", port=443), ctx)
        else:
            result = await HTTPProbe().observe(
                Target(service="s", probe="http", host="example.test",
                       url="http://example.test/"), ctx)
    assert (result.failure, result.operation) == (failure, "proxy_connect")


async def test_tcp_probe_measures_every_address_without_racing() -> None:
    async with LoopbackServer(silent) as server:
        with dropping("127.0.0.2", server.port):
            ctx = ProbeContext(scope=Scope.loopback(), timeouts=FAST)
            ctx.static_lookups["example.test"] = Lookup(("127.0.0.2", "127.0.0.1"))
            result = await TCPProbe().observe(
                Target(service="s", probe="tcp", host="example.test", port=server.port), ctx)
    dropped, up = (o for o in result.observations if isinstance(o, TCPObservation))
    assert (dropped.address, dropped.failure) == ("127.0.0.2", F.GENERIC_TIMEOUT)
    assert (up.address, up.failure) == ("127.0.0.1", None)


# --- the VPN probes over TCP and the baseline, now through the dialer ------------------------


def tor_server() -> ssl.SSLContext:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("www.randomrelayname.net").configure_cert(server_ctx)
    return server_ctx


async def test_tor_races_the_addresses_and_binds_the_source_address() -> None:
    async with LoopbackServer(silent, tls=tor_server()) as relay:
        with refusing_port("127.0.0.3", relay.port):
            ctx = ProbeContext(scope=Scope.loopback(), timeouts=FAST,
                               source_address="127.0.0.2")
            ctx.static_lookups["relay.test"] = Lookup(("127.0.0.3", "127.0.0.1"))
            result = await TorProbe().observe(
                Target(service="vpn", probe="tor", host="relay.test", port=relay.port), ctx)
    vpn = next(o for o in result.observations if isinstance(o, VPNObservation))
    assert (vpn.result, vpn.address, result.failure) == ("reachable", "127.0.0.1", None)
    assert relay.peers == ["127.0.0.2", "127.0.0.2"]  # the connect test, then the handshake


async def test_vpn_over_tcp_sends_nothing_when_no_address_is_in_scope() -> None:
    async with LoopbackServer(silent) as server:
        ctx = ProbeContext(scope=Scope.from_entries(["10.0.0.0/8"]), timeouts=FAST)
        result = await pptp.PPTPProbe().observe(
            Target(service="vpn", probe="pptp", host="127.0.0.1", port=server.port), ctx)
        await asyncio.sleep(0.05)
    vpn = next(o for o in result.observations if isinstance(o, VPNObservation))
    assert (vpn.result, result.failure) == ("not_sent", F.OUT_OF_SCOPE)
    assert server.accepted == 0


async def test_pptp_waits_for_our_limits_outside_its_timeout() -> None:
    limits = Limits(per_host=1)
    async with LoopbackServer(silent) as server:
        ctx = ProbeContext(scope=Scope.loopback(), timeouts=Timeouts(tcp=0.3), limits=limits,
                           source_address="127.0.0.2")
        held = await limits.connection("127.0.0.1")
        task = asyncio.create_task(run_probe(
            pptp.PPTPProbe(), Target(service="vpn", probe="pptp", host="127.0.0.1",
                                     port=server.port), ctx, run_id="r", vantage="v"))
        await asyncio.sleep(0.6)  # twice the timeout, in our own queue
        assert server.accepted == 0
        held.release()
        m = await task
    # the silent server's timeout, not our queue's: the SCCRQ went out and nothing came back
    assert (m.failure, m.queued_s >= 0.55) == (F.GENERIC_TIMEOUT, True)
    assert server.peers == ["127.0.0.2"]


async def test_baseline_uses_the_source_address() -> None:
    async with LoopbackServer(silent) as server:
        found = await check_baseline([parse_endpoint(f"127.0.0.1:{server.port}")],
                                     Scope.loopback(), limit=1.0, source_address="127.0.0.2")
        await asyncio.sleep(0.05)
    assert found.status == "up" and server.peers == ["127.0.0.2"]
