"""The one dialer: every TCP connection the probes and the baseline make goes through it.

Guarantees:

- **Scope first.** An address the scope does not admit raises ``OutOfScopeError`` before a
  socket exists; a proxy's address is checked the same way.
- **Our queue outside every timeout.** A connection first takes its share of our limits
  (``Limits.connection``: its server address's, then a socket), and only then does its connect
  timeout start: the wait is the measurement's queue time (``probes.pacing``), never part of a
  timeout. A connection's share is given back when it is closed (``Connection.close``, or the
  ``close`` of a ``Dialed``).
- **Source address.** Bound when configured and of the destination's family; otherwise the
  kernel chooses, as for any destination.
- **One address, or a name's addresses.** ``connect`` dials exactly one address: the TCP and TLS
  probes measure every address on its own (``attempt``, one ``TCPObservation`` each). ``race``
  dials a name as RFC 8305 says: families interleaved from the first address's, the next attempt
  started when the previous one fails or after ``CONNECTION_ATTEMPT_DELAY_S``; the first to
  connect wins, the others are cancelled or closed; if none connects, the first address's error
  is raised.
- **SOCKS5.** With a proxy (``probes.socks``, socksio) the target is asked for by name, so no
  lookup leaves this machine. Reaching the proxy is a connect of its own; the proxy's answer
  about the target is awaited under a second timeout of the same length. A failure of our own
  proxy (unreachable, out of scope, a broken protocol, refused credentials) raises
  ``ProxyConnectError`` from the error met (operation ``proxy_connect``); the proxy reporting
  that it could not reach the target (``SocksReplyError``) or never saying (``TimeoutError``)
  is the target's failure (``connect``).
- Errors are raised as the network gave them (``OSError``, ``TimeoutError``); naming them is
  ``probes.failures.classify``'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from blockwatch.probes import socks
from blockwatch.probes.context import ProbeContext
from blockwatch.probes.errors import OutOfScopeError, ProbeError, ProxyConnectError
from blockwatch.probes.failures import DNS_NO_ANSWER, classify
from blockwatch.probes.model import DNSObservation, TCPObservation
from blockwatch.probes.pacing import NO_SLOT, Limits, Slot
from blockwatch.probes.scope import Scope
from blockwatch.probes.socks import SocksProxy, SocksReplyError, parse_proxy

CONNECTION_ATTEMPT_DELAY_S = 0.25  # RFC 8305's recommended Connection Attempt Delay

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Clock:
    """Seconds since the probe started, rounded to microseconds."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    def __call__(self) -> float:
        return round(time.perf_counter() - self._start, 6)


class Connection:
    """A connected TCP socket (through the proxy's tunnel when there is one) and its share of
    our limits. ``started``: when its connect began, after our queue (``time.perf_counter``)."""

    __slots__ = ("address", "port", "slot", "sock", "started")

    def __init__(self, sock: socket.socket, address: str, port: int, slot: Slot,
                 started: float) -> None:
        self.sock, self.address, self.port, self.slot = sock, address, port, slot
        self.started = started

    def left(self, limit: float) -> float:
        """What remains of ``limit`` seconds counted from the start of the connect: one budget
        for a connection and the exchange on it."""
        return max(0.0, limit - (time.perf_counter() - self.started))

    async def streams(self) -> Streams:
        """asyncio streams over the socket (they own it now; ``slot`` is still ours to give)."""
        try:
            return await asyncio.open_connection(sock=self.sock)
        except BaseException:
            self.close()
            raise

    @contextlib.asynccontextmanager
    async def stream(self) -> AsyncIterator[Streams]:
        """asyncio streams over the connection for the length of an ``async with``; at its end
        the connection is closed (without waiting for the peer) and its slot given back."""
        reader, writer = await self.streams()
        try:
            yield reader, writer
        finally:
            writer.close()
            self.slot.release()

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            self.slot.release()


