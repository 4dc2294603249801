"""Tor relay or bridge reachability: a TLS handshake to its OR port.

Tor relays present self-signed certificates with random names, so the certificate is recorded
but not verified: a completed handshake proves a TLS server on the OR port, which is what a
censor blocking Tor by address or by TLS fingerprint prevents. obfs4 bridges and Shadowsocks
servers stay silent to anyone without their secrets: for those, plan a ``tcp`` target (TCP
reachability only) and label it so.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

from probes import failures as F
from probes.context import ProbeContext, ProbeResult
from probes.model import Target, VPNObservation

# the TLS handshake is this protocol's handshake: judged with the VPN rules (probes.verdicts)
OPERATION = "vpn_handshake"


class TorProbe:
    name = "tor"
    version = "1"

    async def observe(self, target: Target, ctx: ProbeContext) -> ProbeResult:
        port = target.port or 443
        lookup = await ctx.lookup(target.host)
        if not lookup.addresses:
            return ProbeResult(lookup.observations, lookup.failure or F.DNS_NO_ANSWER, "resolve")
        address = lookup.addresses[0]
        t0, start = time.time(), time.perf_counter()

        def done(result: str, failure: str | None, operation: str | None = None,
                 **details: str) -> ProbeResult:
            o = VPNObservation(protocol="tor", address=address, port=port, transport="tcp",
                               t0=t0, t=round(time.perf_counter() - start, 6), result=result,
                               details=tuple(sorted(details.items())), failure=failure)
            return ProbeResult((*lookup.observations, o), failure, operation)

        if not ctx.scope.allows(address):
            return done("not_sent", F.OUT_OF_SCOPE, OPERATION)
        connected = False
        try:
            async with asyncio.timeout(ctx.timeouts.tcp):
                _, writer = await asyncio.open_connection(address, port)
            connected = True
            writer.close()
            async with asyncio.timeout(ctx.timeouts.tls):
                _, writer = await asyncio.open_connection(
                    address, port, ssl=ctx.ssl_context(verify=False), server_hostname=None)
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
            version = ssl_object.version() if ssl_object else None
            writer.close()
        except Exception as exc:
            failure = F.classify(exc)
            result = {F.GENERIC_TIMEOUT: "no_reply", F.CONNECTION_RESET: "reset",
                      F.CONNECTION_REFUSED: "refused"}.get(failure, "tls_failed")
            return done(result, failure, OPERATION,
                        stage="tls_handshake" if connected else "connect")
        return done("reachable", None, cert_sha256=hashlib.sha256(der or b"").hexdigest(),
                    tls_version=str(version))
