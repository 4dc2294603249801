"""PPTP, L2TP and Tor probes: packet builders and parsers, and the probes against real servers
(Debian's pptpd and xl2tpd on loopback; a TLS server with a self-signed certificate standing in
for a Tor relay's OR port)."""

from __future__ import annotations

import os
import random
import socket
import ssl
import struct
from pathlib import Path

import pytest
import trustme
from servers import LoopbackServer, silent
from vpn_servers import PPTPD, XL2TPD, pptpd, xl2tpd

from blockwatch.probes import failures as F
from blockwatch.probes import l2tp, pptp
from blockwatch.probes.context import ProbeContext, ProbeResult, Timeouts
from blockwatch.probes.model import Target, VPNObservation
from blockwatch.probes.scope import Scope
from blockwatch.probes.tor import TorProbe

REQUIRE = bool(os.environ.get("BLOCKWATCH_REQUIRE_LAB"))
needs_pptpd = pytest.mark.skipif(PPTPD is None and not REQUIRE, reason="Debian's pptpd missing")
needs_xl2tpd = pytest.mark.skipif(XL2TPD is None and not REQUIRE,
                                  reason="Debian's xl2tpd missing")


def ctx() -> ProbeContext:
    return ProbeContext(scope=Scope.loopback(), timeouts=Timeouts(tcp=1.0, tls=1.0))


def vpn(result: ProbeResult) -> VPNObservation:
    return next(o for o in result.observations if isinstance(o, VPNObservation))


def target(probe: str, port: int) -> Target:
    return Target(service="vpn", probe=probe, host="127.0.0.1", port=port)


def test_pptp_sccrq_layout() -> None:
    pkt = pptp.build_sccrq()
    assert len(pkt) == 156
    length, kind, magic, ctrl = struct.unpack(">HHIH", pkt[:10])
    assert (length, kind, magic, ctrl) == (156, 1, 0x1A2B3C4D, 1)


def test_l2tp_sccrq_layout() -> None:
    pkt = l2tp.build_sccrq(0x1234)
    flags, length = struct.unpack(">HH", pkt[:4])
    assert flags == 0xC802 and length == len(pkt)
    assert pkt[12:20] == struct.pack(">HHHH", 0x8008, 0, 0, 1)  # Message Type AVP = SCCRQ


def test_parsers_reject_garbage_with_malformed_only() -> None:
    rng = random.Random(5)
    for _ in range(400):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        with pytest.raises(pptp.MalformedReply):
            pptp.parse_reply(data)
        with pytest.raises(l2tp.MalformedReply):
            l2tp.parse_reply(data, tunnel_id=7)
    reply = pptp.build_sccrq()  # our own request is not a reply
    with pytest.raises(pptp.MalformedReply):
        pptp.parse_reply(reply)


@needs_pptpd
async def test_pptp_real_server(tmp_path: Path) -> None:
    with pptpd(tmp_path) as port:
        result = await pptp.PPTPProbe().observe(target("pptp", port), ctx())
    assert (vpn(result).result, result.failure) == ("reachable", None)
    assert ("reply", "ok") in vpn(result).details


@needs_xl2tpd
async def test_l2tp_real_server(tmp_path: Path) -> None:
    with xl2tpd(tmp_path) as port:
        result = await l2tp.L2TPProbe().observe(target("l2tp", port), ctx())
    assert (vpn(result).result, result.failure) == ("reachable", None)
    assert ("reply", "SCCRP") in vpn(result).details


async def test_pptp_refused_and_silent() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        refused = await pptp.PPTPProbe().observe(target("pptp", s.getsockname()[1]), ctx())
    assert (vpn(refused).result, refused.failure) == ("refused", F.CONNECTION_REFUSED)
    async with LoopbackServer(silent) as server:
        quiet = await pptp.PPTPProbe().observe(target("pptp", server.port), ctx())
    assert (vpn(quiet).result, quiet.failure) == ("no_reply", F.GENERIC_TIMEOUT)


async def test_l2tp_closed_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = await l2tp.L2TPProbe().observe(target("l2tp", port), ctx())
    assert (vpn(result).result, result.failure) == ("icmp_unreachable", F.CONNECTION_REFUSED)


async def test_tor_or_port_with_self_signed_certificate() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("www.randomrelayname.net")  # relays use random names
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    async with LoopbackServer(silent, tls=server_ctx) as relay:
        ok = await TorProbe().observe(target("tor", relay.port), ctx())
    assert (vpn(ok).result, ok.failure) == ("reachable", None)
    async with LoopbackServer(silent) as plain:  # an open port that is not TLS
        bad = await TorProbe().observe(target("tor", plain.port), ctx())
    assert bad.failure == F.GENERIC_TIMEOUT and bad.operation == "vpn_handshake"
    assert ("stage", "tls_handshake") in vpn(bad).details
