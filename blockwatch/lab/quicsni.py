"""The censor's QUIC SNI filter: ``python -m blockwatch.lab.quicsni QUEUE CONFIG``.

As the Great Firewall has done since 2024 (gfw-report, "Exposing and Circumventing SNI-based
QUIC Censorship of the Great Firewall of China", USENIX Security 2025): iptables hands every
UDP datagram to port 443 from the censored client to NFQUEUE ``QUEUE``; for a QUIC Initial
packet (versions 1 and 2) the filter derives the Initial keys from the packet's destination
connection id (RFC 9001 section 5.2: anybody can), decrypts it with aioquic's own crypto,
gathers its CRYPTO frames and reads the ClientHello's SNI. A name listed in the JSON file
CONFIG (or under one) is dropped, but only when the source port is at least the destination
port (the GFW's own condition), and then every UDP datagram from that client to that server
address and port is dropped for ``residual_s`` seconds (residual blocking of (src, dst,
dport)). Everything else, and anything it cannot parse, is accepted.

CONFIG is ``{"names": [...], "residual_s": 60}``, re-read when it changes. Runs as root in the
censor namespace; started and stopped by the lab, which tracks its PID.
"""

from __future__ import annotations

import struct
import sys
import time
from pathlib import Path
from typing import Any

from blockwatch.lab.nfq import Reloading, serve

VERSIONS = (0x00000001, 0x6B3343CF)
FRAME_PADDING, FRAME_PING, FRAME_CRYPTO = 0x00, 0x01, 0x06


class Rules:
    def __init__(self, names: frozenset[str] = frozenset(), residual_s: float = 60.0) -> None:
        self.names, self.residual_s = names, residual_s

    @classmethod
    def parse(cls, raw: Any) -> Rules:
        return cls(frozenset(n.lower().rstrip(".") for n in raw["names"]),
                   float(raw.get("residual_s", 60)))

    def blocked(self, name: str) -> bool:
        labels = name.lower().rstrip(".").split(".")
        return any(".".join(labels[i:]) in self.names for i in range(len(labels)))


def udp_of(packet: bytes) -> tuple[bytes, bytes, int, int, bytes] | None:
    """(source, destination, source port, destination port, payload) of an IPv4 or IPv6 UDP
    packet (no IPv6 extension headers), or None."""
    if len(packet) < 28:
        return None
    if packet[0] >> 4 == 4 and packet[9] == 17:
        ihl = (packet[0] & 0x0F) * 4
        src, dst, udp = packet[12:16], packet[16:20], packet[ihl:]
    elif packet[0] >> 4 == 6 and len(packet) >= 48 and packet[6] == 17:
        src, dst, udp = packet[8:24], packet[24:40], packet[40:]
    else:
        return None
    if len(udp) < 8:
        return None
    sport, dport = struct.unpack("!HH", udp[:4])
    return src, dst, sport, dport, udp[8:]


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    first = data[pos]
    n = 1 << (first >> 6)
    value = first & 0x3F
    for b in data[pos + 1: pos + n]:
        value = (value << 8) | b
    if pos + n > len(data):
        raise ValueError("truncated varint")
    return value, pos + n


def crypto_data(frames: bytes) -> bytes:
    """The contiguous CRYPTO data from offset 0 in a client Initial's frames (PADDING, PING
    and CRYPTO; any other frame ends the reading)."""
    chunks: dict[int, bytes] = {}
    pos = 0
    while pos < len(frames):
        kind = frames[pos]
        if kind in (FRAME_PADDING, FRAME_PING):
            pos += 1
            continue
        if kind != FRAME_CRYPTO:
            break
        offset, pos = _varint(frames, pos + 1)
        length, pos = _varint(frames, pos)
        if length:  # an empty chunk would add nothing, forever (the loop below)
            chunks[offset] = frames[pos: pos + length]
        pos += length
    out = b""
    while len(out) in chunks:
        out += chunks[len(out)]
    return out


def initial_sni(payload: bytes) -> str | None:
    """The SNI of a QUIC client Initial (the first packet of the datagram), or None."""
    from aioquic._buffer import Buffer
    from aioquic.quic.crypto import CryptoPair
    from aioquic.quic.packet import QuicPacketType, pull_quic_header
    from aioquic.tls import pull_client_hello

    try:
        buf = Buffer(data=payload)
        header = pull_quic_header(buf, host_cid_length=8)
        if header.packet_type != QuicPacketType.INITIAL or header.version not in VERSIONS:
            return None
        crypto = CryptoPair()
        crypto.setup_initial(header.destination_cid, is_client=False, version=header.version)
        _, frames, _ = crypto.decrypt_packet(payload[:header.packet_length], buf.tell(), 0)
        hello = pull_client_hello(Buffer(data=crypto_data(frames)))
    except Exception:  # not a complete Initial with a ClientHello: not ours to judge
        return None
    return hello.server_name


class Filter:
    def __init__(self, config: Path) -> None:
        self.rules = Reloading("quicsni", config, Rules.parse, Rules())
        self.residual: dict[tuple[bytes, bytes, int], float] = {}

    def verdict(self, packet: bytes, now: float) -> bool:
        """True: let the datagram through."""
        found = udp_of(packet)
        if found is None:
            return True
        src, dst, sport, dport, payload = found
        key = (src, dst, dport)
        until = self.residual.get(key)
        if until is not None:
            if now < until:
                return False
            del self.residual[key]
        rules = self.rules.current()
        name = initial_sni(payload)
        if name is None or not rules.blocked(name) or sport < dport:
            return True
        if len(self.residual) < 65536:
            self.residual[key] = now + rules.residual_s
        return False


def main(argv: list[str]) -> int:
    queue, config = int(argv[0]), Path(argv[1])
    f = Filter(config)

    def handle(pkt: Any) -> None:
        if f.verdict(pkt.get_payload(), time.monotonic()):
            pkt.accept()
        else:
            pkt.drop()

    return serve("quicsni", queue, config, handle)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
