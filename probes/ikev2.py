"""IKEv2 / IPsec responder reachability: an IKE_SA_INIT request and whatever the responder says.

IKE_SA_INIT (RFC 7296, exchange type 34) is unauthenticated, so any well-formed IKE reply that
echoes our initiator SPI proves an IKE responder: a full SA/KE/Nonce answer, or a Notify such as
NO_PROPOSAL_CHOSEN, INVALID_KE_PAYLOAD or COOKIE. The request offers the proposals common
clients send (AES-CBC/GCM, SHA-2, curve25519/ECP-256/MODP-2048) with a real curve25519 public
key, so a responder has a reason to answer. On UDP 4500 the message carries the 4-byte non-ESP
marker (RFC 3948).

Guarantees: the parser raises only ``MalformedReply``; ``observe`` never raises for anything a
peer sends; packets go only to addresses the scope admits.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from blockwatch.probes.context import ProbeContext, ProbeResult
from blockwatch.probes.errors import MalformedReply
from blockwatch.probes.model import Target
from blockwatch.probes.openvpn import _exchange_udp
from blockwatch.probes.vpnbase import begin

IKE_SA_INIT = 34
FLAG_INITIATOR, FLAG_RESPONSE = 0x08, 0x20
PAYLOAD_SA, PAYLOAD_KE, PAYLOAD_NONCE, PAYLOAD_NOTIFY = 33, 34, 40, 41
NON_ESP_MARKER = b"\x00\x00\x00\x00"
NOTIFY_NAMES = {14: "NO_PROPOSAL_CHOSEN", 17: "INVALID_KE_PAYLOAD", 16390: "COOKIE",
                7: "INVALID_SYNTAX", 9: "AUTHENTICATION_FAILED", 16388: "NAT_DETECTION_SOURCE_IP",
                16389: "NAT_DETECTION_DESTINATION_IP", 16404: "MULTIPLE_AUTH_SUPPORTED",
                16430: "IKEV2_FRAGMENTATION_SUPPORTED", 16431: "SIGNATURE_HASH_ALGORITHMS"}
MALFORMED = "ike_malformed_reply"  # project-local failure string

# (type, id, key length attribute or None)
ENCR, PRF, INTEG, DH = 1, 2, 3, 4
Transform = tuple[int, int, int | None]
_CBC: list[Transform] = [(ENCR, 12, 256), (ENCR, 12, 128), (PRF, 5, None), (PRF, 2, None),
        (INTEG, 12, None), (INTEG, 2, None)]
_GCM: list[Transform] = [(ENCR, 20, 256), (ENCR, 20, 128), (PRF, 5, None), (PRF, 2, None)]
_GROUPS: list[Transform] = [(DH, 31, None), (DH, 19, None), (DH, 14, None)]
KE_GROUP = 31  # curve25519: a 32-byte public key


def _transform(ttype: int, tid: int, keylen: int | None, last: bool) -> bytes:
    attrs = struct.pack(">HH", 0x8000 | 14, keylen) if keylen else b""
    return struct.pack(">BBHBBH", 0 if last else 3, 0, 8 + len(attrs), ttype, 0, tid) + attrs


def _proposal(number: int, transforms: list[Transform], last: bool) -> bytes:
    body = b"".join(_transform(t, i, k, n == len(transforms) - 1)
                    for n, (t, i, k) in enumerate(transforms))
    # protocol 1 = IKE, SPI size 0 in IKE_SA_INIT
    return struct.pack(">BBHBBBB", 0 if last else 2, 0, 8 + len(body), number, 1, 0,
                       len(transforms)) + body


def _payload(next_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", next_type, 0, 4 + len(body)) + body


def build_sa_init(spi: bytes, *, public_key: bytes, nonce: bytes) -> bytes:
    """An IKE_SA_INIT request: header, SA (two proposals), KE (curve25519), Nonce."""
    if len(spi) != 8 or len(public_key) != 32 or not 16 <= len(nonce) <= 256:
        raise ValueError("spi must be 8 bytes, public key 32, nonce 16-256")
    sa = _proposal(1, _CBC + _GROUPS, last=False) + _proposal(2, _GCM + _GROUPS, last=True)
    ke = struct.pack(">HH", KE_GROUP, 0) + public_key
    payloads = (_payload(PAYLOAD_KE, sa) + _payload(PAYLOAD_NONCE, ke) + _payload(0, nonce))
    header = spi + b"\x00" * 8 + struct.pack(">BBBBII", PAYLOAD_SA, 0x20, IKE_SA_INIT,
                                              FLAG_INITIATOR, 0, 28 + len(payloads))
    return header + payloads


@dataclass(frozen=True, slots=True)
class SAInitReply:
    responder_spi: bytes
    payloads: tuple[int, ...]
    notifies: tuple[str, ...]

    @property
    def kind(self) -> str:
        if PAYLOAD_SA in self.payloads and PAYLOAD_KE in self.payloads:
            return "sa_init"
        return "notify:" + ",".join(self.notifies) if self.notifies else "empty"


def parse_sa_init_reply(data: bytes, *, spi: bytes) -> SAInitReply:
    if len(data) < 28:
        raise MalformedReply(f"{len(data)} bytes: shorter than an IKE header")
    ispi, rspi = data[:8], data[8:16]
    next_type, version, exchange, flags, _msgid, length = struct.unpack(">BBBBII", data[16:28])
    if ispi != spi:
        raise MalformedReply("the reply does not echo our initiator SPI")
    if version >> 4 != 2:
        raise MalformedReply(f"IKE major version {version >> 4}, expected 2")
    if exchange != IKE_SA_INIT or not flags & FLAG_RESPONSE:
        raise MalformedReply(f"exchange {exchange} flags {flags:#x}: not an IKE_SA_INIT response")
    if length != len(data):
        raise MalformedReply(f"header length {length} but {len(data)} bytes received")
    payloads: list[int] = []
    notifies: list[str] = []
    pos = 28
    while next_type != 0:
        if pos + 4 > len(data) or len(payloads) >= 64:
            raise MalformedReply("truncated payload chain")
        this, (next_type, _crit, plen) = next_type, struct.unpack(">BBH", data[pos: pos + 4])
        if plen < 4 or pos + plen > len(data):
            raise MalformedReply(f"payload {this} has an impossible length {plen}")
        payloads.append(this)
        if this == PAYLOAD_NOTIFY and plen >= 8:
            (ntype,) = struct.unpack(">H", data[pos + 6: pos + 8])
            notifies.append(NOTIFY_NAMES.get(ntype, str(ntype)))
        pos += plen
    return SAInitReply(rspi, tuple(payloads), tuple(notifies))


class IKEv2Probe:
    name = "ikev2"
    version = "1"

    async def observe(self, target: Target, ctx: ProbeContext) -> ProbeResult:
        attempt = await begin(target, ctx, "ikev2", target.port or 500, "udp")
        if isinstance(attempt, ProbeResult):
            return attempt
        port, done = attempt.port, attempt.done
        spi = os.urandom(8)
        public = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw,
                                                                        PublicFormat.Raw)
        packet = build_sa_init(spi, public_key=public, nonce=os.urandom(32))
        natt = dict(target.options).get("natt") == "yes" or port == 4500
        if natt:
            packet = NON_ESP_MARKER + packet
        try:
            reply = await _exchange_udp(attempt.address, port, packet, ctx.timeouts.tcp,
                                        ctx.source_address)
        except Exception as exc:
            return attempt.failed(exc)
        if natt and reply.startswith(NON_ESP_MARKER):
            reply = reply[4:]
        try:
            parsed = parse_sa_init_reply(reply, spi=spi)
        except MalformedReply as exc:
            return done("malformed", MALFORMED, why=str(exc))
        return done("reachable", None, reply=parsed.kind)