class Dialer:
    """Connections under one scope, limits, source address and (optionally) SOCKS5 proxy."""

    __slots__ = ("limits", "proxy", "scope", "source_address")

    def __init__(self, scope: Scope, *, limits: Limits | None = None,
                 source_address: str | None = None, proxy: SocksProxy | None = None) -> None:
        self.scope, self.limits, self.source_address = scope, limits, source_address
        self.proxy = proxy

    @classmethod
    def of(cls, ctx: ProbeContext, *, via_proxy: bool = True) -> Dialer:
        """The dialer of a probe context: its scope, limits, source address and (unless
        ``via_proxy`` is False: the VPN probes go direct) its proxy."""
        proxy = parse_proxy(ctx.proxy) if ctx.proxy and via_proxy else None
        return cls(ctx.scope, limits=ctx.limits, source_address=ctx.source_address, proxy=proxy)

    async def _take(self, address: str) -> Slot:
        """The scope's permission, then our limits' (this may wait: it is our queue)."""
        self.scope.check(address)
        if self.limits is None:
            return NO_SLOT
        return await self.limits.connection(address)

    async def _open(self, address: str, port: int, limit: float | None,
                    slot: Slot) -> Connection:
        """Connect with the slot already held (given back if the connect fails)."""
        started = time.perf_counter()
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET,
                                 socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                source = self.source_address
                if source and (":" in source) == (":" in address):
                    sock.bind((source, 0))
                async with asyncio.timeout(limit):
                    await asyncio.get_running_loop().sock_connect(sock, (address, port))
            except BaseException:
                sock.close()
                raise
        except BaseException:
            slot.release()
            raise
        return Connection(sock, address, port, slot, started)

    async def connect(self, address: str, port: int, limit: float | None) -> Connection:
        """One connection to one address (an IP literal): our queue, then a connect of at
        most ``limit`` seconds (a timeout the caller cannot wrap around it: it would count our
        queue)."""
        return await self._open(address, port, limit, await self._take(address))

    async def _negotiate(self, conn: Connection, host: str, port: int,
                         limit: float | None) -> Connection:
        """Ask the proxy at the other end of ``conn`` for ``host:port``."""
        assert self.proxy is not None
        try:
            async with asyncio.timeout(limit):
                await socks.negotiate(*socks.socket_io(conn.sock), self.proxy, host, port)
        except (SocksReplyError, TimeoutError):
            conn.close()
            raise  # about the target: the proxy could not reach it, or never said
        except (OSError, ValueError) as exc:
            conn.close()
            raise ProxyConnectError(str(exc)) from exc
        except BaseException:
            conn.close()
            raise
        return Connection(conn.sock, host, port, conn.slot, conn.started)

    async def tunnel(self, proxy_address: str, host: str, port: int,
                     limit: float | None) -> Connection:
        """A connection to ``host:port`` through the proxy at ``proxy_address`` (an IP)."""
        assert self.proxy is not None
        try:
            conn = await self.connect(proxy_address, self.proxy.port, limit)
        except (OSError, OutOfScopeError) as exc:  # TimeoutError is an OSError
            raise ProxyConnectError(str(exc)) from exc
        return await self._negotiate(conn, host, port, limit)

    async def race(self, addresses: tuple[str, ...], port: int,
                   limit: float | None) -> Connection:
        """The first of a name's addresses to connect (RFC 8305); all fail: the first
        address's error. Each attempt is a ``connect`` (its own queue, its own timeout)."""
        order = interleave(addresses)
        if len(order) == 1:  # nothing to race
            return await self.connect(order[0], port, limit)
        tasks: list[asyncio.Task[Connection]] = []
        try:
            for i, address in enumerate(order):
                tasks.append(asyncio.create_task(self.connect(address, port, limit)))
                last = i == len(order) - 1
                while True:
                    running = [t for t in tasks if not t.done()]
                    if running:
                        await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED,
                                           timeout=None if last else CONNECTION_ATTEMPT_DELAY_S)
                    won = _winner(tasks)
                    if won is not None:
                        return won.result()
                    if not last or all(t.done() for t in tasks):
                        break  # the delay elapsed or an attempt failed: the next address
            raise _error(tasks[0])
        finally:
            for t in tasks:
                if not t.done():
                    t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            winner = _winner(tasks)
            for t in tasks:  # a loser that connected as well is closed
                if t is not winner and t.done() and not t.cancelled() and t.exception() is None:
                    t.result().close()


def interleave(addresses: tuple[str, ...]) -> tuple[str, ...]:
    """RFC 8305 section 4: the addresses with their families alternating, starting with the
    first address's family, each family in the order given."""
    first = ":" in addresses[0] if addresses else False
    same = [a for a in addresses if (":" in a) == first]
    other = [a for a in addresses if (":" in a) != first]
    if not other:
        return addresses
    out: list[str] = []
    for i in range(max(len(same), len(other))):
        out.extend(family[i] for family in (same, other) if i < len(family))
    return tuple(out)


