"""VPN rules: a failed VPN handshake, blocked only if a control vantage completed the same one
(by host name as configured, so that a control resolving to other addresses still counts).

``VPN_RULES`` in order, the first that applies decides; the last always applies.
"""

from __future__ import annotations

from dataclasses import dataclass

from blockwatch.analysis.evidence import Evidence
from blockwatch.analysis.failure import NO_CONTROL, SAME_AS_CONTROL
from blockwatch.analysis.rules import Finding, Rule
from blockwatch.probes.model import Measurement, VPNObservation

# what a censor makes of a handshake (an unverifiable one, or a server error, is not that)
INTERFERED = frozenset({"no_reply", "reset", "icmp_unreachable", "refused", "closed",
                        "tls_failed"})


@dataclass(frozen=True, slots=True)
class VPNCase:
    m: Measurement
    obs: VPNObservation | None
    controls: list[str]  # the control vantages' results for the same protocol, host and port

    @property
    def where(self) -> str:
        return f"{self.obs.protocol if self.obs else 'vpn'} {self.m.target.key}"


def case(m: Measurement, ev: Evidence) -> VPNCase:
    obs = next((o for o in m.observations if isinstance(o, VPNObservation)), None)
    controls = ev.vpn.get((obs.protocol, m.target.host.lower(), obs.port), []) if obs else []
    return VPNCase(m, obs, controls)


def _unverifiable(c: VPNCase) -> Finding | None:
    if c.obs is not None and c.obs.result != "unverifiable":
        return None
    why = dict(c.obs.details).get("why", "") if c.obs else ""
    return Finding(f"unverifiable: {why}"[:120])


def _failure_vs_control(c: VPNCase) -> Finding | None:
    if c.obs is None or "reachable" not in c.controls or c.obs.result not in INTERFERED:
        return None
    return Finding(f"{c.obs.result} from {c.where}; the control's handshake succeeded")


def _same_as_control(c: VPNCase) -> Finding | None:
    if c.obs is None or not c.controls or "reachable" in c.controls:
        return None
    return Finding(f"{c.obs.result} from {c.where}; the control failed too")


def _no_control(c: VPNCase) -> Finding:
    result = c.obs.result if c.obs else ""
    if result == "no_reply":
        why = {"openvpn": "a server with tls-auth or tls-crypt, or a dead one, is silent too",
               "wireguard": "a server that does not know our key, or a dead one, is silent too",
               }.get(c.obs.protocol if c.obs else "", "a dead server is silent too")
        return Finding(f"{result} from {c.where} ({why})")
    return Finding(f"{result} from {c.where}")


VPN_RULES: tuple[Rule[VPNCase], ...] = (
    Rule("vpn.unverifiable", "inconclusive",
         "the VPN protocol cannot be tested without key material the config does not give",
         _unverifiable, "vpn"),
    Rule("vpn.failure_vs_control", "vpn_blocked",
         "the VPN handshake got no answer, a reset or an ICMP error while the control's "
         "handshake with the same endpoint succeeded", _failure_vs_control, "vpn"),
    Rule(SAME_AS_CONTROL.id, SAME_AS_CONTROL.verdict, SAME_AS_CONTROL.why, _same_as_control,
         "vpn"),
    Rule(NO_CONTROL.id, NO_CONTROL.verdict, NO_CONTROL.why, _no_control, "vpn"),
)
