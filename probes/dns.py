"""The DNS probe: query a resolver over UDP, TCP, TLS or HTTPS and keep every response.

Guarantees:

- Nothing is sent to an address the scope does not admit; such a query fails ``out_of_scope``.
  The system resolver is read from /etc/resolv.conf (no packets) once per sweep (the next
  sweep's context, ``ProbeContext.for_sweep``, reads it again) and queried like any other;
  ``getaddrinfo`` is never used, and a DoH name is looked up with ``ctx.lookup``.
- **One resolution per name per sweep**: each (resolver, name, type) is asked once
  (``Resolutions``) and shared by the DNS probe and by every probe that needs the name's
  addresses. Those act on the first well-formed response, as a stub resolver would
  (``SharedQuery.first``), while the query keeps listening in the background for late or
  injected answers (``SharedQuery.complete``), holding no slot of ours.
- Over UDP the socket keeps listening after the first answer (``INJECTION_WINDOW_S``), so an
  injector's forged answer and the resolver's real one are both recorded (with arrival time,
  source, id, flags and IP TTL); at most ``MAX_RESPONSES`` are kept, the rest counted.
- Loss: a UDP query without any response is sent again ``ctx.dns_retries`` times within its
  timeout, with backoff (``retransmissions``); a query that still got no response at all is
  then asked once more, anew (a new id and socket or connection: ``attempt`` 2), so that its
  silence is confirmed before it counts. Both are recorded.
- A query holds its resolver's in-flight slot until its first response, or until its first
  retransmission is due (then it is presumed lost): a dropped name does not block the others.
- A target marked ``("silent", "yes")`` (``[dns] silent``: an address where no DNS server runs)
  gets one A query, never repeated; any response to it was forged on the path.
- A response never raises: bytes that do not parse are recorded with ``malformed=<reason>``.
- Every observation carries at most one failure string from ``probes.failures``, decided from
  the first well-formed response (what a stub resolver would act on).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import ipaddress
import secrets
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit, urlunsplit

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import httpx

from blockwatch.probes import failures, pacing
from blockwatch.probes.context import Lookup, ProbeContext, ProbeResult
from blockwatch.probes.errors import KnownFailure, OutOfScopeError
from blockwatch.probes.model import DNSAnswer, DNSObservation, DNSResponse, Service, Target
from blockwatch.probes.resolvers import ResolverSpec, parse_resolver
from blockwatch.probes.scope import is_ip, system_resolver_addresses
from blockwatch.probes.targets import PlanContext, hosts

# After the first well-formed UDP answer, keep listening this long (or until the timeout, if that
# comes sooner). Injected answers and the real one arrive within milliseconds of each other (the
# lab saw them 0.2 ms apart; the GFW's race is a few to ~30 ms), so one second catches them while
# a sweep of thousands of names does not wait a full timeout on every query.
INJECTION_WINDOW_S = 1.0
# RFC 8305's Resolution Delay: a fetch that has IPv4 addresses waits this long for IPv6 ones
RESOLUTION_DELAY_S = 0.05
# A resolver (or a hostile one) answering many times: keep the first ones, count the rest
MAX_RESPONSES = 16

EDNS_PAYLOAD = 1232  # the DNS flag day size: fits any path MTU, so answers are not fragmented
MAX_MESSAGE = 65535  # a DNS message never exceeds this (TCP length prefix is 16 bits)

_Responses = tuple[DNSResponse, ...]


# --- the probe ----------------------------------------------------------------------------------


class DNSProbe:
    """Resolve ``target.host`` (A and AAAA) at ``target.resolver`` (None means the system's)."""

    name = "dns"
    version = "3"  # 3: bogon answers are facts (the analysis decides); 2: shared per sweep

    async def observe(self, target: Target, ctx: ProbeContext) -> ProbeResult:
        spec = parse_resolver(target.resolver or "system")
        queries = ctx.resolutions
        if SILENT in target.options:
            # an address where no DNS server runs: one A query, sent once, and every response
            # recorded; silence (a timeout) is the expected, healthy outcome. It only listens.
            pacing.background()
            silent = queries.get(spec, target.host, "A", silent=True)
            with pacing.waiting(record=False):
                (a,) = await silent.complete()
            _credit(silent)
            return ProbeResult((a,), a.failure, "resolve" if a.failure else None)
        qa, qaaaa = (queries.get(spec, target.host, "A"), queries.get(spec, target.host, "AAAA"))
        with pacing.waiting(record=False):
            await _first(qa)
            await _first(qaaaa)
            pacing.background()  # what is left is listening for late answers
            a_all, aaaa_all = await qa.complete(), await qaaaa.complete()
        _credit(qa, qaaaa)
        a, aaaa = a_all[-1], aaaa_all[-1]
        observations = (*a_all, *aaaa_all)
        # The measurement fails when the A query failed and the AAAA query gave no address (its
        # own failure is None, as a name without IPv6 is normal): a name is resolved if either
        # family has addresses. (blockwatch.analysis.bogons applies the same to bogon answers.)
        if a.failure is not None and (aaaa.failure is not None or not aaaa.addresses):
            return ProbeResult(observations, a.failure, "resolve")
        return ProbeResult(observations)


async def _first(query: SharedQuery) -> DNSObservation:
    """The query's first answer. Shielded: many probes wait for one query, and one of them
    being cancelled (its deadline, an interrupted sweep) must not cancel it for the others."""
    future = query.first_future
    if future.done():
        return future.result()
    return await asyncio.shield(future)


def _credit(*queries: SharedQuery) -> None:
    """The time a shared query waited for our own limits delayed this measurement too."""
    meter = pacing.current()
    if meter is not None:
        meter.queued += max(q.queued for q in queries)


async def lookup(host: str, ctx: ProbeContext, *, every_address: bool = True) -> Lookup:
    """The addresses of ``host`` at ``ctx.lookup_resolver`` (IPv4 first, then IPv6), from the
    sweep's shared queries, as soon as a stub resolver would have them.

    ``every_address``: wait for both the A and the AAAA answer (a probe that measures each
    address). Otherwise (a fetch, as a browser does: RFC 8305) go once one family has
    addresses and the other has not answered within ``RESOLUTION_DELAY_S``.
    """
    qa = ctx.resolutions.get(ctx.lookup_resolver, host, "A")
    qaaaa = ctx.resolutions.get(ctx.lookup_resolver, host, "AAAA")
    both = (qa.first_future, qaaaa.first_future)
    with pacing.waiting(record=False):
        if every_address:
            await _first(qa)
            await _first(qaaaa)
        else:
            done, pending = await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
            if pending and not any(f.result().addresses for f in done):
                await asyncio.wait(pending)
            elif pending:
                await asyncio.wait(pending, timeout=RESOLUTION_DELAY_S)
    _credit(qa, qaaaa)
    found = [f.result() for f in both if f.done()]
    addresses = tuple(dict.fromkeys(a for o in found for a in o.addresses))
    failure = None if addresses else (found[0].failure or failures.DNS_NO_ANSWER)
    return Lookup(addresses, tuple(found), failure)


class Resolutions:
    """Every (resolver, name, type) of a sweep asked once; every probe shares the answer."""

    def __init__(self, ctx: ProbeContext) -> None:
        self._ctx = ctx
        # by name, then (resolver, type, silent)
        self._queries: dict[str, dict[tuple[str, str, bool], SharedQuery]] = {}

    def get(self, spec: ResolverSpec, qname: str, qtype: str, *,
            silent: bool = False) -> SharedQuery:
        of_name = self._queries.setdefault(qname.lower().rstrip("."), {})
        key = (str(spec), qtype, silent)
        found = of_name.get(key)
        if found is None:
            found = of_name[key] = SharedQuery(spec, qname, qtype, self._ctx, silent=silent)
        return found

    def forget(self, qname: str) -> None:
        """Drop a name's queries once its probes are done (a sweep of many names need not keep
        them all); one still listening ends on its own, within its window."""
        self._queries.pop(qname.lower().rstrip("."), None)

    async def aclose(self) -> None:
        """Stop whatever still listens (the sweep is over, or cancelled)."""
        tasks = [q.task for of_name in self._queries.values() for q in of_name.values()
                 if not q.task.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._queries.clear()


class SharedQuery:
    """One name and type at one resolver, asked once per sweep in a task of its own.

    ``first_future``: the observation a stub resolver would act on, as soon as the first
    well-formed response arrives (or, failing that, the final outcome). ``complete()``: every
    observation (the query, and its confirmation if it went unanswered) once listening ended.
    The task runs in a context of its own, so its waits for our limits are its own
    (``queued``), never another measurement's.
    """

    def __init__(self, spec: ResolverSpec, qname: str, qtype: str, ctx: ProbeContext, *,
                 silent: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.spec, self.qname, self.qtype, self.silent = spec, qname, qtype, silent
        self._ctx = ctx
        self.first_future: asyncio.Future[DNSObservation] = loop.create_future()
        self._meter = pacing.Meter()
        self.task = loop.create_task(self._run(), context=contextvars.Context())

    @property
    def queued(self) -> float:
        return self._meter.queued

    @property
    def done(self) -> bool:
        return self.task.done()

    async def complete(self) -> tuple[DNSObservation, ...]:
        if self.task.done():
            return self.task.result()
        return await asyncio.shield(self.task)  # a consumer cancelled leaves the query be

    def _first(self, obs: DNSObservation) -> None:
        if not self.first_future.done():
            self.first_future.set_result(obs)

    async def _run(self) -> tuple[DNSObservation, ...]:
        with pacing.metering(self._meter):
            try:
                observations = [await self._attempt(1)]
                if _unanswered(observations[0]) and self._ctx.dns_confirm and not self.silent:
                    observations.append(await self._attempt(2))
            except asyncio.CancelledError:
                if not self.first_future.done():
                    self.first_future.cancel()
                raise
        self._first(observations[-1])
        return tuple(observations)

    async def _attempt(self, attempt: int) -> DNSObservation:
        ctx = self._ctx
        q = Query.make(self.qname, self.qtype)
        t0 = time.time()
        base = DNSObservation(resolver=str(self.spec),
                              transport="udp" if self.spec.is_system else self.spec.scheme,
                              qname=self.qname, qtype=self.qtype, t0=t0, attempt=attempt)

        def provisional(responses: _Responses) -> None:
            self._first(replace(base, responses=responses,
                                failure=_failure(self.qtype, responses, ctx)))

        exchange = _Exchange(provisional)
        try:
            where = await _destination(self.spec, ctx)
            await _EXCHANGES[where.transport](where, q, ctx, exchange, self.silent)
        except KnownFailure as exc:
            failure: str | None = exc.failure
        except (OSError, EOFError, TimeoutError, httpx.HTTPError) as exc:
            failure = failures.classify(exc)
        except Exception as exc:  # a bug, or a peer we did not foresee: this query only
            failure = failures.unknown(f"{type(exc).__name__}: {exc}")
        else:
            failure = _failure(self.qtype, tuple(exchange.responses), ctx)
        return replace(base, responses=tuple(exchange.responses), failure=failure,
                       transmissions=exchange.transmissions, dropped=exchange.dropped)


def _unanswered(obs: DNSObservation) -> bool:
    """Nothing came back at all: a lost packet or a dropped name (to be asked again)."""
    return not obs.responses and obs.failure == failures.GENERIC_TIMEOUT


async def query(spec: ResolverSpec, qname: str, rdtype: str, ctx: ProbeContext) -> DNSObservation:
    """One query, not shared, without confirmation: what one exchange with the resolver saw.
    Never raises for anything on the network."""
    shared = SharedQuery(spec, qname, rdtype, replace(ctx, dns_confirm=False))
    (obs,) = await shared.complete()
    return obs


@functools.lru_cache(maxsize=16384)
def _question(qname: str, qtype: str) -> tuple[bytes, dns.name.Name, int]:
    """A question's wire form, its name and type (parsed once per name: sweeps ask thousands)."""
    name = dns.name.from_text(qname)
    rdtype = dns.rdatatype.from_text(qtype)
    wire = name.to_wire() or b""  # bytes whenever no file is given
    return wire + struct.pack("!HH", rdtype, dns.rdataclass.IN), name, rdtype


# an EDNS0 OPT record: root name, type 41, our payload size, no extended flags, no options
_OPT = b"\x00" + struct.pack("!HHIH", dns.rdatatype.OPT, EDNS_PAYLOAD, 0, 0)


@dataclass(frozen=True, slots=True)
class Query:
    """One query's wire bytes (RD set, EDNS0) and what a response to it must echo. Built by
    hand: ``dns.message.make_query`` costs fifty microseconds, and a sweep sends thousands."""

    id: int
    wire: bytes
    name: dns.name.Name
    rdtype: int

    @classmethod
    def make(cls, qname: str, qtype: str) -> Query:
        question, name, rdtype = _question(qname, qtype)
        qid = secrets.randbits(16)
        header = struct.pack("!HHHHHH", qid, dns.flags.RD, 1, 0, 0, 1)
        return cls(qid, header + question + _OPT, name, rdtype)

    def is_response(self, msg: dns.message.Message) -> bool:
        """As ``dns.message.Message.is_response``: our id, QR set, a query opcode, our
        question (or none, with an error rcode)."""
        if msg.id != self.id or not msg.flags & dns.flags.QR or \
                dns.opcode.from_flags(msg.flags) != dns.opcode.QUERY:
            return False
        if not msg.question and msg.rcode() in _QUESTIONLESS:
            return True
        return len(msg.question) == 1 and msg.question[0].rdtype == self.rdtype and \
            msg.question[0].rdclass == dns.rdataclass.IN and msg.question[0].name == self.name


_QUESTIONLESS = frozenset({dns.rcode.FORMERR, dns.rcode.SERVFAIL, dns.rcode.NOTIMP,
                           dns.rcode.REFUSED})


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
    # Addresses are facts: whether they are a sinkhole's bogons (or the user's own local
    # servers) is the analysis's one decision (blockwatch.analysis.bogons)
    return None


# --- where the query goes -------------------------------------------------------------------------


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


# --- reading responses --------------------------------------------------------------------------


def _response(
    data: bytes,
    q: Query,
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
    plain = _plain_answer(data, q)
    if plain is not None:
        return replace(header, answers=plain)
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


_ADDRESS: dict[int, tuple[int, int, str]] = {
    dns.rdatatype.A: (socket.AF_INET, 4, "A"), dns.rdatatype.AAAA: (socket.AF_INET6, 16, "AAAA")}


def _plain_answer(data: bytes, q: Query) -> tuple[DNSAnswer, ...] | None:
    """The answers of the commonest response, read directly: our id and question (echoed as
    sent), no flags but QR/AA/TC/RD/RA/AD/CD, only addresses of the asked type for the asked
    name, nothing in authority, at most an EDNS OPT record, nothing after. Anything else is
    None, and dnspython reads it (a CNAME chain, a referral, garbage, an injected oddity).
    The answers are what dnspython gives for the same bytes: its text form of each address,
    duplicates dropped, the lowest TTL for all (one RRset); tests/test_dns.py compares the two
    on thousands of generated and mangled messages. A sweep reads two responses a name: this
    costs a tenth of dnspython's full parse."""
    kind = _ADDRESS.get(q.rdtype)
    if kind is None or len(data) < 12:
        return None
    qid, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", data)
    if (qid != q.id or not flags & 0x8000 or flags & 0x7800 or qd != 1 or ns or ar > 1
            or flags & 0x40):  # opcode QUERY only, the Z bit clear
        return None
    question = q.wire[12:len(q.wire) - len(_OPT)]  # the name (case-blind), type and class
    end = 12 + len(question)
    if data[12:end - 4].lower() != question[:-4].lower() or data[end - 4:end] != question[-4:]:
        return None
    family, size, rtype = kind
    values: dict[str, None] = {}
    ttl = None
    at = end
    for _ in range(an):
        if data[at:at + 2] == b"\xc0\x0c":  # the owner: a pointer to the question's name
            at += 2
        else:
            return None
        if len(data) < at + 10:
            return None
        rdtype, rdclass, rr_ttl, length = struct.unpack_from("!HHIH", data, at)
        at += 10
        if rdtype != q.rdtype or rdclass != dns.rdataclass.IN or length != size or \
                len(data) < at + size or rr_ttl > 0x7FFFFFFF:
            return None
        values[socket.inet_ntop(family, data[at:at + size])] = None
        ttl = rr_ttl if ttl is None else min(ttl, rr_ttl)
        at += size
    if ar:  # an OPT record: the root name, type 41, no extended rcode, options skipped whole
        if len(data) < at + 11 or data[at] != 0 or data[at + 5] != 0 or \
                struct.unpack_from("!H", data, at + 1)[0] != dns.rdatatype.OPT:
            return None
        at += 11 + struct.unpack_from("!H", data, at + 9)[0]
    if at != len(data) or (flags & 0x0F) not in _PLAIN_RCODES:
        return None
    return tuple(DNSAnswer(rtype=rtype, value=v, ttl=ttl or 0) for v in values)


# rcodes whose text does not need EDNS's extended bits: NOERROR, FORMERR, SERVFAIL, NXDOMAIN,
# NOTIMP, REFUSED (an OPT record may extend the rcode: dnspython then reads it)
_PLAIN_RCODES = frozenset(range(6))


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
        self._loop.add_reader(sock.fileno(), self._drain)

    def _drain(self) -> None:
        while True:
            try:
                data, anc, _flags, addr = self._sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4))
            except OSError:  # drained (EAGAIN), or a queued ICMP error: nothing to record
                break
            self._queue.append(_Datagram(data, (addr[0], addr[1]), self._loop.time(), _ttl(anc)))
        if self._queue and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self, until: float) -> _Datagram | None:
        """The next datagram, or None once ``until`` (loop time) has passed."""
        while not self._queue:
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
        with _udp_socket(_family(where.address), ctx.source_address) as sock:
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
                while loop.time() < end:
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


# --- TCP and TLS --------------------------------------------------------------------------------


async def _stream(where: _Where, q: Query, ctx: ProbeContext, got: _Exchange,
                  silent: bool) -> None:
    """One query over TCP or TLS (DoT), length-prefixed (RFC 1035 4.2.2, RFC 7858).

    asyncio streams rather than ``dns.asyncquery.tcp``/``tls`` so that the raw bytes reach the
    same parser as UDP: a garbage reply is recorded with its header instead of raising.
    Connections are kept and reused for the next query to the same resolver (as RFC 7858 asks
    of clients: a sweep of a thousand names would otherwise make two thousand TLS handshakes
    with each control resolver); a kept connection the server has closed meanwhile is replaced
    once, at no cost to the query's timeout. TCP retransmits a lost segment itself; a query
    that timed out is confirmed by ``SharedQuery`` (a reset or a refusal is an answer).
    """
    pool = _pool(ctx, where)
    async with ctx.limits.resolver(where.key).hold(), pool.slots.hold():
        got.transmissions = 1
        async with asyncio.timeout(ctx.timeouts.dns):
            data, t = await pool.exchange(q.wire)
    got.add(_response(data, q, _endpoint(where.address, where.port), t))


# Connections kept open to one TCP/TLS/HTTPS resolver: a handful serve a sweep, and a small
# server (dnsmasq serves 20 TCP connections at once) is not crowded out by idle ones
STREAM_CONNECTIONS = 8


@dataclass(slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    slot: pacing.Slot


class _StreamPool:
    """Idle DNS-over-TCP/TLS connections to one resolver, one query on each at a time."""

    def __init__(self, where: _Where, ctx: ProbeContext) -> None:
        self._where, self._ctx = where, ctx
        self._idle: collections.deque[_Connection] = collections.deque()
        # one query per connection at a time: waiting for one is our queue, not the timeout's
        self.slots = pacing.Limiter(STREAM_CONNECTIONS)

    async def _open(self) -> _Connection:
        where, ctx = self._where, self._ctx
        tls = where.transport == "tls"
        slot = await ctx.limits.socket().acquire()
        try:
            reader, writer = await asyncio.open_connection(
                where.address, where.port,
                ssl=ctx.ssl_context() if tls else None,
                server_hostname=(where.spec.server_name or where.address) if tls else None,
                local_addr=(ctx.source_address, 0) if ctx.source_address else None)
        except BaseException:
            slot.release()
            raise
        return _Connection(reader, writer, slot)

    async def exchange(self, wire: bytes) -> tuple[bytes, float]:
        """Send one query and read one response: (its bytes, seconds after sending)."""
        while self._idle:
            kept = self._idle.popleft()
            try:
                return await self._ask(kept, wire)
            except (OSError, EOFError, asyncio.IncompleteReadError):
                continue  # closed by the server while idle: try another, or a new one
        return await self._ask(await self._open(), wire)

    async def _ask(self, conn: _Connection, wire: bytes) -> tuple[bytes, float]:
        """The next message on the connection. One that does not carry our id is recorded as
        it is (garbage, or a server out of step) and its connection is never reused."""
        loop = asyncio.get_running_loop()
        try:
            conn.writer.write(len(wire).to_bytes(2, "big") + wire)
            await conn.writer.drain()
            sent = loop.time()
            length = int.from_bytes(await conn.reader.readexactly(2), "big")
            data = await conn.reader.readexactly(length)
        except BaseException:
            _close(conn)
            raise
        if data[:2] == wire[:2]:
            self._idle.append(conn)
        else:
            _close(conn)
        return data, loop.time() - sent

    def close(self) -> None:
        while self._idle:
            _close(self._idle.popleft())


def _close(conn: _Connection) -> None:
    conn.writer.close()
    conn.slot.release()


def _pool(ctx: ProbeContext, where: _Where) -> _StreamPool:
    pools: dict[str, _StreamPool] = ctx.cache.setdefault("dns_streams", {})
    key = f"{where.key}#{where.spec.server_name or ''}"
    found = pools.get(key)
    if found is None:
        found = pools[key] = _StreamPool(where, ctx)
    return found


def close_connections(ctx: ProbeContext) -> list[Awaitable[None]]:
    """End the kept resolver connections of a sweep; the DoH clients' closings to await."""
    for pool in ctx.cache.pop("dns_streams", {}).values():
        pool.close()
    return [client.aclose() for client, _ in ctx.cache.pop("doh_clients", {}).values()]


# --- HTTPS (DoH) --------------------------------------------------------------------------------


async def _https(where: _Where, q: Query, ctx: ProbeContext, got: _Exchange,
                 silent: bool) -> None:
    """One query as a DoH POST (RFC 8484) to the scope-checked address.

    httpx directly: the installed dnspython (2.9) does DoH with ``httpx2``, which is not a
    dependency, and without a bootstrap address it would resolve the server's name itself,
    around the scope check. The URL is rewritten to the address, with the Host header and the
    TLS server name keeping the original name. One client per resolver and sweep keeps its
    connections (``STREAM_CONNECTIONS``) alive between queries.
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
    client, slots = _doh_client(ctx, where)
    async with ctx.limits.resolver(where.key).hold(), slots.hold():
        got.transmissions = 1
        async with asyncio.timeout(ctx.timeouts.dns):
            sent = loop.time()
            async with client.stream(
                "POST", urlunsplit(url._replace(netloc=netloc)), content=q.wire,
                headers=headers, extensions=extensions,
            ) as resp:
                data = await _read_capped(resp)
                t = loop.time() - sent
    if resp.status_code != 200:  # the body is a block page or an error, not a DNS message
        got.add(_response(b"", q, netloc, t, malformed=f"HTTP status {resp.status_code}"))
    else:
        got.add(_response(data, q, netloc, t))


def _doh_client(ctx: ProbeContext, where: _Where) -> tuple[httpx.AsyncClient, pacing.Limiter]:
    """The resolver's client, and the gate that admits as many requests as its pool has
    connections (so that no request waits in the pool, where the wait would count against
    its timeout)."""
    clients: dict[str, tuple[httpx.AsyncClient, pacing.Limiter]] = ctx.cache.setdefault(
        "doh_clients", {})
    key = f"{where.key}#{where.spec.address}"
    found = clients.get(key)
    if found is None:
        transport = httpx.AsyncHTTPTransport(
            verify=ctx.ssl_context(), local_address=ctx.source_address,
            limits=httpx.Limits(max_connections=STREAM_CONNECTIONS,
                                max_keepalive_connections=STREAM_CONNECTIONS))
        found = clients[key] = (httpx.AsyncClient(transport=transport, trust_env=False,
                                                  timeout=ctx.timeouts.dns),
                                pacing.Limiter(STREAM_CONNECTIONS))
    return found


async def _read_capped(resp: httpx.Response) -> bytes:
    """The body, up to one DNS message's maximum size: a hostile server may send gigabytes."""
    body = bytearray()
    async for chunk in resp.aiter_bytes():
        body += chunk
        if len(body) > MAX_MESSAGE:
            break
    return bytes(body)


_Transport = Callable[[_Where, Query, ProbeContext, _Exchange, bool],
                      Awaitable[None]]
_EXCHANGES: dict[str, _Transport] = {"udp": _udp, "tcp": _stream, "tls": _stream,
                                     "https": _https}


# --- planning ----------------------------------------------------------------------------------

SILENT = ("silent", "yes")  # the option that marks a query to a silent address


def plan_targets(service: Service, pc: PlanContext) -> list[Target]:
    """Each of the service's names at every resolver and control resolver, and once (over UDP)
    at each silent address, where any answer is forged on the path."""
    out: list[Target] = []
    for host in hosts(service):
        for resolver in dict.fromkeys([*pc.resolvers, *pc.controls]):
            out.append(Target(service=service.name, probe="dns", host=host, resolver=resolver))
        for address in dict.fromkeys(pc.silent):
            shown = f"[{address}]" if ":" in address else address
            out.append(Target(service=service.name, probe="dns", host=host,
                              resolver=f"udp://{shown}", options=(SILENT,)))
    return out
