"""The OpenVPN probe: packet builder and parser, and the probe against a real OpenVPN server
(Debian's openvpn on loopback) with and without tls-auth, over UDP and TCP."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
from pathlib import Path

import pytest
from openvpn_server import OPENVPN, make_static_key, openvpn_server

from blockwatch.probes import failures as F
from blockwatch.probes.context import ProbeContext, Timeouts, secret_key
from blockwatch.probes.model import Target, VPNObservation
from blockwatch.probes.openvpn import (
    UNVERIFIABLE,
    MalformedReply,
    OpenVPNProbe,
    TLSAuthKey,
    build_client_reset,
    frame_tcp,
    parse_server_reset,
    parse_static_key,
    udp_send_times,
)
from blockwatch.probes.runner import run_probe
from blockwatch.probes.scope import Scope

needs_openvpn = pytest.mark.skipif(
    OPENVPN is None and not os.environ.get("BLOCKWATCH_REQUIRE_LAB"),
    reason="Debian package openvpn not installed (bash scripts/install-lab-deps.sh)")


def server_reset(our_session: bytes, *, key: TLSAuthKey | None = None,
                 server_session: bytes = b"S" * 8) -> bytes:
    """A server hard reset as OpenVPN writes one (used to test the parser)."""
    head = bytes([8 << 3]) + server_session
    body = b"\x01" + struct.pack(">I", 0) + our_session + struct.pack(">I", 0)
    if key is None:
        return head + body
    replay = struct.pack(">II", 1, 1_700_000_000)
    mac = key.sign(replay + head + body, outgoing=True)
    return head + mac + replay + body


def test_client_reset_layout() -> None:
    sid = bytes(range(8))
    pkt = build_client_reset(sid)
    assert pkt == b"\x38" + sid + b"\x00" + b"\x00\x00\x00\x00"
    assert frame_tcp(pkt)[:2] == struct.pack(">H", len(pkt))
    with pytest.raises(ValueError):
        build_client_reset(b"short")


def test_parser_accepts_an_echo_of_our_session_only() -> None:
    ours = os.urandom(8)
    parsed = parse_server_reset(server_reset(ours), our_session=ours)
    assert parsed.session_id == b"S" * 8 and parsed.acks == (0,)
    with pytest.raises(MalformedReply, match="does not acknowledge"):
        parse_server_reset(server_reset(os.urandom(8)), our_session=ours)


def test_tls_auth_signatures_round_trip(tmp_path: Path) -> None:
    text = (
        "#\n-----BEGIN OpenVPN Static key V1-----\n"
        + "\n".join(bytes(range(i, i + 16)).hex() for i in range(0, 256, 16))
        + "\n-----END OpenVPN Static key V1-----\n"
    )
    client = parse_static_key(text, 1)
    server = parse_static_key(text, 0)
    ours = os.urandom(8)
    reply = server_reset(ours, key=server)
    assert parse_server_reset(reply, our_session=ours, key=client).acked_session == ours
    with pytest.raises(MalformedReply, match="HMAC"):  # the wrong key direction
        parse_server_reset(reply, our_session=ours, key=parse_static_key(text, 0))


@pytest.mark.parametrize("text", ["", "garbage", "-----BEGIN OpenVPN Static key V1-----\nzz\n"
                                  "-----END OpenVPN Static key V1-----",
                                  "-----BEGIN OpenVPN Static key V1-----\nabcd\n"
                                  "-----END OpenVPN Static key V1-----"])
def test_bad_static_keys(text: str) -> None:
    with pytest.raises(ValueError):
        parse_static_key(text)


def test_malformed_and_truncated_replies_only_raise_malformed() -> None:
    ours = os.urandom(8)
    good = server_reset(ours)
    rng = random.Random(7)
    samples = [good[:n] for n in range(len(good))]
    samples += [bytes(rng.randrange(256) for _ in range(rng.randrange(64))) for _ in range(500)]
    samples += [bytes([8 << 3]) + b"S" * 8 + b"\xff" + b"\x00" * 40]  # absurd ACK count
    for data in samples:
        with pytest.raises(MalformedReply):
            parse_server_reset(data, our_session=ours)


def ctx(**secrets: bytes) -> ProbeContext:
    return ProbeContext(scope=Scope.loopback(), timeouts=Timeouts(dns=1, tcp=1.5, tls=1, http=1),
                        secrets=dict(secrets))


def target(port: int, transport: str = "udp", **options: str) -> Target:
    return Target(service="vpn", probe="openvpn", host="127.0.0.1", port=port,
                  transport=transport, options=tuple(sorted(options.items())))


def vpn_obs(result: object) -> VPNObservation:
    obs = [o for o in result.observations  # type: ignore[attr-defined]
           if isinstance(o, VPNObservation)]
    assert len(obs) == 1
    return obs[0]


@needs_openvpn
@pytest.mark.parametrize("proto", ["udp", "tcp"])
async def test_real_server_is_reachable(tmp_path: Path, proto: str) -> None:
    with openvpn_server(tmp_path, proto=proto) as server:
        result = await OpenVPNProbe().observe(target(server.port, proto), ctx())
    o = vpn_obs(result)
    assert (o.result, o.failure, result.failure) == ("reachable", None, None)
    assert "Initial packet from" in server.log.read_text()


@needs_openvpn
async def test_tls_auth_server_without_key_is_unverifiable_and_silent(tmp_path: Path) -> None:
    with openvpn_server(tmp_path, tls_auth=True) as server:
        plain = await OpenVPNProbe().observe(target(server.port), ctx())
        declared = await OpenVPNProbe().observe(target(server.port, tls_auth="yes"), ctx())
    # without the key the server drops our reset: silence, which must not be read as blocking
    assert vpn_obs(plain).result == "no_reply"
    assert (vpn_obs(declared).result, declared.failure) == ("unverifiable", UNVERIFIABLE)


@needs_openvpn
@pytest.mark.parametrize("proto", ["udp", "tcp"])
async def test_tls_auth_with_key_completes_the_reset(tmp_path: Path, proto: str) -> None:
    with openvpn_server(tmp_path, proto=proto, tls_auth=True) as server:
        assert server.tls_auth_key is not None
        t = target(server.port, proto, tls_auth="yes", key_direction="1")
        key = server.tls_auth_key.read_bytes()
        result = await OpenVPNProbe().observe(t, ctx(**{secret_key(t): key}))
    o = vpn_obs(result)
    assert (o.result, result.failure) == ("reachable", None)
    assert ("tls_auth", "yes") in o.details


@needs_openvpn
async def test_wrong_key_gets_silence(tmp_path: Path) -> None:
    other = make_static_key(tmp_path / "..")
    with openvpn_server(tmp_path, tls_auth=True) as server:
        t = target(server.port, tls_auth="yes")
        result = await OpenVPNProbe().observe(t, ctx(**{secret_key(t): other.read_bytes()}))
    assert (vpn_obs(result).result, result.failure) == ("no_reply", F.GENERIC_TIMEOUT)


def test_udp_resends_back_off_within_the_timeout() -> None:
    assert udp_send_times(10) == [0, 0.25, 0.75, 1.75, 3.75, 7.75]
    assert udp_send_times(1.5) == [0, 0.1875, 0.5625, 1.3125]
    assert len(udp_send_times(600)) == 8  # never a flood, however long the timeout
    assert all(t < 0.01 for t in udp_send_times(0.01))


async def test_closed_udp_port_is_icmp_unreachable() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = await OpenVPNProbe().observe(target(port), ctx())
    assert (vpn_obs(result).result, result.failure) == ("icmp_unreachable", F.CONNECTION_REFUSED)


async def test_silent_udp_port_is_no_reply() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        result = await OpenVPNProbe().observe(target(s.getsockname()[1]), ctx())
        # the reset was resent while no answer came, at the times udp_send_times gives
        s.setblocking(False)
        received = []
        while True:
            try:
                received.append(s.recv(2048))
            except BlockingIOError:
                break
    assert (vpn_obs(result).result, result.failure) == ("no_reply", F.GENERIC_TIMEOUT)
    assert len(received) == len(udp_send_times(1.5)) and received[0][0] == 7 << 3


async def test_tcp_refused_and_garbage_reply() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        refused = await OpenVPNProbe().observe(target(port, "tcp"), ctx())
    assert (vpn_obs(refused).result, refused.failure) == ("refused", F.CONNECTION_REFUSED)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))

        async def answer() -> None:
            loop = asyncio.get_running_loop()
            s.setblocking(False)
            _, addr = await loop.sock_recvfrom(s, 2048)
            await loop.sock_sendto(s, b"HTTP/1.1 400 Bad Request\r\n\r\n", addr)

        task = asyncio.create_task(answer())
        result = await OpenVPNProbe().observe(target(s.getsockname()[1]), ctx())
        await task
    assert vpn_obs(result).result == "malformed"
    assert result.failure == "vpn_malformed_reply"


async def test_out_of_scope_sends_nothing() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        c = ProbeContext(scope=Scope.from_entries(["10.0.0.0/8"]), timeouts=Timeouts(tcp=0.5))
        result = await OpenVPNProbe().observe(target(s.getsockname()[1]), c)
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.recv(2048)
    assert result.failure == F.OUT_OF_SCOPE


async def test_runner_stores_no_key_material(tmp_path: Path) -> None:
    key = (b"-----BEGIN OpenVPN Static key V1-----\n" + b"ab" * 256
           + b"\n-----END OpenVPN Static key V1-----")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        t = target(s.getsockname()[1], tls_auth="yes")
        m = await run_probe(OpenVPNProbe(), t, ctx(**{secret_key(t): key}), run_id="r", vantage="v")
    assert b"abab" not in repr(m).encode()
    assert "abab" not in str(m.target.to_dict())
