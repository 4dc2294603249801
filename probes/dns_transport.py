"""Where a DNS query goes, what one exchange with a resolver collects, and the UDP exchange.

The transports of TCP, TLS and HTTPS are in ``probes.dns_stream``; ``probes.dns`` picks one by
the resolver's scheme (``_EXCHANGES``) and shares its outcome.

Guarantees:

- Nothing is sent to an address the scope does not admit: ``_destination`` checks the address
  first and raises ``KnownFailure(out_of_scope)``. The system resolver is read from
  /etc/resolv.conf (no packets) once per sweep, kept in ``ctx.cache``; ``getaddrinfo`` is
  never used, and a DoH server's name is looked up with ``ctx.lookup``.
- At most ``MAX_RESPONSES`` responses are kept per exchange, the rest counted (``dropped``).
- Over UDP the socket keeps listening after the first answer (``INJECTION_WINDOW_S``), so an
  injector's forged answer and the resolver's real one are both recorded (with arrival time,
  source, id, flags and IP TTL).
- Loss: a UDP query without any response is sent again ``ctx.dns_retries`` times within its
  timeout, with backoff (``retransmissions``); a silent target's query is sent once.
- A UDP query holds its resolver's in-flight slot until its first response, or until its first
  retransmission is due (then it is presumed lost): a dropped name does not block the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import socket
import struct
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.resolver

from blockwatch.probes import failures
from blockwatch.probes.context import ProbeContext
from blockwatch.probes.dns_wire import MAX_MESSAGE, Query, _response, _Responses
from blockwatch.probes.errors import KnownFailure, OutOfScopeError
from blockwatch.probes.model import DNSResponse
from blockwatch.probes.resolvers import ResolverSpec
from blockwatch.probes.scope import is_ip, system_resolver_addresses

# After the first well-formed UDP answer, keep listening this long (or until the timeout, if that
# comes sooner). Injected answers and the real one arrive within milliseconds of each other (the
# lab saw them 0.2 ms apart; the GFW's race is a few to ~30 ms), so one second catches them while
# a sweep of thousands of names does not wait a full timeout on every query.
INJECTION_WINDOW_S = 1.0
# A resolver (or a hostile one) answering many times: keep the first ones, count the rest
MAX_RESPONSES = 16


# --- what an exchange collects ------------------------------------------------------------------


@dataclass(slots=True)
class _Exchange:
    """What one exchange collected; ``on_first`` is told of the first well-formed response."""

    on_first: Callable[[_Responses], None]
    responses: list[DNSResponse] = field(default_factory=list)
    transmissions: int = 0
    dropped: int = 0

    def add(self, resp: DNSResponse) -> bool:
        """Record a response; True if it is the first well-formed one."""
        if len(self.responses) >= MAX_RESPONSES:
            self.dropped += 1
            return False
        first_good = resp.malformed is None and all(r.malformed for r in self.responses)
        self.responses.append(resp)
        if first_good:
            self.on_first(tuple(self.responses))
        return first_good


# --- where the query goes -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Where:
    """A scope-checked destination: an IP literal, a port, and how to talk to it."""

    transport: str
    address: str
    port: int
    spec: ResolverSpec

    @property
    def key(self) -> str:
        """The resolver as its in-flight limit knows it (whatever name it was asked by)."""
        return f"{self.transport}://{_endpoint(self.address, self.port)}"


def system_nameservers() -> tuple[str, ...]:
    """The system's nameserver addresses, read from /etc/resolv.conf (no packets)."""
    try:
        found = dns.resolver.Resolver(configure=True).nameservers
    except Exception:  # dnspython raises several types for a missing or odd resolv.conf
        found = []
    addresses = tuple(ns for ns in found if isinstance(ns, str) and is_ip(ns))
    return addresses or system_resolver_addresses()


def system_resolver() -> ResolverSpec | None:
    """The system resolver as an explicit UDP resolver (the first nameserver, port 53)."""
    nameservers = system_nameservers()
    return ResolverSpec("udp", nameservers[0], 53) if nameservers else None


