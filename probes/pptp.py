"""PPTP control channel reachability: Start-Control-Connection-Request on TCP 1723.

RFC 2637: every control message starts with its length, message type 1 (control) and the magic
cookie 0x1A2B3C4D. A server answers SCCRQ with a Start-Control-Connection-Reply (type 2); that
reply proves a PPTP server, although the data plane (GRE) may still be blocked separately.
The connection is the dialer's (``VPNAttempt.connect``); one timeout covers it and the exchange.
"""

from __future__ import annotations

import asyncio
import struct

from blockwatch.probes.context import ProbeContext, ProbeResult
from blockwatch.probes.errors import MalformedReply
from blockwatch.probes.model import Target
from blockwatch.probes.vpnbase import begin

MAGIC = 0x1A2B3C4D
SCCRQ, SCCRP, STOP_CCRQ = 1, 2, 3
SCCRQ_LENGTH = 156
MALFORMED = "pptp_malformed_reply"
RESULT_CODES = {1: "ok", 2: "general_error", 3: "command_channel_exists", 4: "not_authorized",
                5: "unknown_protocol_version"}


def build_sccrq(host_name: bytes = b"blockwatch", vendor: bytes = b"blockwatch") -> bytes:
    return struct.pack(">HHIHHHHIIHH64s64s", SCCRQ_LENGTH, 1, MAGIC, SCCRQ, 0, 0x0100, 0,
                       1, 1, 0, 0, host_name[:64], vendor[:64])


def parse_reply(data: bytes) -> tuple[int, str]:
    """(control message type, result) of the server's first control message."""
    if len(data) < 16:
        raise MalformedReply(f"{len(data)} bytes: too short for a PPTP control message")
    length, kind, magic, ctrl = struct.unpack(">HHIH", data[:10])
    if magic != MAGIC or kind != 1:
        raise MalformedReply("no PPTP magic cookie: not a PPTP server")
    if ctrl == SCCRP:
        if length < 21 or len(data) < 21:
            raise MalformedReply("truncated Start-Control-Connection-Reply")
        return ctrl, RESULT_CODES.get(data[14], f"result_{data[14]}")
    if ctrl == STOP_CCRQ:
        return ctrl, "stop_control_connection"
    raise MalformedReply(f"control message type {ctrl}, expected a reply to SCCRQ")


class PPTPProbe:
    name = "pptp"
    version = "2"  # 2: the addresses raced by the one dialer, from the source address,
    # under our limits (1: the first address only, the kernel's source address)

    async def observe(self, target: Target, ctx: ProbeContext) -> ProbeResult:
        attempt = await begin(target, ctx, "pptp", target.port or 1723, "tcp")
        if isinstance(attempt, ProbeResult):
            return attempt
        done, limit = attempt.done, ctx.timeouts.tcp
        try:
            conn = await attempt.connect(ctx, limit)
            async with conn.stream() as (reader, writer), asyncio.timeout(conn.left(limit)):
                writer.write(build_sccrq())
                await writer.drain()
                head = await reader.readexactly(2)
                (length,) = struct.unpack(">H", head)
                if not 16 <= length <= 4096:
                    return done("malformed", MALFORMED, why=f"length {length}")
                data = head + await reader.readexactly(length - 2)
        except Exception as exc:
            return attempt.failed(exc)
        try:
            _, result_code = parse_reply(data)
        except MalformedReply as exc:
            return done("malformed", MALFORMED, why=str(exc))
        return done("reachable", None, reply=result_code)