def _winner(tasks: list[asyncio.Task[Connection]]) -> asyncio.Task[Connection] | None:
    return next((t for t in tasks if t.done() and not t.cancelled() and t.exception() is None),
                None)


def _error(task: asyncio.Task[Connection]) -> BaseException:
    exc = task.exception() if task.done() and not task.cancelled() else None
    return exc if exc is not None else ConnectionError("no address connected")


# --- the probes' view: routes, and one observed connection attempt per route ----------------------


@dataclass(frozen=True, slots=True)
class Route:
    """One way to reach the target: a resolved address, or the name through the proxy."""

    address: str  # the IP connected to, or the host name when the proxy resolves it
    port: int
    proxy_address: str | None = None  # set when the route goes through the context's proxy


@dataclass(frozen=True, slots=True)
class Plan:
    """The routes to try, the DNS facts behind them, or why there are none."""

    routes: tuple[Route, ...]
    dns: tuple[DNSObservation, ...] = ()
    failure: str | None = None
    operation: str | None = None


async def plan(host: str, port: int, ctx: ProbeContext) -> Plan:
    """Resolve ``host`` (or the proxy's address) into the routes a probe should try: every
    address of the name, or the name itself through the proxy."""
    if ctx.proxy:
        proxy = parse_proxy(ctx.proxy)
        found = await ctx.lookup(proxy.host)
        if found.failure or not found.addresses:
            return Plan((), failure=found.failure or DNS_NO_ANSWER, operation="proxy_connect")
        return Plan((Route(host, port, found.addresses[0]),))
    found = await ctx.lookup(host)
    if found.failure or not found.addresses:
        return Plan((), found.observations, found.failure or DNS_NO_ANSWER, "resolve")
    return Plan(tuple(Route(a, port) for a in found.addresses), found.observations)


@dataclass(frozen=True, slots=True)
class Dialed:
    """One observed connection attempt; ``streams`` (asked for) or ``connection`` is set when
    it succeeded, and ``close`` gives its share of our limits back."""

    observation: TCPObservation
    connection: Connection | None = None
    streams: Streams | None = None
    operation: str | None = None  # which operation failed, when it failed


_DIAL_ERRORS = (OSError, ProbeError, ValueError)  # TimeoutError is an OSError


async def attempt(ctx: ProbeContext, route: Route, clock: Clock, *,
                  streams: bool = False) -> Dialed:
    """Connect along one route under ``ctx.timeouts.tcp`` and observe it: a ``TCPObservation``
    whose ``t0`` is taken once our own limits let the attempt start."""
    dialer = Dialer.of(ctx)
    address = route.address if route.proxy_address is None else route.proxy_address
    try:
        slot = await dialer._take(address)
    except OutOfScopeError as exc:
        failed = TCPObservation(address=route.address, port=route.port, t0=clock(), t=clock(),
                                failure=classify(exc))
        return Dialed(failed, operation="connect" if route.proxy_address is None
                      else "proxy_connect")
    t0 = clock()
    limit = ctx.timeouts.tcp
    try:
        if route.proxy_address is None:
            conn = await dialer._open(address, route.port, limit, slot)
        else:
            assert dialer.proxy is not None
            try:
                conn = await dialer._open(address, dialer.proxy.port, limit, slot)
            except OSError as exc:
                raise ProxyConnectError(str(exc)) from exc
            conn = await dialer._negotiate(conn, route.address, route.port, limit)
        opened = await conn.streams() if streams else None
    except _DIAL_ERRORS as exc:
        failed = TCPObservation(address=route.address, port=route.port, t0=t0, t=clock(),
                                failure=classify(exc))
        operation = "proxy_connect" if isinstance(exc, ProxyConnectError) else "connect"
        return Dialed(failed, operation=operation)
    observation = TCPObservation(address=route.address, port=route.port, t0=t0, t=clock())
    return Dialed(observation, conn, opened)


async def close(dialed: Dialed | None) -> None:
    """Close a connection without caring how the peer left it, and give back its slot."""
    if dialed is None or dialed.connection is None:
        return
    if dialed.streams is None:
        dialed.connection.close()
        return
    writer = dialed.streams[1]
    try:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
    finally:
        dialed.connection.slot.release()


def first_failure(attempts: list[Dialed]) -> tuple[str | None, str | None]:
    """None if any attempt connected, else the first attempt's failure and operation."""
    if any(a.observation.failure is None for a in attempts):
        return None, None
    return attempts[0].observation.failure, attempts[0].operation
