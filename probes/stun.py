"""The STUN probe ``stun``: does a STUN server answer a Binding request (RFC 8489)?

Voice and video calls (WhatsApp, Telegram, Signal, Google Meet, ...) first ask a STUN server,
over UDP, how the client is seen from outside; a censor that drops UDP to those servers breaks
calls while text messages still work. This probe sends the plainest Binding request (no
attributes) to each of a service's STUN endpoints: ``udp://host:port`` endpoints on a STUN port
(``[probe.stun] ports``, by default ``STUN_PORTS``) in the catalogue or the config.

Guarantees:

- The scope is checked before any packet; the name's first address is asked (as the VPN probes
  over UDP do); nothing else is sent.
- A lost datagram is resent at the VPN probes' times (``udp_send_times``: at once, then 0.25 s,
  0.5 s, 1 s, ... while the timeout lasts): one lost packet is not a silent server.
- A reply must be a STUN Binding response (success or error class) with the magic cookie, our
  transaction id and a length that matches; anything else is ``stun_malformed_reply``.
- **The vantage's address is never kept**: the server's answer (XOR-MAPPED-ADDRESS) is the
  client's public address, so the observation keeps only the names of the attributes the reply
  carried, an error response's code and the server's SOFTWARE text (at most 80 characters,
  data from the network, shown escaped like any other).

Facts only: ``result`` is ``binding_success``, ``binding_error`` (the server answered, with
``error_code``), ``no_reply``, ``icmp_unreachable``, ``malformed`` or ``not_sent``; whether a
silence is blocking is the analysis's call (``blockwatch.analysis.stun``, against a control).
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from blockwatch.probes import failures as F
from blockwatch.probes.context import ProbeContext, ProbeResult
from blockwatch.probes.errors import MalformedReply
from blockwatch.probes.model import ProbeObservation, Service, Target
from blockwatch.probes.openvpn import _exchange_udp
from blockwatch.probes.targets import PlanContext

OPERATION = "stun_binding"
MALFORMED = "stun_malformed_reply"
STUN_PORTS = (3478, 19302)  # IANA's STUN port; Google's public STUN servers'
MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST, BINDING_SUCCESS, BINDING_ERROR = 0x0001, 0x0101, 0x0111
SOFTWARE_MAX = 80
ATTRIBUTES = {0x0001: "MAPPED-ADDRESS", 0x0006: "USERNAME", 0x0008: "MESSAGE-INTEGRITY",
              0x0009: "ERROR-CODE", 0x000A: "UNKNOWN-ATTRIBUTES", 0x0014: "REALM",
              0x0015: "NONCE", 0x0020: "XOR-MAPPED-ADDRESS", 0x8022: "SOFTWARE",
              0x8023: "ALTERNATE-SERVER", 0x8028: "FINGERPRINT", 0x802B: "RESPONSE-ORIGIN",
              0x802C: "OTHER-ADDRESS"}
_RESULTS = {F.GENERIC_TIMEOUT: "no_reply", F.CONNECTION_REFUSED: "icmp_unreachable",
            F.HOST_UNREACHABLE: "icmp_unreachable", F.NETWORK_UNREACHABLE: "icmp_unreachable"}


class STUNSettings(BaseModel):
    """``[probe.stun]``: which of a service's ``udp://`` endpoints are STUN servers, by port."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ports: tuple[Annotated[int, Field(gt=0, lt=65536)], ...] = Field(default=STUN_PORTS,
                                                                      min_length=1)


@dataclass(frozen=True, slots=True)
class STUNObservation(ProbeObservation):
    """One Binding request to one address and what came back (never the mapped address)."""

    layer: str = field(default="stun", init=False)
    address: str
    port: int
    t0: float
    t: float
    result: str
    attributes: tuple[str, ...] = ()  # names of the reply's attributes, in order
    error_code: int | None = None  # an error response's code (e.g. 400, 401, 420)
    software: str | None = None  # the server's SOFTWARE attribute, cut to SOFTWARE_MAX
    failure: str | None = None


@dataclass(frozen=True, slots=True)
class BindingReply:
    kind: int
    attributes: tuple[str, ...]
    error_code: int | None
    software: str | None


