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

from blockwatch.probes.context import ProbeContext, ProbeResult
from blockwatch.probes.model import Target
from blockwatch.probes.vpnbase import begin


class TorProbe:
    name = "tor"
    version = "1"

    async def observe(self, target: Target, ctx: ProbeContext) -> ProbeResult:
        attempt = await begin(target, ctx, "tor", target.port or 443, "tcp")
        if isinstance(attempt, ProbeResult):
            return attempt
        address, port, done = attempt.address, attempt.port, attempt.done
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
            # the TLS handshake is this protocol's handshake: judged with the VPN rules
            return attempt.failed(exc, default="tls_failed",
                                  stage="tls_handshake" if connected else "connect")
        return done("reachable", None, cert_sha256=hashlib.sha256(der or b"").hexdigest(),
                    tls_version=str(version))
