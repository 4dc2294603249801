"""OpenVPN reachability without credentials: the client's hard reset and the server's answer.

Built from the protocol description (OpenVPN's ``ssl_pkt.h``/``reliable.c`` wire format), not
from captured bytes. A client opens with ``P_CONTROL_HARD_RESET_CLIENT_V2`` (opcode 7): one byte
``opcode << 3 | key_id``, its 8-byte session id, an empty ACK array and message packet id 0
(over TCP each packet is prefixed with its 2-byte length). A server answers
``P_CONTROL_HARD_RESET_SERVER_V2`` (opcode 8) with its own session id and, in its ACK array,
the client's session id: that echo proves an OpenVPN server, not just an open port.

A server with ``tls-auth`` drops every packet whose HMAC is wrong, so without the key silence
proves nothing: with the key (given by the user, held only in memory) the probe signs the reset
the way OpenVPN does and checks the server's signature. ``tls-crypt`` also encrypts the control
channel; without its key the probe says "unverifiable" and sends nothing.

Guarantees: every reply, however malformed or hostile, becomes a result string; nothing raises
out of ``observe``; packets go only to addresses the scope admits.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import hmac
import os
import re
import struct
import time
from dataclasses import dataclass

from blockwatch.probes.context import ProbeContext, ProbeResult, secret_key
from blockwatch.probes.errors import MalformedReply
from blockwatch.probes.model import Target
from blockwatch.probes.vpnbase import VPNAttempt, begin

CLIENT_RESET_V2 = 7
SERVER_RESET_V2 = 8
MAX_ACKS = 8  # OpenVPN's RELIABLE_ACK_SIZE
UDP_FIRST_RESEND = 0.25  # s; a lost handshake datagram is resent after this, then twice as late
UDP_MAX_SENDS = 8
UNVERIFIABLE = "vpn_unverifiable_without_key"  # project-local failure strings
MALFORMED = "vpn_malformed_reply"

_DIGESTS = {"sha1": 20, "sha256": 32, "sha512": 64}


@dataclass(frozen=True, slots=True)
class TLSAuthKey:
    """The HMAC halves of an OpenVPN static key, for one key direction."""

    send: bytes
    recv: bytes
    digest: str = "sha1"

    @property
    def size(self) -> int:
        return _DIGESTS[self.digest]

    def sign(self, data: bytes, *, outgoing: bool) -> bytes:
        key = (self.send if outgoing else self.recv)[: self.size]
        return hmac.new(key, data, self.digest).digest()


def parse_static_key(text: str, direction: int | None = 1, digest: str = "sha1") -> TLSAuthKey:
    """Parse an ``OpenVPN Static key V1`` file (2048 bits: two keys of cipher + HMAC halves).

    ``direction`` as in ``key-direction``: 1 for a client of a server using 0, ``None`` for
    bidirectional use of key 0.
    """
    if digest not in _DIGESTS:
        raise ValueError(f"unsupported tls-auth digest {digest!r} (use {', '.join(_DIGESTS)})")
    m = re.search(r"-----BEGIN OpenVPN Static key V1-----(.*?)-----END OpenVPN Static key V1-----",
                  text, re.S)
    if not m:
        raise ValueError("not an OpenVPN static key (no 'BEGIN OpenVPN Static key V1' block)")
    hexdigits = re.sub(r"#.*", "", m.group(1))
    hexdigits = "".join(hexdigits.split())
    try:
        raw = binascii.unhexlify(hexdigits)
    except binascii.Error:
        raise ValueError("OpenVPN static key: the key block is not hexadecimal") from None
    if len(raw) != 256:
        raise ValueError(f"OpenVPN static key: {len(raw)} bytes, expected 256")
    hmac0, hmac1 = raw[64:128], raw[192:256]
    if direction is None:
        return TLSAuthKey(hmac0, hmac0, digest)
    if direction not in (0, 1):
        raise ValueError("key direction must be 0, 1 or none")
    return TLSAuthKey(hmac1, hmac0, digest) if direction == 1 else TLSAuthKey(hmac0, hmac1, digest)


def build_client_reset(session_id: bytes, *, key: TLSAuthKey | None = None,
                       packet_id: int = 1, now: int | None = None) -> bytes:
    """The client's first packet (UDP form; see ``frame_tcp`` for TCP)."""
    if len(session_id) != 8:
        raise ValueError("session id must be 8 bytes")
    head = bytes([CLIENT_RESET_V2 << 3]) + session_id
    body = b"\x00" + struct.pack(">I", 0)  # empty ACK array, message packet id 0
    if key is None:
        return head + body
    replay = struct.pack(">II", packet_id, int(time.time()) if now is None else now)
    # OpenVPN signs [packet id, time, opcode, session id, rest] and sends the HMAC right after
    # the session id (its swap_hmac)
    mac = key.sign(replay + head + body, outgoing=True)
    return head + mac + replay + body


