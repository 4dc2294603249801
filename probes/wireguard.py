"""WireGuard reachability with the user's own peer config: a real handshake initiation.

A WireGuard server answers only a handshake initiation whose MAC1 is keyed with its public key
and whose Noise IK handshake (Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, the WireGuard paper and
whitepaper section 5.4) decrypts with a peer key it knows. Without the user's peer config
(the server's public key and the user's private key) there is nothing meaningful to send:
the probe then says "unverifiable" and sends nothing.

With the config, the probe sends the 148-byte initiation and validates the 92-byte response:
our sender index echoed, MAC1 keyed with our public key, and the empty payload decrypting
under the handshake's keys. A cookie reply (the server is under load) also proves the server.

Key material arrives through ``ProbeContext.secrets`` (a wg-quick style config text) and is
never stored or logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from blockwatch.probes.context import ProbeContext, ProbeResult, secret_key
from blockwatch.probes.errors import MalformedReply
from blockwatch.probes.model import Target
from blockwatch.probes.openvpn import _exchange_udp
from blockwatch.probes.vpnbase import begin

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
INITIATION, RESPONSE, COOKIE_REPLY = 1, 2, 3
INITIATION_SIZE, RESPONSE_SIZE, COOKIE_SIZE = 148, 92, 64
UNVERIFIABLE = "vpn_unverifiable_without_key"
MALFORMED = "wireguard_malformed_reply"


def _hash(*parts: bytes) -> bytes:
    return hashlib.blake2s(b"".join(parts)).digest()


def _mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, digest_size=16, key=key).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def _kdf(key: bytes, data: bytes, n: int) -> list[bytes]:
    t0 = _hmac(key, data)
    out, prev = [], b""
    for i in range(1, n + 1):
        prev = _hmac(t0, prev + bytes([i]))
        out.append(prev)
    return out


def _aead(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(b"\x00" * 4 + struct.pack("<Q", counter), plaintext, ad)


def _open(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).decrypt(b"\x00" * 4 + struct.pack("<Q", counter), ciphertext,
                                         ad)


def _raw(pub: X25519PublicKey) -> bytes:
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def tai64n(now: float | None = None) -> bytes:
    t = time.time() if now is None else now
    return struct.pack(">QI", 2**62 + int(t), int((t % 1) * 1e9))


@dataclass(frozen=True, slots=True)
class PeerConfig:
    private_key: bytes  # ours
    server_public_key: bytes
    preshared_key: bytes = b"\x00" * 32


def parse_peer_config(text: str) -> PeerConfig:
    """Read ``PrivateKey`` ([Interface]) and ``PublicKey``/``PresharedKey`` ([Peer]) from a
    wg-quick config; raise ValueError naming what is missing or wrong."""
    section, values = "", {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
        elif "=" in line:
            k, _, v = line.partition("=")
            values[(section, k.strip().lower())] = v.strip()

    def key(where: str, name: str, required: bool = True) -> bytes | None:
        text = values.get((where, name.lower()))
        if text is None:
            if required:
                raise ValueError(f"WireGuard config: [{where.title()}] {name} is missing")
            return None
        try:
            raw = base64.b64decode(text, validate=True)
        except ValueError:
            raise ValueError(f"WireGuard config: {name} is not base64") from None
        if len(raw) != 32:
            raise ValueError(f"WireGuard config: {name} is {len(raw)} bytes, expected 32")
        return raw

    private = key("interface", "PrivateKey")
    public = key("peer", "PublicKey")
    psk = key("peer", "PresharedKey", required=False)
    assert private is not None and public is not None
    return PeerConfig(private, public, psk or b"\x00" * 32)


@dataclass
class Initiation:
    """The initiator's state after building the first message (needed to check the reply)."""

    packet: bytes
    sender_index: int
    chaining_key: bytes
    hash: bytes
    ephemeral: X25519PrivateKey
    static: X25519PrivateKey
    preshared_key: bytes


