"""What every VPN probe does before and after its protocol: find the address, check the scope,
time the attempt, and turn the outcome into one VPNObservation (after the lookup's DNS facts).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from blockwatch.probes import failures as F
from blockwatch.probes.context import ProbeContext, ProbeResult
from blockwatch.probes.model import DNSObservation, Target, VPNObservation

OPERATION = "vpn_handshake"
# what a failure string means for a handshake (on UDP, "refused" is an ICMP port unreachable)
_RESULTS = {F.GENERIC_TIMEOUT: "no_reply", F.CONNECTION_RESET: "reset",
            F.CONNECTION_REFUSED: "refused", F.EOF_ERROR: "closed",
            F.HOST_UNREACHABLE: "icmp_unreachable", F.NETWORK_UNREACHABLE: "icmp_unreachable"}


@dataclass
class Attempt:
    protocol: str
    address: str
    port: int
    transport: str
    dns: tuple[DNSObservation, ...] = ()
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


async def begin(target: Target, ctx: ProbeContext, protocol: str, port: int,
                transport: str) -> Attempt | ProbeResult:
    """The attempt, or the result that ends it before a packet is sent (no address, or an
    address outside the scope)."""
    lookup = await ctx.lookup(target.host)
    if not lookup.addresses:
        return ProbeResult(lookup.observations, lookup.failure or F.DNS_NO_ANSWER, "resolve")
    attempt = Attempt(protocol, lookup.addresses[0], port, transport, lookup.observations)
    if not ctx.scope.allows(attempt.address):
        return attempt.done("not_sent", F.OUT_OF_SCOPE)
    return attempt