def frame_tcp(packet: bytes) -> bytes:
    return struct.pack(">H", len(packet)) + packet


@dataclass(frozen=True, slots=True)
class ServerReset:
    session_id: bytes
    acked_session: bytes | None
    acks: tuple[int, ...]
    message_packet_id: int
    key_id: int


def parse_server_reset(data: bytes, *, our_session: bytes,
                       key: TLSAuthKey | None = None) -> ServerReset:
    """Check that ``data`` is a server hard reset acknowledging ``our_session``."""
    if len(data) < 9:
        raise MalformedReply(f"{len(data)} bytes: too short for an OpenVPN packet")
    opcode, key_id = data[0] >> 3, data[0] & 0x07
    if opcode != SERVER_RESET_V2:
        raise MalformedReply(f"opcode {opcode}, expected {SERVER_RESET_V2} (server hard reset)")
    head, pos = data[:9], 9
    if key is not None:
        if len(data) < pos + key.size + 8:
            raise MalformedReply("too short for the tls-auth HMAC")
        mac = data[pos: pos + key.size]
        replay = data[pos + key.size: pos + key.size + 8]
        rest = data[pos + key.size + 8:]
        if not hmac.compare_digest(mac, key.sign(replay + head + rest, outgoing=False)):
            raise MalformedReply("tls-auth HMAC does not verify (wrong key or direction)")
        data, pos = head + rest, 9
    if len(data) < pos + 1:
        raise MalformedReply("no ACK array")
    n_acks = data[pos]
    pos += 1
    if n_acks > MAX_ACKS:
        raise MalformedReply(f"ACK array of {n_acks} entries (at most {MAX_ACKS})")
    need = pos + 4 * n_acks + (8 if n_acks else 0) + 4
    if len(data) < need:
        raise MalformedReply("truncated ACK array or message packet id")
    acks = struct.unpack(f">{n_acks}I", data[pos: pos + 4 * n_acks])
    pos += 4 * n_acks
    acked = None
    if n_acks:
        acked = data[pos: pos + 8]
        pos += 8
    (msg_id,) = struct.unpack(">I", data[pos: pos + 4])
    if acked != our_session:
        raise MalformedReply("the reply does not acknowledge our session id")
    return ServerReset(data[1:9], acked, acks, msg_id, key_id)


# --- the probe -------------------------------------------------------------------------------


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes | Exception] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.replies.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        self.replies.put_nowait(exc)


def udp_send_times(limit: float) -> list[float]:
    """When (seconds after the start) a UDP handshake packet is sent: at once, then with a
    doubling interval (0.25 s, 0.5 s, 1 s, ...) while the timeout lasts, as VPN clients
    retransmit. With 10 % loss each way an exchange fails 19 % of the time; six sends in a 10 s
    timeout make a lost handshake 0.005 %, not the 0.1 % that four evenly spread sends gave."""
    first = min(UDP_FIRST_RESEND, limit / 8)
    times, gap = [0.0], first
    while len(times) < UDP_MAX_SENDS and times[-1] + gap < limit:
        times.append(times[-1] + gap)
        gap *= 2
    return times