async def _destination(spec: ResolverSpec, ctx: ProbeContext) -> _Where:
    """Turn a resolver into an address the scope admits, or raise ``KnownFailure``."""
    if spec.is_system:
        if "system_resolver" not in ctx.cache:  # read once per sweep, not once per query
            ctx.cache["system_resolver"] = system_resolver()
        found = ctx.cache["system_resolver"]
        if found is None:
            raise KnownFailure(failures.unknown("no nameserver in /etc/resolv.conf"))
        spec_used, address = found, found.address
    elif spec.scheme == "https" and not is_ip(spec.address):
        spec_used, address = spec, await _doh_address(spec, ctx)
    else:
        spec_used, address = spec, spec.address
    try:
        ctx.scope.check(address)
    except OutOfScopeError:
        raise KnownFailure(failures.OUT_OF_SCOPE) from None
    return _Where(spec_used.scheme, address, spec_used.port, spec_used)


async def _doh_address(spec: ResolverSpec, ctx: ProbeContext) -> str:
    """The address of a DoH server named by host name: the first one the scope admits."""
    lookup_spec = ctx.lookup_resolver
    if lookup_spec.scheme == "https" and not is_ip(lookup_spec.address):
        # it would look its own name up with itself, waiting forever on its own lookup
        raise KnownFailure(failures.unknown("a DoH lookup resolver needs an IP address in its URL"))
    lookup = await ctx.lookup(spec.address)
    if not lookup.addresses:
        raise KnownFailure(lookup.failure or failures.DNS_NO_ANSWER)
    return next((a for a in lookup.addresses if ctx.scope.allows(a)), lookup.addresses[0])


def _endpoint(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}"


# --- UDP ----------------------------------------------------------------------------------------

_IP_RECVTTL = 12  # Linux <netinet/in.h>; the socket module does not export it
_TTL_CMSG = {(socket.IPPROTO_IP, socket.IP_TTL)}
if hasattr(socket, "IPV6_HOPLIMIT"):
    _TTL_CMSG.add((socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT))


@dataclass(frozen=True, slots=True)
class _Datagram:
    data: bytes
    source: tuple[str, int]
    arrived: float  # loop.time()
    ip_ttl: int | None


