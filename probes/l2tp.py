"""L2TP control channel reachability: SCCRQ on UDP 1701.

RFC 2661: a control message has the T, L and S bits set and version 2, tunnel and session id 0
for a new tunnel, then AVPs, the first being the Message Type (1 = SCCRQ). A server answers
with SCCRP (2) or, refusing us, StopCCN (4): either proves an L2TP server (the IPsec that
usually wraps L2TP is tested by the IKEv2 probe).
"""

from __future__ import annotations

import os
import struct

from blockwatch.probes.context import ProbeContext, ProbeResult
from blockwatch.probes.errors import MalformedReply
from blockwatch.probes.model import Target
from blockwatch.probes.openvpn import _exchange_udp
from blockwatch.probes.vpnbase import begin

SCCRQ, SCCRP, STOPCCN = 1, 2, 4
MESSAGE_TYPES = {SCCRP: "SCCRP", STOPCCN: "StopCCN", 6: "HELLO", 1: "SCCRQ"}
MALFORMED = "l2tp_malformed_reply"


def _avp(attr: int, value: bytes, mandatory: bool = True) -> bytes:
    return struct.pack(">HHH", (0x8000 if mandatory else 0) | (6 + len(value)), 0, attr) + value


def build_sccrq(tunnel_id: int, host_name: bytes = b"blockwatch") -> bytes:
    avps = (_avp(0, struct.pack(">H", SCCRQ)) + _avp(2, struct.pack(">H", 0x0100))
            + _avp(7, host_name) + _avp(3, struct.pack(">I", 3))
            + _avp(9, struct.pack(">H", tunnel_id)))
    return struct.pack(">HHHHHH", 0xC802, 12 + len(avps), 0, 0, 0, 0) + avps


def parse_reply(data: bytes, *, tunnel_id: int) -> str:
    """The name of the control message the server sent to our tunnel id."""
    if len(data) < 12:
        raise MalformedReply(f"{len(data)} bytes: too short for an L2TP control message")
    flags, length, tunnel, _session, _ns, _nr = struct.unpack(">HHHHHH", data[:12])
    if flags & 0xC80F != 0xC802:
        raise MalformedReply(f"flags {flags:#06x}: not an L2TPv2 control message")
    if length != len(data):
        raise MalformedReply(f"length field {length} but {len(data)} bytes")
    if tunnel != tunnel_id:
        raise MalformedReply("the reply is not for our tunnel id")
    if len(data) < 20:
        raise MalformedReply("no Message Type AVP")
    bits, _vendor, attr = struct.unpack(">HHH", data[12:18])
    if attr != 0 or bits & 0x3FF != 8 or bits & 0x4000:
        raise MalformedReply("the first AVP is not a plain Message Type")
    (kind,) = struct.unpack(">H", data[18:20])
    if kind not in (SCCRP, STOPCCN):
        raise MalformedReply(f"message type {kind}, expected SCCRP or StopCCN")
    return MESSAGE_TYPES[kind]


class L2TPProbe:
    name = "l2tp"
    version = "1"

    async def observe(self, target: Target, ctx: ProbeContext) -> ProbeResult:
        attempt = await begin(target, ctx, "l2tp", target.port or 1701, "udp")
        if isinstance(attempt, ProbeResult):
            return attempt
        address, port, done = attempt.address, attempt.port, attempt.done
        tunnel_id = int.from_bytes(os.urandom(2), "big") or 1
        try:
            reply = await _exchange_udp(address, port, build_sccrq(tunnel_id),
                                        ctx.timeouts.tcp, ctx.source_address)
        except Exception as exc:
            return attempt.failed(exc)
        try:
            kind = parse_reply(reply, tunnel_id=tunnel_id)
        except MalformedReply as exc:
            return done("malformed", MALFORMED, why=str(exc))
        return done("reachable", None, reply=kind)
