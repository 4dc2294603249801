"""QUIC rules (the ``quic`` probe): is HTTP/3 blocked where HTTPS over TCP works?

The IMC'21 method (Elmenhorst et al., "Web censorship measurements of HTTP/3 over QUIC"):
the same address over TCP and over QUIC. TCP/TLS works and QUIC does not: UDP or QUIC
blocking; both fail: address blocking or an outage, which the TCP/TLS rules judge. The
version-negotiation ping (``quicping``) and the control-SNI handshake tell the two QUIC cases
apart from one vantage: an answered ping means UDP reaches a QUIC stack, so a failing
handshake is the name's (SNI filtering) or QUIC's; no answer to anything on UDP while TCP and
TLS work, at a server that advertises HTTP/3 (``Alt-Svc: h3`` over TCP), means UDP/443 is
dropped.

Found by ``blockwatch.analysis.verdicts`` through the probe registry (this module's name is the
probe's): ``STAGES`` run for ``quic`` measurements before the generic rules; ``QUIC_RULES`` in
order, the first that applies decides. A measurement without a failure is ``ok.no_failure``.
The probe only adds blocking (``Spec.adds_only``): a server without QUIC, an inconclusive
handshake, takes nothing from a service that works over TCP; a QUIC block makes a working
service ``partial`` (``service.quic_only``: "reachable over TCP, blocked over QUIC").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from blockwatch.analysis.evidence import Subject
from blockwatch.analysis.failure import NO_CONTROL, SAME_AS_CONTROL
from blockwatch.analysis.rules import Decision, Finding, Rule, first
from blockwatch.probes import failures as F
from blockwatch.probes.model import Measurement
from blockwatch.probes.quic import (
    CONTROL,
    HANDSHAKE,
    PING,
    PROXY_UNSUPPORTED,
    RESIDUAL_S,
    QUICObservation,
)

OPERATIONS = frozenset({"quic_handshake", "http3_round_trip"})
# what a censor makes of a QUIC handshake: silence, an ICMP error, a forged close or reset
SILENCED = frozenset({F.GENERIC_TIMEOUT, F.CONNECTION_REFUSED, F.HOST_UNREACHABLE,
                      F.NETWORK_UNREACHABLE, F.CONNECTION_RESET})


@dataclass(frozen=True, slots=True)
class QUICCase:
    m: Measurement
    address: str
    port: int
    sni: str
    handshake: QUICObservation  # the one that counts (a retry's, when there was one)
    ping: QUICObservation | None
    control_sni: QUICObservation | None
    tcp_ok: bool  # this vantage's TCP connect or verified TLS to the same address worked
    h3_advertised: bool  # the name, or the server at the address, said Alt-Svc h3 over TCP
    controls: tuple[QUICObservation, ...]  # control vantages' handshakes at the same address

    @property
    def where(self) -> str:
        return f"{self.address}:{self.port} naming {self.sni}"

    @property
    def handshake_failed(self) -> bool:
        """The handshake itself failed, not the GET after it: from one vantage, a GET that
        timed out over a completed handshake is the server's slowness as likely as a censor's
        (the control SNI's exchange and the ping have no GET to compare it with)."""
        return self.handshake.operation != "http3_round_trip"

    @property
    def ping_answered(self) -> bool:
        return self.ping is not None and self.ping.failure is None

    @property
    def ping_silent(self) -> bool:
        return self.ping is not None and self.ping.failure in SILENCED


def case(s: Subject) -> QUICCase | None:
    if s.m.failed_operation not in OPERATIONS or s.m.failure == F.OUT_OF_SCOPE:
        return None  # nothing sent: the generic rules say so (scope.refused)
    obs = [o for o in s.m.observations if isinstance(o, QUICObservation)]
    handshakes = [o for o in obs if o.kind == HANDSHAKE]
    if not handshakes:
        return None
    # the first address's last handshake: the one the measurement's failure is
    final = [o for o in handshakes if o.address == handshakes[0].address][-1]
    here = [o for o in obs if o.address == final.address]
    ping = next((o for o in here if o.kind == PING), None)
    control = next((o for o in here if o.kind == CONTROL), None)
    sni = (final.sni or s.m.target.host).lower()
    tcp_ok = (final.address in s.ev.tcp_ok
              or final.address in s.ev.verified.get(sni, set()))
    controls = tuple(o for c in s.ev.by_target.get(("quic", s.m.target.key), [])
                     for o in c.observations if isinstance(o, QUICObservation)
                     and o.kind == HANDSHAKE and o.address == final.address)
    return QUICCase(s.m, final.address, final.port, sni, final, ping, control, tcp_ok,
                    bool({sni, final.address} & s.ev.alt_svc_h3), controls)


def _not_sent(c: QUICCase) -> Finding | None:
    if c.handshake.failure != PROXY_UNSUPPORTED:
        return None
    return Finding("nothing sent: UDP cannot go through the vantage's SOCKS5 proxy",
                   {"address": c.address})


def _sni_vs_control_sni(c: QUICCase) -> Finding | None:
    if (not c.handshake_failed or c.handshake.failure not in SILENCED or c.control_sni is None
            or c.control_sni.failure is not None):
        return None
    return Finding(f"QUIC handshake {c.handshake.failure} at {c.where}; the same address "
                   f"completed a QUIC handshake for {c.control_sni.sni}: the name is filtered",
                   {"address": c.address, "sni_based": True, "control_sni": c.control_sni.sni,
                    "tcp_ok": c.tcp_ok})


def _clean_silence(o: QUICObservation) -> bool:
    """Silent, and begun before any handshake of ours naming another name there."""
    return o.after_failure_s is None and o.failure in SILENCED


def _residual(c: QUICCase) -> Finding | None:
    """A silence after another name's handshake at the address began (and failed, or had not
    ended): that name may have set the censor's residual blocking, which blocks every name
    after it. Not so when the ping, sent after that handshake began, was answered, nor when
    the ping and the control SNI were silent before any such handshake began (UDP dropped)."""
    after = c.handshake.after_failure_s
    if after is None or after > RESIDUAL_S or c.handshake.failure not in SILENCED:
        return None
    if c.ping_answered and c.ping is not None and c.ping.t0 >= c.handshake.t0 - after:
        return None
    if c.ping is not None and _clean_silence(c.ping) and (
            c.control_sni is None or _clean_silence(c.control_sni)):
        return None  # UDP was silent there before any name of ours: not our doing
    return Finding(f"QUIC {c.handshake.failure} at {c.where} {after:.0f} s after a handshake "
                   "of ours naming another name began there and failed (or had not ended): "
                   "possibly residual blocking our own probe triggered, not this name's",
                   {"address": c.address})


def _failure_vs_control(c: QUICCase) -> Finding | None:
    if c.handshake.failure not in SILENCED or not any(o.failure is None for o in c.controls):
        return None
    return Finding(f"QUIC handshake {c.handshake.failure} at {c.where}; a control vantage "
                   "completed it at the same address", {"address": c.address,
                                                        "tcp_ok": c.tcp_ok})


def _handshake_vs_quicping(c: QUICCase) -> Finding | None:
    # a stack that answers a Version Negotiation may still complete no handshake (a load
    # balancer in front of a site without HTTP/3): only one that says it serves HTTP/3 counts
    if (not c.handshake_failed or c.handshake.failure != F.GENERIC_TIMEOUT
            or not c.ping_answered or not c.tcp_ok or not c.h3_advertised):
        return None
    return Finding(f"QUIC handshake timed out at {c.where} while the address answered the "
                   "version-negotiation ping and TCP/TLS, and advertises HTTP/3: QUIC "
                   "handshakes are filtered",
                   {"address": c.address, "quicping": True, "tcp_ok": True})


def _udp_blocked(c: QUICCase) -> Finding | None:
    if (not c.handshake_failed or c.handshake.failure != F.GENERIC_TIMEOUT
            or not c.ping_silent or not c.tcp_ok or not c.h3_advertised
            or (c.control_sni is not None and c.control_sni.failure is None)):
        return None
    return Finding(f"nothing answers QUIC at {c.address}:{c.port} (handshake and "
                   "version-negotiation ping) while TCP/TLS there works and the server "
                   "advertises HTTP/3: UDP/443 is blocked",
                   {"address": c.address, "udp_blocked": True, "tcp_ok": True})


def _same_as_control(c: QUICCase) -> Finding | None:
    if not c.controls or any(o.failure is None for o in c.controls):
        return None
    return Finding(f"QUIC {c.handshake.failure} at {c.where}; the control vantage's handshake "
                   "failed too: the server does not answer QUIC", {"address": c.address})


def _tcp_fails_too(c: QUICCase) -> Finding | None:
    if c.tcp_ok:
        return None
    return Finding(f"QUIC {c.handshake.failure} at {c.where}, and TCP/TLS to the address did "
                   "not work either: address blocking or an outage, for the TCP/TLS rules",
                   {"address": c.address})


def _no_control(c: QUICCase) -> Finding:
    return Finding(f"QUIC {c.handshake.failure} at {c.where}"
                   + ("" if c.h3_advertised else "; the server did not advertise HTTP/3"),
                   {"address": c.address})


QUIC_RULES: tuple[Rule[QUICCase], ...] = (
    Rule("quic.not_sent", "error",
         "a SOCKS5 proxy is configured and UDP cannot go through it: nothing was sent, so "
         "nothing is said of the server (a control vantage's failure included)", _not_sent,
         "quic"),
    Rule("quic.residual", "inconclusive",
         "no answer on UDP at an address where a QUIC handshake of this (or a recent) sweep "
         "naming another name had begun shortly before (or during) and failed or not ended: "
         "a censor's "
         "residual blocking that our own handshake may have triggered says nothing about this "
         "name (first: it outranks the control SNI and the control vantage, which that "
         "blocking did not reach)", _residual, "quic"),
    Rule("quic.sni_vs_control_sni", "quic_blocked",
         "the QUIC handshake naming the service got no answer (or an ICMP error or a reset) "
         "while, just before, the same address completed a QUIC handshake for the harmless "
         "control name: the name is filtered in QUIC (SNI blocking of QUIC Initials)",
         _sni_vs_control_sni, "quic"),
    Rule("quic.failure_vs_control", "quic_blocked",
         "the QUIC handshake failed while a control vantage completed it at the same address",
         _failure_vs_control, "quic"),
    Rule("quic.same_as_control", SAME_AS_CONTROL.verdict,
         "the control vantage's QUIC handshake at the same address failed too: the server does "
         "not speak QUIC (or is down)", _same_as_control, "quic"),
    Rule("quic.handshake_vs_quicping", "quic_blocked",
         "the QUIC handshake timed out while the address answered the version-negotiation ping "
         "(UDP reaches its QUIC stack), TCP/TLS to it worked and the server advertises HTTP/3 "
         "(Alt-Svc h3): QUIC handshakes are filtered",
         _handshake_vs_quicping, "quic"),
    Rule("quic.udp_blocked", "quic_blocked",
         "neither the QUIC handshake nor the version-negotiation ping got an answer while "
         "TCP/TLS to the same address worked and the server advertises HTTP/3 (Alt-Svc h3): "
         "UDP/443 is dropped", _udp_blocked, "quic"),
    Rule("quic.tcp_fails_too", "inconclusive",
         "QUIC failed and TCP/TLS to the same address did not work either: address blocking "
         "or an outage, which the TCP and TLS rules judge", _tcp_fails_too, "quic"),
    Rule("quic.no_control", NO_CONTROL.verdict,
         "the QUIC handshake failed and nothing tells blocking from a server without QUIC",
         _no_control, "quic"),
)


def _stage(s: Subject) -> Decision | None:
    c = case(s)
    return first(QUIC_RULES, c) if c is not None else None


STAGES: tuple[tuple[str, Callable[[Subject], Decision | None]], ...] = (("quic", _stage),)
RULE_LISTS: dict[str, tuple[Rule[Any], ...]] = {"quic": QUIC_RULES}
