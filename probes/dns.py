"""The DNS probe: query a resolver over UDP, TCP, TLS or HTTPS and keep every response.

Guarantees:

- Nothing is sent to an address the scope does not admit; such a query fails ``out_of_scope``.
  The system resolver is read from /etc/resolv.conf (no packets) and queried like any other;
  ``getaddrinfo`` is never used, and a DoH name is looked up with ``ctx.lookup``.
- Over UDP the socket keeps listening after the first answer, so an injector's forged answer and
  the resolver's real one are both recorded (with arrival time, source, id, flags and IP TTL).
  A query that gets no response at all is sent again ``ctx.dns_retries`` times first.
- A target marked ``("silent", "yes")`` (``[dns] silent``: an address where no DNS server runs)
  gets one A query, never repeated; any response to it was forged on the path.
- A response never raises: bytes that do not parse are recorded with ``malformed=<reason>``.
- Every observation carries at most one failure string from ``probes.failures``, decided from
  the first well-formed response (what a stub resolver would act on).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit, urlunsplit

import dns.message
import dns.rcode
import dns.rdatatype
import dns.resolver
import httpx

from probes import failures
from probes.context import Lookup, ProbeContext, ProbeResult
from probes.model import DNSAnswer, DNSObservation, DNSResponse, Target
from probes.resolvers import ResolverSpec, parse_resolver
from probes.scope import OutOfScopeError, is_ip, system_resolver_addresses

# After the first well-formed UDP answer, keep listening this long (or until the timeout, if that
# comes sooner). Injected answers and the real one arrive within milliseconds of each other (the
# lab saw them 0.2 ms apart; the GFW's race is a few to ~30 ms), so one second catches them while
# a sweep of thousands of names does not wait a full timeout on every query.
INJECTION_WINDOW_S = 1.0

EDNS_PAYLOAD = 1232  # the DNS flag day size: fits any path MTU, so answers are not fragmented
MAX_MESSAGE = 65535  # a DNS message never exceeds this (TCP length prefix is 16 bits)

_BOGONS = tuple(
    ipaddress.ip_network(n)
    for n in (
        # IANA IPv4 special-purpose registry: not reachable on the public internet
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        # IANA IPv6 special-purpose registry, plus multicast and deprecated site-local
        "::/128", "::1/128", "64:ff9b:1::/48", "100::/64", "2001:2::/48", "2001:10::/28",
        "2001:db8::/32", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
    )
)


def is_bogon(ip: str) -> bool:
    """True if ``ip`` can never be a public server's address (private, loopback, reserved, ...).

    An explicit list rather than ``ipaddress``'s ``is_private``/``is_global``, whose meaning has
    changed between Python releases: a stored verdict must not depend on the interpreter.
    Raises ValueError if ``ip`` is not an IP address.
    """
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in _BOGONS)


_Responses = tuple[DNSResponse, ...]


class _Failed(Exception):
    """A query ended before any response, with this failure string."""

    def __init__(self, failure: str) -> None:
        super().__init__(failure)
        self.failure = failure


# --- the probe ----------------------------------------------------------------------------------


class DNSProbe:
    """Resolve ``target.host`` (A and AAAA) at ``target.resolver`` (None means the system's)."""

    name = "dns"
    version = "1"

    async def observe(self, target: Target, ctx: ProbeContext) -> ProbeResult:
        spec = parse_resolver(target.resolver or "system")
        if ("silent", "yes") in target.options:
            # an address where no DNS server runs: one A query, sent once, and every response
            # recorded; silence (a timeout) is the expected, healthy outcome
            a = await query(spec, target.host, "A", replace(ctx, dns_retries=0))
            return ProbeResult((a,), a.failure, "resolve" if a.failure else None)
        a, aaaa = await asyncio.gather(
            query(spec, target.host, "A", ctx), query(spec, target.host, "AAAA", ctx)
        )
        # An AAAA query without addresses counts as failed here (its own failure is None, as a
        # name without IPv6 is normal): otherwise a sinkhole's bogon A answer next to an empty
        # AAAA answer would leave the measurement without a failure.
        if a.failure is not None and (aaaa.failure is not None or not aaaa.addresses):
            return ProbeResult((a, aaaa), a.failure, "resolve")
        return ProbeResult((a, aaaa))


async def lookup_addresses(host: str, ctx: ProbeContext) -> Lookup:
    """Resolve ``host`` with ``ctx.lookup_resolver``: IPv4 addresses first, then IPv6."""
    a, aaaa = await asyncio.gather(
        query(ctx.lookup_resolver, host, "A", ctx), query(ctx.lookup_resolver, host, "AAAA", ctx)
    )
    addresses = tuple(dict.fromkeys(a.addresses + aaaa.addresses))
    return Lookup(addresses, (a, aaaa), None if addresses else a.failure)


async def query(spec: ResolverSpec, qname: str, rdtype: str, ctx: ProbeContext) -> DNSObservation:
    """Send one query and observe what comes back; never raises for anything on the network."""
    q = dns.message.make_query(qname, rdtype, use_edns=0, payload=EDNS_PAYLOAD)
    t0 = time.time()
    failure: str | None = None
    responses: _Responses = ()
    try:
        where = await _destination(spec, ctx)
        async with ctx.dns_limit(str(spec)):
            responses = await _EXCHANGES[where.transport](where, q, ctx)
    except _Failed as exc:
        failure = exc.failure
    except (OSError, EOFError, TimeoutError, httpx.HTTPError) as exc:
        failure = failures.classify(exc)
    else:
        failure = _failure(rdtype, responses, ctx)
    return DNSObservation(
        resolver=str(spec),
        transport="udp" if spec.is_system else spec.scheme,
        qname=qname,
        qtype=rdtype,
        t0=t0,
        responses=responses,
        failure=failure,
    )


def _failure(rdtype: str, responses: _Responses, ctx: ProbeContext) -> str | None:
    """The failure a stub resolver would meet: it acts on the first well-formed response."""
    if not responses:
        return failures.GENERIC_TIMEOUT
    first = next((r for r in responses if r.malformed is None), None)
    if first is None:
        return failures.DNS_MALFORMED
    by_rcode = {
        "NXDOMAIN": failures.DNS_NXDOMAIN,
        "SERVFAIL": failures.DNS_SERVFAIL,
        "REFUSED": failures.DNS_REFUSED,
    }
    if first.rcode in by_rcode:
        return by_rcode[first.rcode]
    if first.rcode != "NOERROR":
        return failures.unknown(f"DNS rcode {first.rcode}")
    addresses = [a.value for a in first.answers if a.rtype == rdtype]
    if not addresses:
        # A name without IPv6 is normal; a name without IPv4 is what a censor's empty answer
        # looks like.
        return failures.DNS_NO_ANSWER if rdtype == "A" else None
    # The scope admits the lab and loopback addresses the user allowed explicitly: for this
    # deployment those are real server addresses, not a censor's sinkhole.
    if all(is_bogon(ip) and not ctx.scope.allows(ip) for ip in addresses):
        return failures.DNS_BOGON
    return None


# --- where the query goes -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Where:
    """A scope-checked destination: an IP literal, a port, and how to talk to it."""

    transport: str
    address: str
    port: int
    spec: ResolverSpec


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
    """Turn a resolver into an address the scope admits, or raise ``_Failed``."""
    if spec.is_system:
        found = system_resolver()
        if found is None:
            raise _Failed(failures.unknown("no nameserver in /etc/resolv.conf"))
        spec_used, address = found, found.address
    elif spec.scheme == "https" and not is_ip(spec.address):
        spec_used, address = spec, await _doh_address(spec, ctx)
    else:
        spec_used, address = spec, spec.address
    try:
        ctx.scope.check(address)
    except OutOfScopeError:
        raise _Failed(failures.OUT_OF_SCOPE) from None
    return _Where(spec_used.scheme, address, spec_used.port, spec_used)


async def _doh_address(spec: ResolverSpec, ctx: ProbeContext) -> str:
    """The address of a DoH server named by host name: the first one the scope admits."""
    lookup_spec = ctx.lookup_resolver
    if lookup_spec.scheme == "https" and not is_ip(lookup_spec.address):
        # it would look its own name up with itself, waiting forever on its own lookup
        raise _Failed(failures.unknown("a DoH lookup resolver needs an IP address in its URL"))
    lookup = await ctx.lookup(spec.address)
    if not lookup.addresses:
        raise _Failed(lookup.failure or failures.DNS_NO_ANSWER)
    return next((a for a in lookup.addresses if ctx.scope.allows(a)), lookup.addresses[0])


def _endpoint(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}"


# --- reading responses --------------------------------------------------------------------------


def _response(
    data: bytes,
    q: dns.message.Message,
    source: str,
    t: float,
    ip_ttl: int | None = None,
    malformed: str | None = None,
) -> DNSResponse:
    """Record one response; bytes that do not parse become ``malformed`` instead of raising."""
    flags = int.from_bytes(data[2:4], "big") if len(data) >= 4 else -1
    header = DNSResponse(
        t=round(t, 6),
        source=source,
        id=int.from_bytes(data[:2], "big") if len(data) >= 2 else -1,
        flags=flags,
        rcode=dns.rcode.to_text(dns.rcode.from_flags(flags, 0)) if flags >= 0 else "",
        ip_ttl=ip_ttl,
        malformed=malformed,
    )
    if malformed is not None:
        return header
    try:
        msg = dns.message.from_wire(data)
    except Exception as exc:  # hostile bytes can raise from any corner of the parser
        return replace(header, malformed=failures.scrub(f"{type(exc).__name__}: {exc}")[:200])
    if not q.is_response(msg):
        return replace(header, malformed="not a response to this query")
    answers = tuple(
        DNSAnswer(rtype=dns.rdatatype.to_text(rrset.rdtype), value=rd.to_text(), ttl=rrset.ttl)
        for rrset in msg.answer
        for rd in rrset
    )
    return replace(header, rcode=dns.rcode.to_text(msg.rcode()), answers=answers)


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
    """Every datagram arriving on a socket, timestamped as it is read, in a queue.

    A reader callback rather than ``sock_recvfrom`` so that the IP TTL (ancillary data of
    ``recvmsg``) comes with each datagram and arrival times are not delayed by the consumer.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[_Datagram] = asyncio.Queue()
        self._loop.add_reader(sock.fileno(), self._drain)

    def _drain(self) -> None:
        while True:
            try:
                data, anc, _flags, addr = self._sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4))
            except OSError:  # drained (EAGAIN), or a queued ICMP error: nothing to record
                return
            self.queue.put_nowait(_Datagram(data, (addr[0], addr[1]), self._loop.time(), _ttl(anc)))

    def close(self) -> None:
        self._loop.remove_reader(self._sock.fileno())


def _ttl(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, value in ancdata:
        if (level, kind) in _TTL_CMSG and len(value) >= 4:
            return int(struct.unpack("=i", value[:4])[0])
    return None


def _udp_socket(family: int, source_address: str | None) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        _ask_for_ttl(sock, family)
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


def _family(address: str) -> int:
    version = ipaddress.ip_address(address.split("%")[0]).version
    return socket.AF_INET6 if version == 6 else socket.AF_INET


async def _udp(where: _Where, q: dns.message.Message, ctx: ProbeContext) -> _Responses:
    """Send the query, and resend it if nothing at all came back; record every response."""
    loop = asyncio.get_running_loop()
    wire = q.to_wire()
    responses: list[DNSResponse] = []
    with _udp_socket(_family(where.address), ctx.source_address) as sock:
        inbox = _Inbox(sock)
        try:
            sent = loop.time()
            # A retry keeps the socket and the id, so a late answer to the first send still counts.
            for _attempt in range(1 + max(0, ctx.dns_retries)):
                await loop.sock_sendto(sock, wire, (where.address, where.port))
                await _listen(inbox, q, where, sent, loop.time() + ctx.timeouts.dns, responses)
                if responses:
                    break
        finally:
            inbox.close()
    return tuple(responses)


async def _listen(
    inbox: _Inbox, q: dns.message.Message, where: _Where, sent: float, deadline: float,
    responses: list[DNSResponse],
) -> None:
    """Collect responses until the deadline, or the injection window after the first good one."""
    loop = asyncio.get_running_loop()
    while (remaining := deadline - loop.time()) > 0:
        try:
            dgram = await asyncio.wait_for(inbox.queue.get(), remaining)
        except TimeoutError:
            return
        if not _ours(dgram, q, where):
            continue
        resp = _response(
            dgram.data, q, _endpoint(*dgram.source), dgram.arrived - sent, dgram.ip_ttl
        )
        first_good = resp.malformed is None and all(r.malformed for r in responses)
        responses.append(resp)
        if first_good:
            deadline = min(deadline, dgram.arrived + INJECTION_WINDOW_S)


def _ours(dgram: _Datagram, q: dns.message.Message, where: _Where) -> bool:
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


# --- TCP and TLS --------------------------------------------------------------------------------


async def _stream(where: _Where, q: dns.message.Message, ctx: ProbeContext) -> _Responses:
    """One query over TCP or TLS (DoT), length-prefixed (RFC 1035 4.2.2, RFC 7858).

    asyncio streams rather than ``dns.asyncquery.tcp``/``tls`` so that the raw bytes reach the
    same parser as UDP: a garbage reply is recorded with its header instead of raising.
    TCP retransmits a lost segment itself, but a few losses outlast a DNS timeout: a query
    that timed out is asked again on a new connection ``ctx.dns_retries`` times (a reset or a
    refusal is an answer of its own and is not retried).
    """
    for attempt in range(1 + max(0, ctx.dns_retries)):
        try:
            return await _stream_once(where, q, ctx)
        except TimeoutError:
            if attempt == max(0, ctx.dns_retries):
                raise
    raise AssertionError("unreachable")


async def _stream_once(where: _Where, q: dns.message.Message, ctx: ProbeContext) -> _Responses:
    tls = where.transport == "tls"
    loop = asyncio.get_running_loop()
    local = (ctx.source_address, 0) if ctx.source_address else None
    async with asyncio.timeout(ctx.timeouts.dns):
        reader, writer = await asyncio.open_connection(
            where.address,
            where.port,
            ssl=ctx.ssl_context() if tls else None,
            server_hostname=(where.spec.server_name or where.address) if tls else None,
            local_addr=local,
        )
        try:
            writer.write(q.to_wire(prepend_length=True))
            await writer.drain()
            sent = loop.time()
            length = int.from_bytes(await reader.readexactly(2), "big")
            data = await reader.readexactly(length)
            t = loop.time() - sent
        finally:
            writer.close()
    return (_response(data, q, _endpoint(where.address, where.port), t),)


# --- HTTPS (DoH) --------------------------------------------------------------------------------


async def _https(where: _Where, q: dns.message.Message, ctx: ProbeContext) -> _Responses:
    """One query as a DoH POST (RFC 8484) to the scope-checked address.

    httpx directly: the installed dnspython (2.9) does DoH with ``httpx2``, which is not a
    dependency, and without a bootstrap address it would resolve the server's name itself,
    around the scope check. The URL is rewritten to the address, with
    the Host header and the TLS server name keeping the original name.
    """
    url = urlsplit(where.spec.url or "")
    netloc = _endpoint(where.address, where.port)
    headers = {
        "accept": "application/dns-message",
        "content-type": "application/dns-message",
        "host": url.netloc.rsplit("@", 1)[-1],
    }
    extensions = {} if is_ip(where.spec.address) else {"sni_hostname": where.spec.address}
    loop = asyncio.get_running_loop()
    transport = httpx.AsyncHTTPTransport(
        verify=ctx.ssl_context(), local_address=ctx.source_address
    )
    async with httpx.AsyncClient(
        transport=transport, trust_env=False, timeout=ctx.timeouts.dns
    ) as client:
        async with asyncio.timeout(ctx.timeouts.dns):
            sent = loop.time()
            async with client.stream(
                "POST", urlunsplit(url._replace(netloc=netloc)), content=q.to_wire(),
                headers=headers, extensions=extensions,
            ) as resp:
                data = await _read_capped(resp)
                t = loop.time() - sent
    if resp.status_code != 200:  # the body is a block page or an error, not a DNS message
        return (_response(b"", q, netloc, t, malformed=f"HTTP status {resp.status_code}"),)
    return (_response(data, q, netloc, t),)


async def _read_capped(resp: httpx.Response) -> bytes:
    """The body, up to one DNS message's maximum size: a hostile server may send gigabytes."""
    body = bytearray()
    async for chunk in resp.aiter_bytes():
        body += chunk
        if len(body) > MAX_MESSAGE:
            break
    return bytes(body)


_Exchange = Callable[[_Where, dns.message.Message, ProbeContext], Awaitable[_Responses]]
_EXCHANGES: dict[str, _Exchange] = {"udp": _udp, "tcp": _stream, "tls": _stream, "https": _https}
