"""The IKEv2 probe: IKE_SA_INIT builder and reply parser, and the probe against a real
strongSwan responder on loopback."""

from __future__ import annotations

import os
import random
import socket
import struct
from pathlib import Path

import pytest
from strongswan_server import AVAILABLE, strongswan_responder

from blockwatch.probes import failures as F
from blockwatch.probes.context import ProbeContext, Timeouts
from blockwatch.probes.ikev2 import (
    IKE_SA_INIT,
    PAYLOAD_NOTIFY,
    PAYLOAD_SA,
    IKEv2Probe,
    MalformedReply,
    build_sa_init,
    parse_sa_init_reply,
)
from blockwatch.probes.model import Target, VPNObservation
from blockwatch.probes.scope import Scope

needs_charon = pytest.mark.skipif(
    not AVAILABLE and not os.environ.get("BLOCKWATCH_REQUIRE_LAB"),
    reason="needs root and Debian's strongswan-charon (sudo bash scripts/install-lab-deps.sh)")


def notify_reply(spi: bytes, ntype: int = 14) -> bytes:
    """A responder's IKE_SA_INIT answer carrying one Notify (as strongSwan sends)."""
    body = struct.pack(">BBHBBH", 0, 0, 8, 0, 0, ntype)
    header = spi + os.urandom(8) + struct.pack(">BBBBII", PAYLOAD_NOTIFY, 0x20, IKE_SA_INIT,
                                                0x20, 0, 28 + len(body))
    return header + body


def test_request_layout() -> None:
    spi = os.urandom(8)
    pkt = build_sa_init(spi, public_key=b"k" * 32, nonce=b"n" * 32)
    assert pkt[:8] == spi and pkt[8:16] == b"\x00" * 8
    next_payload, version, exchange, flags, msgid, length = struct.unpack(">BBBBII", pkt[16:28])
    assert (next_payload, version, exchange, flags, msgid) == (PAYLOAD_SA, 0x20, 34, 0x08, 0)
    assert length == len(pkt)
    assert b"k" * 32 in pkt and pkt.endswith(b"n" * 32)
    with pytest.raises(ValueError):
        build_sa_init(b"x", public_key=b"k" * 32, nonce=b"n" * 32)


def test_parser_reads_notifies_and_checks_the_spi() -> None:
    spi = os.urandom(8)
    parsed = parse_sa_init_reply(notify_reply(spi), spi=spi)
    assert parsed.kind == "notify:NO_PROPOSAL_CHOSEN"
    assert parse_sa_init_reply(notify_reply(spi, 16390), spi=spi).notifies == ("COOKIE",)
    with pytest.raises(MalformedReply, match="SPI"):
        parse_sa_init_reply(notify_reply(os.urandom(8)), spi=spi)


def test_malformed_and_truncated_replies_only_raise_malformed() -> None:
    spi = os.urandom(8)
    good = notify_reply(spi)
    rng = random.Random(11)
    samples = [good[:n] for n in range(len(good))]
    samples += [spi + bytes(rng.randrange(256) for _ in range(rng.randrange(80)))
                for _ in range(500)]
    bad_len = bytearray(good)
    bad_len[30:32] = b"\xff\xff"  # payload length beyond the message
    samples.append(bytes(bad_len))
    for data in samples:
        with pytest.raises(MalformedReply):
            parse_sa_init_reply(data, spi=spi)


def target(port: int, natt: bool = False) -> Target:
    return Target(service="vpn", probe="ikev2", host="127.0.0.1", port=port, transport="udp",
                  options=(("natt", "yes" if natt else "no"),))


def ctx() -> ProbeContext:
    return ProbeContext(scope=Scope.loopback(), timeouts=Timeouts(tcp=1.5))


def vpn(result: object) -> VPNObservation:
    return next(o for o in result.observations  # type: ignore[attr-defined]
                if isinstance(o, VPNObservation))


@needs_charon
async def test_real_responder_answers_on_both_ports(tmp_path: Path) -> None:
    with strongswan_responder(tmp_path) as charon:
        ike = await IKEv2Probe().observe(target(charon.port, natt=True), ctx())
        natt = await IKEv2Probe().observe(target(charon.natt_port, natt=True), ctx())
    for result in (ike, natt):
        o = vpn(result)
        assert (o.result, result.failure) == ("reachable", None)
        assert ("reply", "notify:NO_PROPOSAL_CHOSEN") in o.details
    assert "parsed IKE_SA_INIT request 0 [ SA KE No ]" in charon.log.read_text()


async def test_closed_and_silent_ports() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        silent = await IKEv2Probe().observe(target(port), ctx())
    closed = await IKEv2Probe().observe(target(port), ctx())
    assert (vpn(silent).result, silent.failure) == ("no_reply", F.GENERIC_TIMEOUT)
    assert (vpn(closed).result, closed.failure) == ("icmp_unreachable", F.CONNECTION_REFUSED)


async def test_out_of_scope_sends_nothing() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        c = ProbeContext(scope=Scope.from_entries(["10.0.0.0/8"]), timeouts=Timeouts(tcp=0.5))
        result = await IKEv2Probe().observe(target(s.getsockname()[1]), c)
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.recv(2048)
    assert result.failure == F.OUT_OF_SCOPE