class _Inbox:
    """Every datagram arriving on a socket, timestamped as it is read.

    A reader callback rather than ``sock_recvfrom`` so that the IP TTL (ancillary data of
    ``recvmsg``) comes with each datagram and arrival times are not delayed by the consumer;
    ``get`` waits with a future and a timer (no task per wait: thousands of queries listen at
    once).
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._queue: deque[_Datagram] = deque()
        self._waiter: asyncio.Future[None] | None = None
        # an ICMP error the socket reported (only a socket with IP_RECVERR hears one); ``get``
        # returns early once when it arrives
        self.error: OSError | None = None
        self._error_told = False
        self._loop.add_reader(sock.fileno(), self._drain)

    def _drain(self) -> None:
        while True:
            try:
                data, anc, _flags, addr = self._sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4))
            except BlockingIOError:  # drained
                break
            except OSError as exc:  # an ICMP error (port or host unreachable) for our query
                if self.error is None:
                    self.error = exc
                continue
            self._queue.append(_Datagram(data, (addr[0], addr[1]), self._loop.time(), _ttl(anc)))
        if ((self._queue or self.error is not None) and self._waiter is not None
                and not self._waiter.done()):
            self._waiter.set_result(None)

    async def get(self, until: float) -> _Datagram | None:
        """The next datagram, or None once ``until`` (loop time) has passed."""
        while not self._queue:
            if self.error is not None and not self._error_told:
                self._error_told = True
                return None
            if self._loop.time() >= until:
                return None
            self._waiter = self._loop.create_future()
            timer = self._loop.call_at(until, _wake, self._waiter)
            try:
                await self._waiter
            finally:
                timer.cancel()
                self._waiter = None
        return self._queue.popleft()

    def close(self) -> None:
        self._loop.remove_reader(self._sock.fileno())


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _ttl(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, value in ancdata:
        if (level, kind) in _TTL_CMSG and len(value) >= 4:
            return int(struct.unpack("=i", value[:4])[0])
    return None


_IP_RECVERR, _IPV6_RECVERR = 11, 25  # Linux <netinet/in.h>


def _udp_socket(family: int, source_address: str | None,
                icmp_errors: bool = False) -> socket.socket:
    """A non-blocking UDP socket asking for each datagram's IP TTL; ``icmp_errors``: also told
    of ICMP errors (IP_RECVERR), which an unconnected socket otherwise never hears."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        _ask_for_ttl(sock, family)
        if icmp_errors and sys.platform.startswith("linux"):
            with contextlib.suppress(OSError):
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
                else:
                    sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
        if source_address and _family(source_address) == family:
            sock.bind((source_address, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def _ask_for_ttl(sock: socket.socket, family: int) -> None:
    """Ask the kernel for each datagram's IP TTL; best effort (Linux only)."""
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
        elif sys.platform.startswith("linux"):
            sock.setsockopt(socket.IPPROTO_IP, _IP_RECVTTL, 1)
    except (OSError, AttributeError):
        pass


@functools.lru_cache(maxsize=4096)
def _family(address: str) -> int:
    version = ipaddress.ip_address(address.split("%")[0]).version
    return socket.AF_INET6 if version == 6 else socket.AF_INET


@functools.lru_cache(maxsize=64)
def retransmissions(timeout: float, retries: int) -> tuple[float, ...]:
    """When a UDP query without any response is sent again, in seconds after the first send:
    backoff from a quarter of the timeout, doubling (4 s: at 1 s and 3 s), all within it."""
    out: list[float] = []
    step = at = timeout / 4
    while len(out) < max(0, retries) and at < timeout:
        out.append(round(at, 6))
        step *= 2
        at += step
    return tuple(out)


async def _udp(where: _Where, q: Query, ctx: ProbeContext, got: _Exchange,
               silent: bool) -> None:
    """Send the query (again, with backoff, while nothing at all came back) and record every
    response until the timeout, or the injection window after the first good one."""
    loop = asyncio.get_running_loop()
    wire = q.wire
    destination = (where.address, where.port)
    socket_slot = await ctx.limits.socket().acquire()
    try:
        # a silent address hears ICMP: a port or host unreachable is its quiet answer, and
        # ends the wait after the injection window instead of the whole timeout
        with _udp_socket(_family(where.address), ctx.source_address, silent) as sock:
            inbox = _Inbox(sock)
            slot = await ctx.limits.resolver(where.key).acquire()
            try:
                sent = loop.time()
                end = sent + ctx.timeouts.dns
                resend = [sent + t for t in
                          retransmissions(ctx.timeouts.dns, 0 if silent else ctx.dns_retries)]
                await _send(loop, sock, wire, destination)
                got.transmissions = 1
                if silent or not resend:  # nobody is meant to answer: nothing to hold
                    slot.release()
                icmp = False
                while loop.time() < end:
                    if inbox.error is not None and not icmp:
                        icmp = True  # answered by the network: listen for injectors, no more
                        end = min(end, loop.time() + INJECTION_WINDOW_S)
                        continue
                    due = resend[0] if resend and not got.responses else end
                    dgram = await inbox.get(min(end, due))
                    if dgram is None:
                        if resend and not got.responses and loop.time() >= resend[0]:
                            slot.release()  # presumed lost: no longer in flight
                            resend.pop(0)
                            await _send(loop, sock, wire, destination)
                            got.transmissions += 1
                        continue
                    if not _ours(dgram, q, where):
                        continue
                    slot.release()
                    resp = _response(dgram.data, q, _endpoint(*dgram.source),
                                     dgram.arrived - sent, dgram.ip_ttl)
                    if got.add(resp):
                        end = min(end, dgram.arrived + INJECTION_WINDOW_S)
                if inbox.error is not None and not got.responses:
                    raise inbox.error  # the ICMP error is the query's failure
            finally:
                slot.release()
                inbox.close()
    finally:
        socket_slot.release()


async def _send(loop: asyncio.AbstractEventLoop, sock: socket.socket, wire: bytes,
                destination: tuple[str, int]) -> None:
    try:
        sock.sendto(wire, destination)
    except BlockingIOError:  # the socket buffer is full: wait for room
        await loop.sock_sendto(sock, wire, destination)


def _ours(dgram: _Datagram, q: Query, where: _Where) -> bool:
    """Whether a datagram answers our query: it carries our id, or it comes from the resolver.

    A reply from another address with our id is recorded (an injector may not spoof the source,
    and where it came from is evidence); stray traffic with another id from elsewhere is not.
    """
    if len(dgram.data) < 2 or int.from_bytes(dgram.data[:2], "big") == q.id:
        return True
    try:
        same_host = ipaddress.ip_address(dgram.source[0].split("%")[0]) == ipaddress.ip_address(
            where.address.split("%")[0]
        )
    except ValueError:
        return False
    return same_host and dgram.source[1] == where.port