def binding_request(transaction_id: bytes) -> bytes:
    """A Binding request without attributes (RFC 8489 section 5)."""
    return struct.pack(">HHI", BINDING_REQUEST, 0, MAGIC_COOKIE) + transaction_id


def parse_binding_reply(data: bytes, *, transaction_id: bytes) -> BindingReply:
    """The reply's class, attribute names, error code and SOFTWARE; ``MalformedReply`` for
    anything that is not a Binding response to our transaction."""
    if len(data) < 20:
        raise MalformedReply(f"{len(data)} bytes: shorter than a STUN header")
    kind, length, cookie = struct.unpack(">HHI", data[:8])
    if kind & 0xC000 or cookie != MAGIC_COOKIE:
        raise MalformedReply("not a STUN message (first bits or magic cookie)")
    if data[8:20] != transaction_id:
        raise MalformedReply("the reply is not for our transaction id")
    if kind not in (BINDING_SUCCESS, BINDING_ERROR):
        raise MalformedReply(f"message type {kind:#06x} is not a Binding response")
    if length % 4 or length != len(data) - 20:
        raise MalformedReply(f"length field {length} but {len(data) - 20} bytes of attributes")
    names: list[str] = []
    error_code = software = None
    pos = 20
    while pos < len(data):
        if pos + 4 > len(data) or len(names) >= 64:
            raise MalformedReply("truncated attribute")
        attr, alen = struct.unpack(">HH", data[pos: pos + 4])
        value = data[pos + 4: pos + 4 + alen]
        if len(value) != alen:
            raise MalformedReply(f"attribute {attr:#06x} runs past the message")
        names.append(ATTRIBUTES.get(attr, f"{attr:#06x}"))
        if attr == 0x0009 and alen >= 4:
            error_code = (value[2] & 0x07) * 100 + value[3]
        elif attr == 0x8022:
            software = value.decode("utf-8", "replace")[:SOFTWARE_MAX]
        pos += 4 + alen + (-alen % 4)
    return BindingReply(kind, tuple(names), error_code, software)


class STUNProbe:
    """Does the STUN server answer a Binding request?"""

    name = "stun"
    version = "1"

    async def observe(self, target: Target, ctx: ProbeContext) -> ProbeResult:
        port = target.port or STUN_PORTS[0]
        lookup = await ctx.lookup(target.host)
        if not lookup.addresses:
            return ProbeResult(lookup.observations, lookup.failure or F.DNS_NO_ANSWER, "resolve")
        address = next((a for a in lookup.addresses if ctx.scope.allows(a)), None)
        t0, start = time.time(), time.perf_counter()

        def done(result: str, failure: str | None, reply: BindingReply | None = None,
                 at: str | None = None) -> ProbeResult:
            o = STUNObservation(
                address=at or address or lookup.addresses[0], port=port, t0=t0,
                t=round(time.perf_counter() - start, 6), result=result,
                attributes=reply.attributes if reply else (),
                error_code=reply.error_code if reply else None,
                software=reply.software if reply else None, failure=failure)
            return ProbeResult((*lookup.observations, o), failure,
                               OPERATION if failure else None)

        if address is None:
            return done("not_sent", F.OUT_OF_SCOPE)
        transaction_id = os.urandom(12)
        try:
            data = await _exchange_udp(address, port, binding_request(transaction_id),
                                       ctx.timeouts.tcp, ctx.source_address)
        except (OSError, TimeoutError) as exc:
            failure = F.classify(exc)
            return done(_RESULTS.get(failure, "error"), failure)
        try:
            reply = parse_binding_reply(data, transaction_id=transaction_id)
        except MalformedReply:
            return done("malformed", MALFORMED)
        kind = "binding_success" if reply.kind == BINDING_SUCCESS else "binding_error"
        return done(kind, None, reply)


def plan_targets(service: Service, pc: PlanContext) -> list[Target]:
    """Every UDP endpoint of the service on a STUN port (``[probe.stun] ports``)."""
    settings = pc.settings.get("stun") or STUNSettings()
    return [Target(service=service.name, probe="stun", host=ep.host, port=ep.port,
                   transport="udp")
            for ep in service.endpoints if ep.transport == "udp" and ep.port in settings.ports]
