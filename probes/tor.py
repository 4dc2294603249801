"""Tor relay or bridge reachability: a TLS handshake to its OR port.

Tor relays present self-signed certificates with random names, so the certificate is recorded
but not verified: a completed handshake proves a TLS server on the OR port, which is what a
censor blocking Tor by address or by TLS fingerprint prevents. obfs4 bridges and Shadowsocks
servers stay silent to anyone without their secrets: for those, plan a ``tcp`` target (TCP
reachability only) and label it so.

Both connections are the dialer's: the first races the name's addresses (``VPNAttempt.connect``),
the second goes to the address that answered, its connect and handshake under ``ctx.timeouts.tls``
once our limits let it start.
"""

from __future__ import annotations

import asyncio
import hashlib

from blockwatch.probes.context import ProbeContext, ProbeResult
from blockwatch.probes.dial import Dialer
from blockwatch.probes.model import Target
from blockwatch.probes.vpnbase import begin


class TorProbe:
    name = "tor"
    version = "2"  # 2: the addresses raced by the one dialer, from the source address,
    # under our limits (1: the first address only, the kernel's source address)

    async def observe(self, target: Target, ctx: ProbeContext) -> ProbeResult:
        attempt = await begin(target, ctx, "tor", target.port or 443, "tcp")
        if isinstance(attempt, ProbeResult):
            return attempt
        connected = False
        try:
            (await attempt.connect(ctx, ctx.timeouts.tcp)).close()
            connected = True
            # a second connection, to the address that answered, for the handshake: one
            # timeout for both once our limits let it start
            limit = ctx.timeouts.tls
            dialer = Dialer.of(ctx, via_proxy=False)
            conn = await dialer.connect(attempt.address, attempt.port, limit)
            try:  # the socket is the transport's from here: closed with it, even on failure
                async with asyncio.timeout(conn.left(limit)):
                    # the address as the server name: no SNI is sent for an IP, as before
                    _, writer = await asyncio.open_connection(
                        sock=conn.sock, ssl=ctx.ssl_context(verify=False),
                        server_hostname=attempt.address)
                ssl_object = writer.get_extra_info("ssl_object")
                der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
                version = ssl_object.version() if ssl_object else None
                writer.close()
            finally:
                conn.slot.release()
        except Exception as exc:
            # the TLS handshake is this protocol's handshake: judged with the VPN rules
            return attempt.failed(exc, default="tls_failed",
                                  stage="tls_handshake" if connected else "connect")
        return attempt.done("reachable", None,
                            cert_sha256=hashlib.sha256(der or b"").hexdigest(),
                            tls_version=str(version))
