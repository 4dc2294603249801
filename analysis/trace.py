"""Raw-packet rules (the ``trace`` probe): a forged RST first, then interference that begins
before the server's distance, then the located facts without a claim.

The probe stores facts (the SYN-ACK's and every RST's IP TTL, IP-ID, DF and flags; each
TTL-limited step's result); ``read`` turns them into the readings the rules use: which RST was
not the server's (``judge_rst``), GFW Report's injector type (``rst_fingerprint``) and where
interference begins (``locate``). Re-analysis of an old measurement reads its facts again.

``TRACE_RULES`` in order, the first that applies decides; none applies (nothing captured, out
of scope, IPv6): the generic rules judge the measurement like any other probe's. A rule's layer
is the layer the trace probed: ``syn`` TCP, ``tls`` the ClientHello, ``http`` the request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from blockwatch.analysis.evidence import Subject
from blockwatch.analysis.rules import Decision, Finding, Rule, first
from blockwatch.probes import failures as F
from blockwatch.probes.model import Measurement, RawObservation
from blockwatch.probes.trace import MAX_HOPS, REACHED, SILENT_CONFIRM, decisive

# --- reading the facts -------------------------------------------------------------------------

def judge_rst(synack: dict[str, Any] | None, rst: dict[str, Any]) -> str | None:
    """Why ``rst`` was not sent by the host that sent ``synack``, or None if nothing says so.

    The server's own packets leave with one initial TTL over one path, so the IP TTL of its RST
    equals its SYN-ACK's; so does the DF bit. IP-ID: Linux sends its SYN-ACK with IP-ID 0 and DF
    and later packets (its own RST too) with a per-connection counter, so a zero SYN-ACK IP-ID
    says nothing about the RST's; only a server that numbers even its SYN-ACK (non-zero IP-ID)
    is expected never to send IP-ID 0 without DF (GFW type I's pattern).
    """
    if synack is None:
        return None
    if rst["ttl"] != synack["ttl"]:
        return f"ttl {rst['ttl']} vs syn-ack {synack['ttl']}"
    if bool(rst["df"]) != bool(synack["df"]):
        return f"df {int(bool(rst['df']))} vs syn-ack df {int(bool(synack['df']))}"
    if synack["ipid"] != 0 and rst["ipid"] == 0 and not rst["df"]:
        return f"ip-id 0 without df vs syn-ack ip-id {synack['ipid']}"
    return None


def judge_resets(synack: dict[str, Any] | None, resets: Sequence[dict[str, Any]]) -> str | None:
    """The reason of the first forged RST (with a count when there were several), or None."""
    reasons = [r for r in (judge_rst(synack, x) for x in resets) if r]
    if not reasons:
        return None
    return reasons[0] if len(resets) == 1 else f"{reasons[0]} ({len(reasons)} of {len(resets)})"


def rst_fingerprint(synack: dict[str, Any] | None,
                    resets: Sequence[dict[str, Any]]) -> str | None:
    """GFW Report's RST injector types (FIELD-NOTES section 3): type I sends 1 RST with IP-ID 0
    and DF 0, type II 3 RST+ACK with DF set, type III 1 RST+ACK with IP TTL 248. Where the
    SYN-ACK is known, only RSTs judged not to be the server's count."""
    suspects = [r for r in resets if synack is None or judge_rst(synack, r)]
    rst_ack = [r for r in suspects if r["flags"] == "RA"]
    if len(rst_ack) == 1 and rst_ack[0]["ttl"] == 248:
        return "gfw_type3"
    if len(rst_ack) == 3 and all(r["df"] for r in rst_ack):
        return "gfw_type2"
    rst = [r for r in suspects if r["flags"] == "R"]
    if len(rst) == 1 and rst[0]["ipid"] == 0 and not rst[0]["df"]:
        return "gfw_type1"
    return None


@dataclass(frozen=True, slots=True)
class Located:
    """Where interference begins on the path, from the TTL-limited steps."""

    interference_ttl: int | None = None
    interference: str | None = None  # "rst" or "drop"
    last_hop: str | None = None  # the router that answered at the TTL before it
    server_ttl: int | None = None  # the server itself answered at this TTL


def locate(hops: Sequence[dict[str, Any]]) -> Located:
    """Where interference begins. Silence counts as a drop once it held ``SILENT_CONFIRM`` more
    TTLs, or up to the end of a search that was not cut short by the probe's time budget (it
    ended decisively or at ``MAX_HOPS``)."""
    if not hops:
        return Located()
    finished = decisive(hops) or hops[-1]["ttl"] >= MAX_HOPS
    first_silent: int | None = None
    ttl: int | None = None
    kind: str | None = None
    server: int | None = None
    for hop in hops:
        result = hop["result"]
        if result in REACHED:
            server = hop["ttl"]
            break
        if result == "rst":
            ttl, kind = hop["ttl"], "rst"
            break
        if result == "unreachable":  # refused with an ICMP error: the packet went no further
            ttl, kind = hop["ttl"], "drop"
            break
        if result == "silent":
            first_silent = hop["ttl"] if first_silent is None else first_silent
            if hop["ttl"] - first_silent >= SILENT_CONFIRM:
                break
        else:
            first_silent = None  # a router answered: the silent ones before it were just quiet
    if ttl is None and server is None and first_silent is not None:
        confirmed = hops[-1]["ttl"] - first_silent >= SILENT_CONFIRM
        if confirmed or (finished and hops[-1]["result"] == "silent"):
            ttl, kind = first_silent, "drop"
    last_hop = None
    if ttl is not None and ttl >= 2:
        before = next((h for h in hops if h["ttl"] == ttl - 1), None)
        if before is not None and before["result"] == "time_exceeded":
            last_hop = before["from"]
    return Located(ttl, kind, last_hop, server)


INITIAL_TTLS = (64, 128, 255)  # what operating systems start a packet's IP TTL at
PATH_MARGIN = 2  # hops: the way back may be this much longer or shorter than the way there


def server_distance(synack: dict[str, Any] | None) -> int | None:
    """The smallest IP TTL that reaches the server, estimated from its SYN-ACK: it left with the
    next initial TTL at or above the one seen and lost one per router on the way back (which
    may differ from the way there: compare with ``PATH_MARGIN``)."""
    if synack is None:
        return None
    ttl = int(synack["ttl"])
    initial = next((i for i in INITIAL_TTLS if i >= ttl), None)
    return None if initial is None or ttl < 1 else initial - ttl + 1


def before_server(where: Located, hops: Sequence[dict[str, Any]],
                  distance: int | None) -> bool:
    """Interference that the packet met before reaching the server, by the server's SYN-ACK's
    distance (with ``PATH_MARGIN``): a reset came back to a packet whose TTL ran out before the
    server, or the search stayed silent at TTLs that reach the server with room to spare (no
    answer, not even an acknowledgement). A search that reached the server located nothing
    (``locate`` stops there), so the server's own answer never takes part."""
    ttl = where.interference_ttl
    if ttl is None or distance is None:
        return False
    if where.interference == "rst":
        return ttl + PATH_MARGIN < distance
    deepest_silent = max((h["ttl"] for h in hops if h["result"] == "silent"), default=0)
    return where.interference == "drop" and deepest_silent >= distance + PATH_MARGIN


@dataclass(frozen=True, slots=True)
class Reading:
    """The analysis's reading of one RawObservation's facts."""

    forged_rst: str | None  # why a RST is not the server's ("ttl 64 vs syn-ack 63")
    rst_fingerprint: str | None  # gfw_type1/2/3
    interference_ttl: int | None
    interference: str | None
    last_hop: str | None
    server_ttl: int | None  # the server answered the search at this TTL
    server_distance: int | None  # the server's distance by its SYN-ACK's IP TTL
    before_server: bool  # the interference began before the server (``before_server``)


def read(o: RawObservation) -> Reading:
    where = locate(o.hops)
    distance = server_distance(o.synack)
    return Reading(judge_resets(o.synack, o.resets), rst_fingerprint(o.synack, o.resets),
                   where.interference_ttl, where.interference, where.last_hop, where.server_ttl,
                   distance, before_server(where, o.hops, distance))



TRACE_LAYER = {"syn": "tcp", "tls": "tls", "http": "http"}


def layer_of(o: RawObservation) -> str:
    return TRACE_LAYER.get(o.mode, "tcp")


@dataclass(frozen=True, slots=True)
class TraceCase:
    m: Measurement
    raws: list[RawObservation]
    readings: list[Reading]  # read(o) of each, in the same order
    captured: bool  # something was captured (raw sockets were available and in scope)
    forged: int | None  # the index of the first observation with a forged RST
    before: int | None  # the index of the first whose interference begins before the server


def case(m: Measurement) -> TraceCase | None:
    raws = [o for o in m.observations if isinstance(o, RawObservation)]
    if not raws:
        return None
    readings = [read(o) for o in raws]
    forged = next((i for i, r in enumerate(readings) if r.forged_rst), None)
    before = next((i for i, r in enumerate(readings) if r.before_server), None)
    return TraceCase(m, raws, readings, any(o.capture for o in raws), forged, before)


def hop_story(r: Reading) -> str:
    if r.interference_ttl is None:
        return ""
    after = f", after hop {r.last_hop}" if r.last_hop else ""
    if r.server_ttl is not None:
        server = f"; the server answers at TTL {r.server_ttl}"
    elif r.server_distance is not None:
        server = f"; the server is {r.server_distance} by its SYN-ACK's IP TTL"
    else:
        server = ""
    return (f"{r.interference or 'interference'} begins at TTL {r.interference_ttl}{after}"
            f"{server}")


def _unavailable(c: TraceCase) -> Finding | None:
    if c.captured or not any(o.failure == F.RAW_UNAVAILABLE for o in c.raws):
        return None
    return Finding("no raw sockets (CAP_NET_RAW): nothing captured")


def _forged_rst(layer: str) -> Callable[[TraceCase], Finding | None]:
    def condition(c: TraceCase) -> Finding | None:
        if not c.captured or c.forged is None or layer_of(c.raws[c.forged]) != layer:
            return None
        o, r = c.raws[c.forged], c.readings[c.forged]
        fp = f" ({r.rst_fingerprint})" if r.rst_fingerprint else ""
        hop = hop_story(r)
        return Finding(f"RST at {o.address}:{o.port} not from the server: {r.forged_rst}{fp}"
                       f"{'; ' + hop if hop else ''}",
                       {"address": o.address, "forged_rst": r.forged_rst,
                        "rst_fingerprint": r.rst_fingerprint,
                        "interference_ttl": r.interference_ttl, "last_hop": r.last_hop})
    return condition


def _before_server(layer: str) -> Callable[[TraceCase], Finding | None]:
    def condition(c: TraceCase) -> Finding | None:
        if (not c.captured or c.forged is not None or c.before is None
                or layer_of(c.raws[c.before]) != layer):
            return None
        o, r = c.raws[c.before], c.readings[c.before]
        return Finding(f"{o.address}:{o.port}: {hop_story(r)}",
                       {"address": o.address, "interference_ttl": r.interference_ttl,
                        "last_hop": r.last_hop, "server_ttl": r.server_ttl,
                        "server_distance": r.server_distance})
    return condition


def _interference(c: TraceCase) -> Finding | None:
    found = [i for i, o in enumerate(c.raws) if o.capture and o.reply not in ("data", "synack")]
    if not c.captured or not found:
        return None
    o, r = c.raws[found[0]], c.readings[found[0]]
    return Finding(f"{o.reply} at {o.address}:{o.port}; {hop_story(r) or 'not located'}",
                   {"address": o.address, "reply": o.reply,
                    "interference_ttl": r.interference_ttl, "last_hop": r.last_hop,
                    "server_ttl": r.server_ttl}, layer_of(o))


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
         "TTL-limited SYNs: drops or resets begin at a TTL too small to reach the server (its "
         "SYN-ACK's IP TTL puts it further by more than PATH_MARGIN) (trace probe)",
         _before_server("tcp"), "tcp"),
    Rule("raw.before_server.tls", "tls_blocked",
         "TTL-limited ClientHellos: resets or drops begin at a TTL that does not reach the "
         "server (its SYN-ACK's IP TTL puts it further by more than PATH_MARGIN) "
         "(trace probe)", _before_server("tls"), "tls"),
    Rule("raw.before_server.http", "http_blocked",
         "TTL-limited HTTP requests: resets or drops begin at a TTL that does not reach the "
         "server (its SYN-ACK's IP TTL puts it further by more than PATH_MARGIN) "
         "(trace probe)", _before_server("http"), "http"),
    Rule("raw.interference", "inconclusive",
         "resets or silence, located (the hop where they begin) but not shown to come from "
         "the path rather than the server (trace probe)", _interference),
    Rule("raw.clean", "ok", "the full-TTL attempt got the server's answer, no RST (trace probe)",
         _clean, "raw"),
)


def _stage(s: Subject) -> Decision | None:
    c = case(s.m)
    return first(TRACE_RULES, c) if c is not None else None


STAGES: tuple[tuple[str, Callable[[Subject], Decision | None]], ...] = (("raw packets", _stage),)
RULE_LISTS: dict[str, tuple[Rule[Any], ...]] = {"raw packets": TRACE_RULES}
