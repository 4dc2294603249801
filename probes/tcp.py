"""The TCP connect probe, and the dialing that the TLS probe builds on.

Guarantees:

- Every address a name resolves to (IPv4 and IPv6) is tried, concurrently, and each attempt is
  one ``TCPObservation``; the measurement fails only if every address failed.
- The scope is checked before any socket is opened: an out-of-scope address is recorded as
  ``out_of_scope`` and no packet is sent to it.
- With a SOCKS5 proxy (``ctx.proxy``) the name is resolved by the proxy: one observation whose
  address is the name itself. A proxy that cannot be reached or misbehaves fails with operation
  ``proxy_connect`` (our side, not the target); a target the proxy cannot reach fails with
  ``connect``, like a direct connection would.
- Times (``t0``, ``t``) are seconds since the probe started observing the target.
- A connection first takes its share of our limits (connections per server address, sockets),
  then starts its timeout: the time spent waiting for our own limits is never a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from dataclasses import dataclass

from blockwatch.probes.context import ProbeContext, ProbeResult
from blockwatch.probes.failures import DNS_NO_ANSWER, classify
from blockwatch.probes.model import DNSObservation, Observation, Target, TCPObservation
from blockwatch.probes.pacing import NO_SLOT, Slot
from blockwatch.probes.scope import OutOfScopeError
from blockwatch.probes.socks import SocksProxy, SocksReplyError, parse_proxy
from blockwatch.probes.socks import open_connection as socks_open_connection

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Clock:
    """Seconds since the probe started, rounded to microseconds."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    def __call__(self) -> float:
        return round(time.perf_counter() - self._start, 6)


@dataclass(frozen=True, slots=True)
class Route:
    """One way to reach the target: a resolved address, or the name through the proxy."""

    address: str  # the IP connected to, or the host name when the proxy resolves it
    port: int
    proxy: SocksProxy | None = None
    proxy_address: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """The routes to try, the DNS facts behind them, or why there are none."""

    routes: tuple[Route, ...]
    dns: tuple[DNSObservation, ...] = ()
    failure: str | None = None
    operation: str | None = None


@dataclass(frozen=True, slots=True)
class Dialed:
    """The outcome of one connection attempt; ``streams`` is set when it succeeded (and
    ``slot``, its share of our limits, is given back by ``close``)."""

    observation: TCPObservation
    streams: Streams | None = None
    operation: str | None = None  # which operation failed, when it failed
    slot: Slot = NO_SLOT


async def plan(host: str, port: int, ctx: ProbeContext) -> Plan:
    """Resolve ``host`` (or the proxy's address) into the routes a probe should try."""
    if ctx.proxy:
        proxy = parse_proxy(ctx.proxy)
        found = await ctx.lookup(proxy.host)
        if found.failure or not found.addresses:
            return Plan((), failure=found.failure or DNS_NO_ANSWER, operation="proxy_connect")
        return Plan((Route(host, port, proxy, found.addresses[0]),))
    found = await ctx.lookup(host)
    if found.failure or not found.addresses:
        return Plan((), found.observations, found.failure or DNS_NO_ANSWER, "resolve")
    return Plan(tuple(Route(a, port) for a in found.addresses), found.observations)


def _local_addr(ctx: ProbeContext, address: str) -> tuple[str, int] | None:
    """Bind to the configured source address only when its family matches the destination."""
    if not ctx.source_address:
        return None
    source = ipaddress.ip_address(ctx.source_address)
    if source.version != ipaddress.ip_address(address).version:
        return None
    return (ctx.source_address, 0)


async def _open(ctx: ProbeContext, route: Route) -> Streams:
    if route.proxy is not None and route.proxy_address is not None:
        return await socks_open_connection(
            route.proxy,
            route.proxy_address,
            route.address,
            route.port,
            scope=ctx.scope,
            local_addr=_local_addr(ctx, route.proxy_address),
        )
    ctx.scope.check(route.address)
    return await asyncio.open_connection(
        route.address, route.port, local_addr=_local_addr(ctx, route.address)
    )


