"""The WireGuard probe against a WireGuard handshake responder with real cryptography.

No WireGuard kernel module exists on these machines (and no userspace server is packaged for
Debian 12), so the responder in tests/wireguard_responder.py implements WireGuard's Noise IK
handshake (Curve25519, ChaCha20-Poly1305, BLAKE2s) from the whitepaper, independently of the
probe's code. It stays silent for anything but a valid initiation from a known peer, as a real
server does.
"""

from __future__ import annotations

import base64
import os
import random
import socket

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from wireguard_responder import Responder

from blockwatch.probes import failures as F
from blockwatch.probes.context import ProbeContext, ProbeResult, Timeouts, secret_key
from blockwatch.probes.model import Target, VPNObservation
from blockwatch.probes.openvpn import udp_send_times
from blockwatch.probes.scope import Scope
from blockwatch.probes.wireguard import (
    UNVERIFIABLE,
    MalformedReply,
    PeerConfig,
    WireGuardProbe,
    build_initiation,
    check_reply,
    parse_peer_config,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def keypair() -> tuple[bytes, bytes]:
    key = X25519PrivateKey.generate()
    return (key.private_bytes_raw(),
            key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def wg_config(private: bytes, server_public: bytes, port: int) -> bytes:
    return (f"[Interface]\nPrivateKey = {b64(private)}\nAddress = 10.9.0.2/32\n\n"
            f"[Peer]\nPublicKey = {b64(server_public)}  # the server\n"
            f"Endpoint = 127.0.0.1:{port}\nAllowedIPs = 0.0.0.0/0\n").encode()


def probe_ctx(target: Target, secret: bytes | None) -> ProbeContext:
    secrets = {secret_key(target): secret} if secret is not None else {}
    return ProbeContext(scope=Scope.loopback(), timeouts=Timeouts(tcp=1.0), secrets=secrets)


def vpn(result: ProbeResult) -> VPNObservation:
    return next(o for o in result.observations if isinstance(o, VPNObservation))


def target(port: int) -> Target:
    return Target(service="vpn", probe="wireguard", host="127.0.0.1", port=port,
                  transport="udp")


async def test_handshake_with_a_known_peer() -> None:
    private, public = keypair()
    with Responder() as server:
        server.peers.add(public)
        t = target(server.port)
        result = await WireGuardProbe().observe(t, probe_ctx(t, wg_config(private, server.public,
                                                                          server.port)))
    assert (vpn(result).result, result.failure) == ("reachable", None)
    assert ("reply", "response") in vpn(result).details
    assert server.answered == 1


async def test_cookie_reply_under_load_proves_the_server() -> None:
    private, public = keypair()
    with Responder(under_load=True) as server:
        server.peers.add(public)
        t = target(server.port)
        result = await WireGuardProbe().observe(t, probe_ctx(t, wg_config(private, server.public,
                                                                          server.port)))
    assert ("reply", "cookie") in vpn(result).details


async def test_unknown_peer_or_wrong_server_key_gets_silence() -> None:
    private, _ = keypair()
    _, stranger = keypair()
    with Responder() as server:
        t = target(server.port)
        unknown_peer = await WireGuardProbe().observe(
            t, probe_ctx(t, wg_config(private, server.public, server.port)))
        wrong_key = await WireGuardProbe().observe(
            t, probe_ctx(t, wg_config(private, stranger, server.port)))
        # each initiation resent while unanswered (udp_send_times), none answered
        assert server.received == 2 * len(udp_send_times(1.0)) and server.answered == 0
    for result in (unknown_peer, wrong_key):
        assert (vpn(result).result, result.failure) == ("no_reply", F.GENERIC_TIMEOUT)


async def test_without_config_nothing_is_sent() -> None:
    with Responder() as server:
        t = target(server.port)
        result = await WireGuardProbe().observe(t, probe_ctx(t, None))
        bad = await WireGuardProbe().observe(t, probe_ctx(t, b"[Interface]\nPrivateKey = x\n"))
        assert server.received == 0
    assert (vpn(result).result, result.failure) == ("unverifiable", UNVERIFIABLE)
    assert vpn(bad).result == "unverifiable"
    assert any("not base64" in v for _, v in vpn(bad).details)


@pytest.mark.parametrize(("text", "message"), [
    ("", "PrivateKey is missing"),
    ("[Interface]\nPrivateKey = " + b64(bytes(32)) + "\n", "PublicKey is missing"),
    ("[Interface]\nPrivateKey = " + b64(bytes(16)) + "\n", "16 bytes"),
])
def test_bad_peer_configs(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_peer_config(text)


def test_check_reply_rejects_everything_but_a_valid_response() -> None:
    private, public = keypair()
    server = Responder()
    server.peers.add(public)
    init = build_initiation(PeerConfig(private, server.public))
    good = server.answer(init.packet)
    assert good is not None and check_reply(init, good) == "response"
    rng = random.Random(3)
    samples = [good[:n] for n in range(len(good))]
    samples += [bytes(rng.randrange(256) for _ in range(rng.randrange(120))) for _ in range(300)]
    flipped = bytearray(good)
    flipped[50] ^= 1  # one bit of the encrypted payload
    samples.append(bytes(flipped))
    other = build_initiation(PeerConfig(private, server.public))
    samples.append(server.answer(other.packet) or b"")  # a response to another initiation
    for data in samples:
        with pytest.raises(MalformedReply):
            check_reply(init, data)


async def test_out_of_scope_sends_nothing() -> None:
    private, _ = keypair()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        t = target(s.getsockname()[1])
        c = ProbeContext(scope=Scope.from_entries(["10.0.0.0/8"]), timeouts=Timeouts(tcp=0.5),
                         secrets={secret_key(t): wg_config(private, os.urandom(32), 1)})
        result = await WireGuardProbe().observe(t, c)
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.recv(2048)
    assert result.failure == F.OUT_OF_SCOPE
