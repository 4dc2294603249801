"""The DNS probe: query a resolver over UDP, TCP, TLS or HTTPS and keep every response.

This module has the probe, the sweep's shared queries (``Resolutions``, ``SharedQuery``,
``lookup``, ``query``), the failure a stub resolver would meet (``_failure``), the table of
transports and the planner. The DNS message itself (a query's bytes, reading a response) is in
``probes.dns_wire``; where a query goes, what an exchange collects and the UDP exchange are in
``probes.dns_transport``; TCP, TLS (DoT) and HTTPS (DoH) are in ``probes.dns_stream``. Each of
those states its own guarantees; the probe's, in short:

- Nothing is sent to an address the scope does not admit; such a query fails ``out_of_scope``.
  The system resolver is read from /etc/resolv.conf (no packets) once per sweep (the next
  sweep's context, ``ProbeContext.for_sweep``, reads it again) and queried like any other;
  ``getaddrinfo`` is never used, and a DoH name is looked up with ``ctx.lookup``
  (``dns_transport._destination``).
- **One resolution per name per sweep**: each (resolver, name, type) is asked once
  (``Resolutions``) and shared by the DNS probe and by every probe that needs the name's
  addresses. Those act on the first well-formed response, as a stub resolver would
  (``SharedQuery.first``), while the query keeps listening in the background for late or
  injected answers (``SharedQuery.complete``), holding no slot of ours.
- Over UDP every response within the injection window is recorded, so an injector's forged
  answer and the resolver's real one are both kept (``dns_transport``).
- Loss: a UDP query without any response is sent again within its timeout
  (``dns_transport.retransmissions``); a query that still got no response at all is then asked
  once more, anew (a new id and socket or connection: ``attempt`` 2), so that its silence is
  confirmed before it counts. Both are recorded.
- A query holds its resolver's in-flight slot until its first response, or until its first
  retransmission is due (then it is presumed lost): a dropped name does not block the others.
- A target marked ``("silent", "yes")`` (``[dns] silent``: an address where no DNS server runs)
  gets one A query, never repeated; any response to it was forged on the path.
- A response never raises: bytes that do not parse are recorded with ``malformed=<reason>``
  (``dns_wire._response``).
- Every observation carries at most one failure string from ``probes.failures``, decided from
  the first well-formed response (what a stub resolver would act on).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import httpx

from blockwatch.probes import failures, pacing
from blockwatch.probes.context import Lookup, ProbeContext, ProbeResult
from blockwatch.probes.dns_stream import _https, _stream
from blockwatch.probes.dns_stream import close_connections as close_connections
from blockwatch.probes.dns_transport import INJECTION_WINDOW_S as INJECTION_WINDOW_S
from blockwatch.probes.dns_transport import _destination, _Exchange, _udp, _Where
from blockwatch.probes.dns_transport import retransmissions as retransmissions
from blockwatch.probes.dns_wire import Query, _Responses
from blockwatch.probes.errors import KnownFailure
from blockwatch.probes.model import DNSObservation, Service, Target
from blockwatch.probes.resolvers import ResolverSpec, parse_resolver
from blockwatch.probes.targets import PlanContext, hosts

# RFC 8305's Resolution Delay: a fetch that has IPv4 addresses waits this long for IPv6 ones
RESOLUTION_DELAY_S = 0.05


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


async def lookup_at(spec: ResolverSpec, host: str, ctx: ProbeContext) -> tuple[str, ...]:
    """The addresses ``spec`` gives for ``host`` (A then AAAA, the first answers), from the
    sweep's shared queries: the ones the dns probe asks that resolver anyway."""
    qa = ctx.resolutions.get(spec, host, "A")
    qaaaa = ctx.resolutions.get(spec, host, "AAAA")
    with pacing.waiting(record=False):
        found = (await _first(qa), await _first(qaaaa))
    _credit(qa, qaaaa)
    return tuple(dict.fromkeys(a for o in found for a in o.addresses))


async def query(spec: ResolverSpec, qname: str, rdtype: str, ctx: ProbeContext) -> DNSObservation:
    """One query, not shared, without confirmation: what one exchange with the resolver saw.
    Never raises for anything on the network."""
    shared = SharedQuery(spec, qname, rdtype, replace(ctx, dns_confirm=False))
    (obs,) = await shared.complete()
    return obs


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


# the transport of each resolver scheme (udp, tcp, tls, https)
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