def _failed_operation(route: Route, exc: BaseException) -> str:
    if route.proxy is None or isinstance(exc, SocksReplyError | TimeoutError):
        return "connect"
    return "proxy_connect"


async def dial(ctx: ProbeContext, route: Route, clock: Clock) -> Dialed:
    """Open one TCP connection (scope-checked, under ``ctx.timeouts.tcp`` once our own limits
    let it start) and observe it."""
    if route.proxy is None and not ctx.scope.allows(route.address):
        observation = TCPObservation(address=route.address, port=route.port, t0=clock(),
                                     t=clock(), failure=classify(OutOfScopeError(route.address)))
        return Dialed(observation, None, "connect")
    slot = await ctx.limits.connection(route.proxy_address or route.address)
    t0 = clock()
    try:
        async with asyncio.timeout(ctx.timeouts.tcp):
            streams = await _open(ctx, route)
    except (OSError, TimeoutError, OutOfScopeError, ValueError) as exc:
        slot.release()
        observation = TCPObservation(
            address=route.address, port=route.port, t0=t0, t=clock(), failure=classify(exc)
        )
        return Dialed(observation, None, _failed_operation(route, exc))
    except BaseException:
        slot.release()
        raise
    observation = TCPObservation(address=route.address, port=route.port, t0=t0, t=clock())
    return Dialed(observation, streams, slot=slot)


async def close(dialed: Dialed | None) -> None:
    """Close a connection without caring how the peer left it, and give back its slot."""
    if dialed is None or dialed.streams is None:
        return
    writer = dialed.streams[1]
    try:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
    finally:
        dialed.slot.release()


def first_failure(attempts: list[Dialed]) -> tuple[str | None, str | None]:
    """None if any attempt connected, else the first attempt's failure and operation."""
    if any(a.observation.failure is None for a in attempts):
        return None, None
    return attempts[0].observation.failure, attempts[0].operation


async def connect_only(ctx: ProbeContext, route: Route, clock: Clock) -> Dialed:
    """Connect and close at once: the TCP probe needs no streams, so a direct route gets a bare
    socket (a sweep makes thousands of these connections)."""
    if route.proxy is not None:
        dialed = await dial(ctx, route, clock)
        await close(dialed)
        return dialed
    if not ctx.scope.allows(route.address):
        return await dial(ctx, route, clock)  # refused by the scope, recorded there
    slot = await ctx.limits.connection(route.address)
    t0 = clock()
    family = socket.AF_INET6 if ":" in route.address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setblocking(False)
            local = _local_addr(ctx, route.address)
            if local is not None:
                sock.bind(local)
            async with asyncio.timeout(ctx.timeouts.tcp):
                await asyncio.get_running_loop().sock_connect(sock, (route.address, route.port))
    except (OSError, TimeoutError) as exc:
        observation = TCPObservation(address=route.address, port=route.port, t0=t0, t=clock(),
                                     failure=classify(exc))
        return Dialed(observation, None, "connect")
    finally:
        slot.release()
    return Dialed(TCPObservation(address=route.address, port=route.port, t0=t0, t=clock()))


class TCPProbe:
    """Can each address of the endpoint be connected to?"""

    name = "tcp"
    version = "1"

    async def observe(self, target: Target, ctx: ProbeContext) -> ProbeResult:
        if target.port is None:
            raise ValueError(f"TCP target {target.key} has no port")
        clock = Clock()
        found = await plan(target.host, target.port, ctx)
        if not found.routes:
            return ProbeResult(found.dns, found.failure, found.operation)
        if len(found.routes) == 1:
            attempts = [await connect_only(ctx, found.routes[0], clock)]
        else:
            attempts = list(await asyncio.gather(*(connect_only(ctx, r, clock)
                                                   for r in found.routes)))
        failure, operation = first_failure(attempts)
        observations: tuple[Observation, ...] = (*found.dns, *(a.observation for a in attempts))
        return ProbeResult(observations, failure, operation)