async def _exchange_udp(address: str, port: int, packet: bytes, limit: float,
                        local: str | None) -> bytes:
    loop = asyncio.get_running_loop()
    local_addr = (local, 0) if local and (":" in local) == (":" in address) else None
    transport, proto = await loop.create_datagram_endpoint(
        _Datagrams, remote_addr=(address, port), local_addr=local_addr)
    try:
        async with asyncio.timeout(limit):
            # a lost datagram is resent, as VPN clients do, so a few percent of loss does not
            # pass for a silent (or blocked) server; the first reply ends the exchange
            times = udp_send_times(limit)
            start = loop.time()
            for i in range(len(times)):
                transport.sendto(packet)
                wait = times[i + 1] - (loop.time() - start) if i + 1 < len(times) else None
                try:
                    item = await asyncio.wait_for(proto.replies.get(), wait)
                    break
                except TimeoutError:
                    continue
            if isinstance(item, Exception):
                raise item
            return item
    finally:
        transport.close()


async def _exchange_tcp(attempt: VPNAttempt, ctx: ProbeContext, packet: bytes,
                        limit: float) -> bytes:
    """Connect (the dialer) and exchange the resets, all within ``limit`` from the connect."""
    conn = await attempt.connect(ctx, limit)
    async with conn.stream() as (reader, writer), asyncio.timeout(conn.left(limit)):
        writer.write(frame_tcp(packet))
        await writer.drain()
        (length,) = struct.unpack(">H", await reader.readexactly(2))
        return await reader.readexactly(length)


class OpenVPNProbe:
    name = "openvpn"
    version = "2"  # 2: over TCP, the addresses raced by the one dialer, from the source
    # address, under our limits (1: the first address only)

    async def observe(self, target: Target, ctx: ProbeContext) -> ProbeResult:
        options = dict(target.options)
        transport = target.transport or "udp"
        attempt = await begin(target, ctx, "openvpn", target.port or 1194, transport)
        if isinstance(attempt, ProbeResult):
            return attempt
        done = attempt.done
        secret = ctx.secrets.get(secret_key(target))
        if options.get("tls_crypt") == "yes":
            return done("unverifiable", UNVERIFIABLE, why="tls-crypt encrypts the handshake; "
                        "blockwatch cannot complete it, and silence would prove nothing")
        if options.get("tls_auth") == "yes" and secret is None:
            return done("unverifiable", UNVERIFIABLE,
                        why="the server uses tls-auth and the config gives no key")
        key = None
        if secret is not None:
            try:
                key = parse_static_key(secret.decode("ascii", "replace"),
                                       _direction(options.get("key_direction", "1")),
                                       options.get("auth", "sha1"))
            except ValueError as exc:
                return done("unverifiable", UNVERIFIABLE, why=f"unusable tls-auth key: {exc}")
        session = os.urandom(8)
        packet = build_client_reset(session, key=key)
        try:
            if transport == "udp":
                reply = await _exchange_udp(attempt.address, attempt.port, packet,
                                            ctx.timeouts.tcp, ctx.source_address)
            else:
                reply = await _exchange_tcp(attempt, ctx, packet, ctx.timeouts.tcp)
        except Exception as exc:
            return attempt.failed(exc)
        try:
            reset = parse_server_reset(reply, our_session=session, key=key)
        except MalformedReply as exc:
            return done("malformed", MALFORMED, why=str(exc), reply_sha256=_digest(reply))
        return done("reachable", None, server_session=reset.session_id.hex(),
                    tls_auth="yes" if key else "no")


def _direction(text: str) -> int | None:
    if text == "none":
        return None
    if text not in ("0", "1"):
        raise ValueError(f"key_direction {text!r} must be 0, 1 or none")
    return int(text)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