def build_initiation(peer: PeerConfig, *, sender_index: int | None = None,
                     now: float | None = None) -> Initiation:
    static = X25519PrivateKey.from_private_bytes(peer.private_key)
    server = X25519PublicKey.from_public_bytes(peer.server_public_key)
    index = int.from_bytes(os.urandom(4), "little") if sender_index is None else sender_index
    c = _hash(CONSTRUCTION)
    h = _hash(_hash(c, IDENTIFIER), peer.server_public_key)
    eph = X25519PrivateKey.generate()
    eph_pub = _raw(eph.public_key())
    (c,) = _kdf(c, eph_pub, 1)
    h = _hash(h, eph_pub)
    c, k = _kdf(c, eph.exchange(server), 2)
    enc_static = _aead(k, 0, _raw(static.public_key()), h)
    h = _hash(h, enc_static)
    c, k = _kdf(c, static.exchange(server), 2)
    enc_time = _aead(k, 0, tai64n(now), h)
    h = _hash(h, enc_time)
    body = struct.pack("<B3xI", INITIATION, index) + eph_pub + enc_static + enc_time
    mac1 = _mac(_hash(LABEL_MAC1, peer.server_public_key), body)
    packet = body + mac1 + b"\x00" * 16
    return Initiation(packet, index, c, h, eph, static, peer.preshared_key)


def check_reply(init: Initiation, data: bytes) -> str:
    """``response`` (a valid handshake response) or ``cookie`` (a cookie reply to us); raise
    MalformedReply otherwise."""
    if len(data) < 4:
        raise MalformedReply(f"{len(data)} bytes: too short")
    kind = data[0]
    if kind == COOKIE_REPLY:
        if len(data) != COOKIE_SIZE:
            raise MalformedReply(f"cookie reply of {len(data)} bytes, expected {COOKIE_SIZE}")
        if struct.unpack("<I", data[4:8])[0] != init.sender_index:
            raise MalformedReply("cookie reply for another sender index")
        return "cookie"
    if kind != RESPONSE or len(data) != RESPONSE_SIZE or data[1:4] != b"\x00\x00\x00":
        raise MalformedReply(f"type {kind}, {len(data)} bytes: not a handshake response")
    _sender, receiver = struct.unpack("<II", data[4:12])
    if receiver != init.sender_index:
        raise MalformedReply("response for another sender index")
    our_public = _raw(init.static.public_key())
    if not hmac.compare_digest(data[60:76], _mac(_hash(LABEL_MAC1, our_public), data[:60])):
        raise MalformedReply("MAC1 does not verify")
    eph_r = data[12:44]
    c, h = init.chaining_key, init.hash
    (c,) = _kdf(c, eph_r, 1)
    h = _hash(h, eph_r)
    try:
        peer_eph = X25519PublicKey.from_public_bytes(eph_r)
        (c,) = _kdf(c, init.ephemeral.exchange(peer_eph), 1)
        (c,) = _kdf(c, init.static.exchange(peer_eph), 1)
    except ValueError as exc:  # a low-order point gives an all-zero shared secret
        raise MalformedReply(f"bad ephemeral key: {exc}") from None
    c, tau, k = _kdf(c, init.preshared_key, 3)
    h = _hash(h, tau)
    try:
        _open(k, 0, data[44:60], h)
    except InvalidTag:
        raise MalformedReply("the response does not decrypt (wrong keys)") from None
    return "response"


class WireGuardProbe:
    name = "wireguard"
    version = "1"

    async def observe(self, target: Target, ctx: ProbeContext) -> ProbeResult:
        attempt = await begin(target, ctx, "wireguard", target.port or 51820, "udp")
        if isinstance(attempt, ProbeResult):
            return attempt
        done = attempt.done
        secret = ctx.secrets.get(secret_key(target))
        if secret is None:
            return done("unverifiable", UNVERIFIABLE, why="a WireGuard server answers only a "
                        "peer it knows: give the peer config to test it")
        try:
            peer = parse_peer_config(secret.decode("utf-8", "replace"))
        except ValueError as exc:
            return done("unverifiable", UNVERIFIABLE, why=str(exc))
        init = build_initiation(peer)
        try:
            reply = await _exchange_udp(attempt.address, attempt.port, init.packet,
                                        ctx.timeouts.tcp, ctx.source_address)
        except Exception as exc:
            return attempt.failed(exc)
        try:
            kind = check_reply(init, reply)
        except MalformedReply as exc:
            return done("malformed", MALFORMED, why=str(exc))
        return done("reachable", None, reply=kind)
