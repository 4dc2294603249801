"""TLS facts as the records promise them: the version of every completed handshake (also when
the server sends data right after its Finished, as an HTTP/2 server sends SETTINGS) and cipher
suites by their IANA names."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import pytest
from servers import make_pki
from test_tcp_tls_http import context, of

from blockwatch.probes.cipher_suites import OPENSSL_TO_IANA, iana_name
from blockwatch.probes.model import Target, TLSObservation
from blockwatch.probes.tls import TLSProbe


def test_every_cipher_python_knows_has_its_iana_name() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with contextlib.suppress(ssl.SSLError):
        ctx.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    known = ctx.get_ciphers()
    assert len(known) > 30
    for cipher in known:
        code = cipher["id"] & 0xFFFF
        name = iana_name(cipher["name"])
        assert name is not None and name.startswith("TLS_"), cipher["name"]
        if cipher["name"] in OPENSSL_TO_IANA:  # the table's code point is OpenSSL's
            assert OPENSSL_TO_IANA[cipher["name"]][0] == code, cipher["name"]
    assert iana_name("ECDHE-RSA-AES128-GCM-SHA256") == "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
    assert iana_name("TLS_AES_128_GCM_SHA256") == "TLS_AES_128_GCM_SHA256"
    assert iana_name("SOMETHING-NEW") == "SOMETHING-NEW" and iana_name(None) is None


class EagerServer:
    """TLS over memory BIOs whose last handshake flight and first application data leave in one
    write: the client has data waiting when it sends close_notify (what made OpenSSL's shutdown
    fail and the probe record ``version: null`` for 98% of a lab sweep's handshakes)."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx, self.port, self.done = ctx, 0, 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.ctx.wrap_bio(incoming, outgoing, server_side=True)
        with contextlib.suppress(OSError, ssl.SSLError):
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    writer.write(outgoing.read())
                    data = await reader.read(16384)
                    if not data:
                        return
                    incoming.write(data)
            tls.write(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00")  # what an h2 SETTINGS looks like
            writer.write(outgoing.read())  # Finished + data: one segment
            self.done += 1
            await reader.read(16384)
        writer.close()


@pytest.mark.parametrize("tls_max", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_version_recorded_when_the_server_speaks_first(tmp_path: Path,
                                                             tls_max: ssl.TLSVersion) -> None:
    pki = make_pki(tmp_path)
    server_ctx = pki.server_context(pki.valid)
    server_ctx.maximum_version = tls_max
    eager = EagerServer(server_ctx)
    server = await asyncio.start_server(eager.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        target = Target(service="s", probe="tls", host="example.test", port=port)
        result = await TLSProbe().observe(target, context("127.0.0.1", ca_bundle=pki.ca_bundle))
    finally:
        server.close()
    assert result.failure is None and eager.done == 1
    (tls,) = of(TLSObservation, result.observations)
    expected = "TLSv1.2" if tls_max == ssl.TLSVersion.TLSv1_2 else "TLSv1.3"
    assert tls.version == expected
    assert tls.cipher is not None and tls.cipher.startswith("TLS_")
    if tls_max == ssl.TLSVersion.TLSv1_2:  # trustme's keys are EC: an ECDHE_ECDSA suite
        assert tls.cipher.startswith("TLS_ECDHE_ECDSA_WITH_"), tls.cipher
    assert tls.t >= tls.t0
