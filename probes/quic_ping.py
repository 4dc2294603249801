"""The quic probe's version-negotiation ping (OONI's quicping, ts-031): a 1200-byte packet laid
out as a client Initial but of a reserved version, which every QUIC server must answer with a
Version Negotiation packet listing its versions. An answer proves that UDP reaches a QUIC stack
at the address, with no handshake and no server name.

Guarantees: one UDP socket, connected (an ICMP error ends the ping at once), the packet resent
at once, 0.25 s, 0.5 s, 1 s, ... while the limit lasts; only a Version Negotiation naming our
connection ids counts, every other datagram is counted (``ignored``) and dropped; at most
``MAX_DATAGRAMS`` are read (a flood: ``quic_datagram_flood``), at most 64 wait in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from typing import Any

from blockwatch.probes.failures import GENERIC_TIMEOUT, classify
from blockwatch.probes.quic_wire import MAX_DATAGRAMS, QUIC_FLOOD, udp_socket, version_name

PING_SIZE = 1200  # a client Initial's minimum size (RFC 9000 section 14.1)
# a reserved version (RFC 9000 section 15: 0x?a?a?a?a) that every server must answer with a
# Version Negotiation packet
PING_VERSION = 0x1A2A3A4A


@dataclass(slots=True)
class PingResult:
    versions: tuple[str, ...] = ()  # the server's list, when a Version Negotiation came
    failure: str | None = None
    ignored: int = 0  # datagrams that were not our Version Negotiation


def ping_packet(dcid: bytes, scid: bytes) -> bytes:
    """A packet laid out as a client Initial (type bits Initial, no token, a length covering
    the rest) but of a reserved version, padded to 1200 bytes with random bytes: as OONI's
    quicping, so that servers which parse the long header before looking at the version
    (aioquic's does) still answer it."""
    head = (b"\xc0" + PING_VERSION.to_bytes(4, "big") + bytes([len(dcid)]) + dcid
            + bytes([len(scid)]) + scid + b"\x00")  # token length 0
    rest = PING_SIZE - len(head) - 2
    return head + (0x4000 | rest).to_bytes(2, "big") + os.urandom(rest)


def parse_version_negotiation(data: bytes, dcid: bytes, scid: bytes) -> tuple[int, ...] | None:
    """The versions of a Version Negotiation answering our ping (its DCID is our SCID, its
    SCID our DCID), or None for any other datagram, however short or malformed. A list naming
    the version we sent is no answer to it (RFC 9000 section 6.2: the client discards it)."""
    if len(data) < 7 or not data[0] & 0x80 or data[1:5] != b"\0\0\0\0":
        return None
    pos = 5
    got = []
    for _ in range(2):
        if pos >= len(data):  # a datagram cut inside the connection ids
            return None
        n = data[pos]
        got.append(data[pos + 1: pos + 1 + n])
        pos += 1 + n
        if pos > len(data):
            return None
    if got != [scid, dcid] or (len(data) - pos) % 4 or len(data) == pos:
        return None
    versions = tuple(int.from_bytes(data[i: i + 4], "big") for i in range(pos, len(data), 4))
    return None if PING_VERSION in versions else versions


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | Exception] = asyncio.Queue(maxsize=64)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a flood: what the queue holds will do
            self.queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(exc)


def send_times(limit: float) -> list[float]:
    """At once, then after 0.25 s, 0.5 s, 1 s, ... while the limit lasts (as the VPN probes)."""
    times, gap = [0.0], min(0.25, limit / 8)
    while len(times) < 6 and times[-1] + gap < limit:
        times.append(times[-1] + gap)
        gap *= 2
    return times


async def quicping(address: str, port: int, limit: float, source: str | None) -> PingResult:
    """Send the ping (resent while unanswered) and wait for a Version Negotiation."""
    loop = asyncio.get_running_loop()
    dcid, scid = os.urandom(8), os.urandom(8)
    packet = ping_packet(dcid, scid)
    result = PingResult()
    try:
        sock = udp_socket(address, port, source)
    except OSError as exc:
        result.failure = classify(exc)
        return result
    try:
        transport, inbox = await loop.create_datagram_endpoint(_Inbox, sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        times = send_times(limit)
        start = loop.time()
        async with asyncio.timeout(limit):
            sent = 0
            while result.ignored < MAX_DATAGRAMS:
                if sent < len(times) and loop.time() - start >= times[sent]:
                    transport.sendto(packet)
                    sent += 1
                wait = times[sent] - (loop.time() - start) if sent < len(times) else None
                try:
                    item = await asyncio.wait_for(inbox.queue.get(), wait)
                except TimeoutError:
                    continue
                if isinstance(item, Exception):
                    result.failure = classify(item)
                    return result
                versions = parse_version_negotiation(item, dcid, scid)
                if versions is None:
                    result.ignored += 1
                    continue
                result.versions = tuple(version_name(v) or "" for v in versions)
                return result
            result.failure = QUIC_FLOOD
    except TimeoutError:
        result.failure = GENERIC_TIMEOUT
    finally:
        transport.close()
    return result
