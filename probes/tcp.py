"""The TCP connect probe: can each address of an endpoint be connected to?

Guarantees:

- Every address a name resolves to (IPv4 and IPv6) is dialled, concurrently and each on its own
  (``probes.dial.attempt``: never raced, the TCP probe measures every address), and each attempt
  is one ``TCPObservation``; the measurement fails only if every address failed, with the first
  address's failure.
- The scope is checked before any socket is opened: an out-of-scope address is recorded as
  ``out_of_scope`` and no packet is sent to it.
- With a SOCKS5 proxy (``ctx.proxy``) the name is resolved by the proxy: one observation whose
  address is the name itself. A proxy that cannot be reached or misbehaves fails with operation
  ``proxy_connect`` (our side, not the target); a target the proxy cannot reach fails with
  ``connect``, like a direct connection would.
- Where every address failed to connect, the control resolvers' addresses for the name that
  our answer did not give are tried too (``control_answers``), recorded with ``answer_of``:
  evidence for the DNS rules, never the measurement's outcome.
- Times (``t0``, ``t``) are seconds since the probe started observing the target; a connection
  first takes its share of our limits, then starts its timeout (``probes.dial``).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from blockwatch.probes import failures as F
from blockwatch.probes.context import ProbeContext, ProbeResult
from blockwatch.probes.dial import Clock as Clock  # its home before probes.dial
from blockwatch.probes.dial import Dialed, Route, attempt, close, first_failure, plan
from blockwatch.probes.model import Observation, Service, Target
from blockwatch.probes.targets import PlanContext, tcp_endpoints


async def connect_only(ctx: ProbeContext, route: Route, clock: Clock) -> Dialed:
    """Connect and close at once (the TCP probe needs no streams: a bare socket, as a sweep
    makes thousands of these connections)."""
    dialed = await attempt(ctx, route, clock)
    await close(dialed)
    return dialed


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
        # our answer's addresses were tried and failed on the network (not refused by the
        # scope: then nothing was sent, and there is nothing to compare)
        if (failure is not None and failure != F.OUT_OF_SCOPE and operation == "connect"
                and not ctx.proxy):
            observations += await control_answers(ctx, target.host, target.port,
                                                  {r.address for r in found.routes}, clock)
        return ProbeResult(observations, failure, operation)


CONTROL_ANSWERS = 2  # addresses of a control resolver's answer tried, at most, per resolver


async def control_answers(ctx: ProbeContext, host: str, port: int, ours: set[str],
                          clock: Clock) -> tuple[Observation, ...]:
    """When every address of our own answer failed: connect to the control resolvers'
    addresses for the name (asked anyway by the dns probe: shared queries, nothing more is
    sent to them) that our answer did not give, as OONI's web_connectivity does. If they
    connect from here while ours do not, the DNS answer is the problem, not the network
    (``dns.inconsistent.corroborated``). Recorded with ``answer_of``; never the outcome."""
    from blockwatch.probes.dns import lookup_at

    out: list[Observation] = []
    for spec in ctx.control_resolvers:
        found = await lookup_at(spec, host, ctx)
        extra = [a for a in found if a not in ours and ctx.scope.allows(a)][:CONTROL_ANSWERS]
        dialed = await asyncio.gather(*(connect_only(ctx, Route(a, port), clock) for a in extra))
        out += [replace(d.observation, answer_of=str(spec)) for d in dialed]
    return tuple(out)


def plan_targets(service: Service, pc: PlanContext) -> list[Target]:
    """Every TCP endpoint of the service (its URLs' and its extra ones)."""
    return [Target(service=service.name, probe="tcp", host=h, port=p)
            for (h, p) in tcp_endpoints(service)]
