"""What every VPN probe does before and after its protocol: find the address, check the scope,
connect (over TCP: through the dialer), time the attempt, and turn the outcome into one
VPNObservation (after the lookup's DNS facts).

Guarantees:

- Over UDP the handshake goes to the name's first address; nothing is sent if the scope does
  not admit it (``not_sent``, ``out_of_scope``).
- Over TCP (``VPNAttempt.connect``) the name's addresses that the scope admits are raced by the
  dialer (RFC 8305, ``probes.dial.Dialer.race``) under our limits and from the configured source
  address; the observation's address is the one that connected (else the first); nothing is
  sent if the scope admits none of them. VPN probes go direct, never through ``ctx.proxy``.
- The handshake's time ``t`` counts from the attempt's start (our queue included: the
  measurement's ``queued_s`` says how much of it was ours); its timeouts never do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from blockwatch.probes import failures as F
from blockwatch.probes.context import ProbeContext, ProbeResult
from blockwatch.probes.dial import Connection, Dialer
from blockwatch.probes.model import (
    SILENT_PROTOCOLS,
    DNSObservation,
    Service,
    Target,
    VPNEndpoint,
    VPNObservation,
)
from blockwatch.probes.targets import PlanContext

OPERATION = "vpn_handshake"
# what a failure string means for a handshake (on UDP, "refused" is an ICMP port unreachable)
_RESULTS = {F.GENERIC_TIMEOUT: "no_reply", F.CONNECTION_RESET: "reset",
            F.CONNECTION_REFUSED: "refused", F.EOF_ERROR: "closed",
            F.HOST_UNREACHABLE: "icmp_unreachable", F.NETWORK_UNREACHABLE: "icmp_unreachable"}


@dataclass
class VPNAttempt:
    """One handshake attempt of a VPN probe, from the lookup to its observation."""

    protocol: str
    address: str
    port: int
    transport: str
    dns: tuple[DNSObservation, ...] = ()
    addresses: tuple[str, ...] = ()  # the addresses the scope admits (TCP: all may be raced)
    t0: float = field(default_factory=time.time)
    start: float = field(default_factory=time.perf_counter)

    def done(self, result: str, failure: str | None, **details: str) -> ProbeResult:
        o = VPNObservation(protocol=self.protocol, address=self.address, port=self.port,
                           transport=self.transport, t0=self.t0,
                           t=round(time.perf_counter() - self.start, 6), result=result,
                           details=tuple(sorted(details.items())), failure=failure)
        return ProbeResult((*self.dns, o), failure, OPERATION if failure else None)

    def failed(self, exc: BaseException, default: str = "error", **details: str) -> ProbeResult:
        """The result of a handshake that raised: its failure string and what it means."""
        failure = F.classify(exc)
        if self.transport == "udp" and failure == F.CONNECTION_REFUSED:
            result = "icmp_unreachable"  # ICMP port unreachable on a connected UDP socket
        else:
            result = _RESULTS.get(failure, default)
        return self.done(result, failure, **details)

    async def connect(self, ctx: ProbeContext, limit: float) -> Connection:
        """A TCP connection for the handshake: the admitted addresses raced, the connect under
        ``limit`` once our limits let it start; ``address`` becomes the one that connected."""
        conn = await Dialer.of(ctx, via_proxy=False).race(self.addresses, self.port, limit)
        self.address = conn.address
        return conn


async def begin(target: Target, ctx: ProbeContext, protocol: str, port: int,
                transport: str) -> VPNAttempt | ProbeResult:
    """The attempt, or the result that ends it before a packet is sent (no address, or no
    address inside the scope)."""
    lookup = await ctx.lookup(target.host)
    if not lookup.addresses:
        return ProbeResult(lookup.observations, lookup.failure or F.DNS_NO_ANSWER, "resolve")
    tried = lookup.addresses if transport == "tcp" else lookup.addresses[:1]
    allowed = tuple(a for a in tried if ctx.scope.allows(a))
    attempt = VPNAttempt(protocol, (allowed or tried)[0], port, transport, lookup.observations,
                         allowed)
    if not allowed:
        return attempt.done("not_sent", F.OUT_OF_SCOPE)
    return attempt


# --- planning ----------------------------------------------------------------------------------


def vpn_target(service: str, ep: VPNEndpoint) -> Target:
    """The target for a VPN endpoint. Protocols that stay silent without their secret (obfs4,
    Shadowsocks) become TCP reachability targets, labelled so in their options."""
    if ep.protocol in SILENT_PROTOCOLS:
        return Target(service=service, probe="tcp", host=ep.host, port=ep.port,
                      options=(("silent_protocol", ep.protocol), *ep.options))
    return Target(service=service, probe=ep.protocol, host=ep.host, port=ep.port,
                  transport=ep.transport, options=ep.options)


def plan_targets(service: Service, pc: PlanContext) -> list[Target]:
    """Every VPN endpoint of the service, each for its protocol's probe."""
    return [vpn_target(service.name, ep) for ep in service.vpn]
