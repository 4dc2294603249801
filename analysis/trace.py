"""Raw-packet rules (the ``trace`` probe): a forged RST first, then interference that begins
before the server's distance, then the located facts without a claim.

``TRACE_RULES`` in order, the first that applies decides; none applies (nothing captured, out
of scope, IPv6): the generic rules judge the measurement like any other probe's. A rule's layer
is the layer the trace probed: ``syn`` TCP, ``tls`` the ClientHello, ``http`` the request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from blockwatch.analysis.rules import Finding, Rule
from blockwatch.probes import failures as F
from blockwatch.probes.model import Measurement, RawObservation

TRACE_LAYER = {"syn": "tcp", "tls": "tls", "http": "http"}


def layer_of(o: RawObservation) -> str:
    return TRACE_LAYER.get(o.mode, "tcp")


@dataclass(frozen=True, slots=True)
class TraceCase:
    m: Measurement
    raws: list[RawObservation]
    captured: bool  # something was captured (raw sockets were available and in scope)
    forged: RawObservation | None  # the first observation with a forged RST
    before: RawObservation | None  # the first whose interference begins before the server


def case(m: Measurement) -> TraceCase | None:
    raws = [o for o in m.observations if isinstance(o, RawObservation)]
    if not raws:
        return None
    forged = next((o for o in raws if o.forged_rst), None)
    before = next((o for o in raws if o.interference_ttl is not None
                   and o.server_ttl is not None and o.interference_ttl < o.server_ttl), None)
    return TraceCase(m, raws, any(o.capture for o in raws), forged, before)


def hop_story(o: RawObservation) -> str:
    if o.interference_ttl is None:
        return ""
    after = f", after hop {o.last_hop}" if o.last_hop else ""
    server = f"; the server answers at TTL {o.server_ttl}" if o.server_ttl is not None else ""
    return (f"{o.interference or 'interference'} begins at TTL {o.interference_ttl}{after}"
            f"{server}")


def _unavailable(c: TraceCase) -> Finding | None:
    if c.captured or not any(o.failure == F.RAW_UNAVAILABLE for o in c.raws):
        return None
    return Finding("no raw sockets (CAP_NET_RAW): nothing captured")


def _forged_rst(layer: str) -> Callable[[TraceCase], Finding | None]:
    def condition(c: TraceCase) -> Finding | None:
        o = c.forged
        if not c.captured or o is None or layer_of(o) != layer:
            return None
        fp = f" ({o.rst_fingerprint})" if o.rst_fingerprint else ""
        hop = hop_story(o)
        return Finding(f"RST at {o.address}:{o.port} not from the server: {o.forged_rst}{fp}"
                       f"{'; ' + hop if hop else ''}",
                       {"address": o.address, "forged_rst": o.forged_rst,
                        "rst_fingerprint": o.rst_fingerprint,
                        "interference_ttl": o.interference_ttl, "last_hop": o.last_hop})
    return condition


def _before_server(layer: str) -> Callable[[TraceCase], Finding | None]:
    def condition(c: TraceCase) -> Finding | None:
        o = c.before
        if not c.captured or c.forged is not None or o is None or layer_of(o) != layer:
            return None
        return Finding(f"{o.address}:{o.port}: {hop_story(o)}",
                       {"address": o.address, "interference_ttl": o.interference_ttl,
                        "last_hop": o.last_hop, "server_ttl": o.server_ttl})
    return condition


def _interference(c: TraceCase) -> Finding | None:
    found = [o for o in c.raws if o.capture and o.reply not in ("data", "synack")]
    if not c.captured or not found:
        return None
    o = found[0]
    return Finding(f"{o.reply} at {o.address}:{o.port}; {hop_story(o) or 'not located'}",
                   {"address": o.address, "reply": o.reply,
                    "interference_ttl": o.interference_ttl, "last_hop": o.last_hop,
                    "server_ttl": o.server_ttl}, layer_of(o))


def _clean(c: TraceCase) -> Finding | None:
    if not c.captured or c.m.failure is not None:
        return None
    o = c.raws[0]
    return Finding(f"{o.reply} from {o.address}:{o.port}")


TRACE_RULES: tuple[Rule[TraceCase], ...] = (
    Rule("raw.unavailable", "inconclusive",
         "no raw sockets (CAP_NET_RAW): no raw-packet evidence was collected (trace probe)",
         _unavailable, "raw"),
    Rule("raw.forged_rst.tcp", "tcp_blocked",
         "a RST whose IP TTL, DF bit or IP-ID disagrees with the server's SYN-ACK in the same "
         "flow: sent by something on the path, not the server (trace probe)",
         _forged_rst("tcp"), "tcp"),
    Rule("raw.forged_rst.tls", "tls_blocked",
         "after the ClientHello, a RST whose IP TTL, DF bit or IP-ID disagrees with the "
         "server's SYN-ACK: injected on the path (trace probe)", _forged_rst("tls"), "tls"),
    Rule("raw.forged_rst.http", "http_blocked",
         "after the HTTP request, a RST whose IP TTL, DF bit or IP-ID disagrees with the "
         "server's SYN-ACK: injected on the path (trace probe)", _forged_rst("http"), "http"),
    Rule("raw.before_server.tcp", "tcp_blocked",
         "TTL-limited SYNs: drops or resets begin at a TTL too small to reach the server, which "
         "answers at a larger one (trace probe)", _before_server("tcp"), "tcp"),
    Rule("raw.before_server.tls", "tls_blocked",
         "TTL-limited ClientHellos: resets or drops begin at a TTL that does not reach the "
         "server, which answers at a larger one (trace probe)", _before_server("tls"), "tls"),
    Rule("raw.before_server.http", "http_blocked",
         "TTL-limited HTTP requests: resets or drops begin at a TTL that does not reach the "
         "server, which answers at a larger one (trace probe)", _before_server("http"), "http"),
    Rule("raw.interference", "inconclusive",
         "resets or silence, located (the hop where they begin) but not shown to come from "
         "the path rather than the server (trace probe)", _interference),
    Rule("raw.clean", "ok", "the full-TTL attempt got the server's answer, no RST (trace probe)",
         _clean, "raw"),
)
