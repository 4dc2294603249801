"""Service rules: one verdict for a service from the verdicts of its measurements.

``SERVICE_RULES`` in order, the first that applies decides; the last always applies. Layers
count from the bottom up: a working layer below a blocked one (DNS answering while TCP to the
answer is dropped) does not make the blocking partial; a working one at or above does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from blockwatch.analysis.rules import BLOCKED, Finding, Rule, first, verdict
from blockwatch.probes import registry
from blockwatch.probes.model import AppPart, Service, Verdict


def rank(layer_or_probe: str | None) -> int:
    """A layer's (or a probe's layer's) place from the bottom, as the registry declares it
    (dns 0, tcp 1, tls 2, http 3, VPN and raw packets 4); unknown: the top."""
    return registry.RANK.get(layer_or_probe or "", registry.TOP_RANK)


@dataclass(frozen=True, slots=True)
class ServiceCase:
    name: str
    service: Service | None
    verdicts: Sequence[Verdict]  # of the service's measurements
    probes: Mapping[str, str] | None  # measurement id -> probe, to place ``ok`` in its layer
    keys: Mapping[str, str]  # measurement id -> target key (the app rule's endpoints)
    blocked: list[Verdict]
    ok: list[Verdict]  # ok measurements (at or above the lowest blocked layer, if any)
    failed: list[Verdict]  # neither ok nor blocked
    parts: list[PartState] = field(default_factory=list)  # the app rule's, judged once

    @property
    def counts(self) -> dict[str, int]:
        return {"measurements": len(self.verdicts),
                "ok": sum(v.verdict == "ok" for v in self.verdicts),
                "blocked": len(self.blocked), "failed": len(self.failed)}

    def at_or_above(self, lowest: int) -> list[Verdict]:
        return [v for v in self.ok if self.probes is None
                or rank(self.probes.get(v.measurement_id or "")) >= lowest]


def case(name: str, verdicts: Sequence[Verdict], probes: Mapping[str, str] | None = None,
         service: Service | None = None, keys: Mapping[str, str] | None = None) -> ServiceCase:
    blocked = [v for v in verdicts if v.verdict in BLOCKED]
    ok = [v for v in verdicts if v.verdict == "ok"]
    if blocked and probes is not None:
        lowest = min(rank(v.layer) for v in blocked)
        ok = [v for v in ok if rank(probes.get(v.measurement_id or "")) >= lowest]
    failed = [v for v in verdicts if v.verdict not in ("ok", *BLOCKED)]
    c = ServiceCase(name, service, verdicts, probes, keys or {}, blocked, ok, failed)
    return dataclasses.replace(c, parts=app_parts(c)) if service and service.app else c


# --- the catalogue's app rules (OONI's whatsapp 0.11, telegram 0.3, signal 0.2, fbmessenger) --


@dataclass(frozen=True, slots=True)
class PartState:
    """What this run says of one part of an app: ``blocked``, ``degraded`` (some hosts blocked,
    others working: a part the app tries host by host), ``ok`` or ``unknown`` (failures
    without evidence, or nothing measured)."""

    part: AppPart
    state: str
    blocked: tuple[str, ...]  # hosts
    working: tuple[str, ...]
    hosts: int
    layers: frozenset[str]
    rules: frozenset[str]

    def says(self) -> str:
        if self.state == "blocked" and self.part.blocked_when == "any" and self.hosts > 1:
            return f"{self.part.name} blocked at {_few(self.blocked)}"
        if self.state == "degraded":
            return (f"{self.part.name} blocked at {len(self.blocked)} of {self.hosts} hosts "
                    f"({_few(self.blocked)})")
        return f"{self.part.name} {self.state}"


def _few(hosts: Sequence[str]) -> str:
    return ", ".join(hosts[:3]) + (", ..." if len(hosts) > 3 else "")


def _host_of(endpoint: str) -> str:
    if "://" in endpoint:
        return (urlsplit(endpoint).hostname or "").lower()
    return endpoint.rpartition(":")[0].strip("[]").lower()


def app_parts(c: ServiceCase) -> list[PartState]:
    """Each part of the service's app rule, judged from the verdicts at its endpoints: an
    endpoint is blocked if a measurement there is (or its host's DNS is), working if every
    measurement there is ok; a host is blocked if every endpoint of it is, working if one is.
    Blocking verdicts already required a control (or a strong signature)."""
    s = c.service
    if s is None or s.app is None:
        return []
    probes = c.probes or {}
    at: dict[str, list[Verdict]] = {}
    dns_blocked: dict[str, list[Verdict]] = {}
    for v in c.verdicts:
        key = c.keys.get(v.measurement_id or "")
        probe = probes.get(v.measurement_id or "")
        if key is None:
            continue
        if probe == "dns":  # a name's DNS only adds blocking (a quiet silent address is ok)
            if v.verdict in BLOCKED:
                dns_blocked.setdefault(key.rpartition("@")[0].lower(), []).append(v)
        elif v.verdict in BLOCKED or probe not in registry.ADDS_ONLY:
            at.setdefault(key, []).append(v)
    out = []
    for part in s.app.parts:
        hosts: dict[str, list[str]] = {}
        evidence: dict[str, list[Verdict]] = {}
        for e in part.endpoints:
            host = _host_of(e)
            vs = [*at.get(e, ()), *dns_blocked.get(host, ())]
            blocked = [v for v in vs if v.verdict in BLOCKED]
            evidence.setdefault(host, []).extend(blocked)
            state = ("blocked" if blocked else
                     "ok" if vs and all(v.verdict == "ok" for v in vs) else "unknown")
            hosts.setdefault(host, []).append(state)
        by_host = {h: ("blocked" if all(x == "blocked" for x in xs) else
                       "ok" if "ok" in xs else "unknown") for h, xs in hosts.items()}
        b = tuple(h for h, x in by_host.items() if x == "blocked")
        w = tuple(h for h, x in by_host.items() if x == "ok")
        if part.blocked_when == "any":
            state = "blocked" if b else "ok" if len(w) == len(by_host) else "unknown"
        else:
            state = ("blocked" if len(b) == len(by_host) else "degraded" if b and w else
                     "ok" if w and not b else "unknown")
        counted = [v for h in b for v in evidence[h]]
        out.append(PartState(part, state, b, w, len(by_host),
                             frozenset(v.layer for v in counted if v.layer),
                             frozenset(v.rule_id for v in counted)))
    return out


def _app_finding(c: ServiceCase, states: list[PartState], hit: list[PartState],
                 blocked: bool) -> Finding:
    text = c.service.app.text if c.service is not None and c.service.app is not None else ""
    says = "; ".join(st.says() for st in states)
    return Finding(f"{says}{': ' + text if text and blocked else ''}",
                   {**c.counts, "parts": {st.part.name: {"state": st.state,
                                                         "blocked_hosts": list(st.blocked)}
                                          for st in states},
                    "rules": sorted({r for st in hit for r in st.rules})},
                   ",".join(sorted({layer for st in hit for layer in st.layers})))


def _app_blocked(c: ServiceCase) -> Finding | None:
    """Every core part of the app is blocked: the app cannot work, whatever its web pages do."""
    states = c.parts
    core = [st for st in states if st.part.core]
    if not core or any(st.state != "blocked" for st in core):
        return None
    return _app_finding(c, states, core, blocked=True)


def _app_degraded(c: ServiceCase) -> Finding | None:
    """Some part of the app is blocked (or some of its hosts are) while some of it works:
    the app is partly blocked (Telegram's web client blocked while its data centres answer;
    WhatsApp blocked at some of its chat hosts)."""
    states = c.parts
    hit = [st for st in states if st.state in ("blocked", "degraded")]
    if not hit or not any(st.state in ("ok", "degraded") for st in states):
        return None
    return _app_finding(c, states, hit, blocked=False)


def _blocking(c: ServiceCase) -> Finding:
    layers = sorted({v.layer for v in c.blocked if v.layer})
    return Finding(c.blocked[0].evidence,
                   {**c.counts, "rules": sorted({v.rule_id for v in c.blocked})},
                   ",".join(layers))


def _quic_only(c: ServiceCase) -> Finding | None:
    """Every blocking verdict is QUIC's while measurements over TCP work: the service loads in
    a browser that falls back to TCP, and apps that need HTTP/3 (or wait for it) fail."""
    if not c.blocked or not c.ok or any(v.layer != "quic" for v in c.blocked):
        return None
    found = _blocking(c)
    return Finding(f"reachable over TCP, blocked over QUIC (HTTP/3): {found.evidence}",
                   {**found.details, "tcp": "ok", "quic": "blocked"}, "quic")


def _partial(c: ServiceCase) -> Finding | None:
    return _blocking(c) if c.blocked and c.ok else None


def _blocked(c: ServiceCase) -> Finding | None:
    return _blocking(c) if c.blocked else None


def _ok(c: ServiceCase) -> Finding | None:
    if c.verdicts and len(c.ok) == len(c.verdicts):
        return Finding(f"{len(c.ok)} measurements ok", c.counts)
    return None


def _down(c: ServiceCase) -> Finding | None:
    if not c.failed or any(v.verdict != "down" for v in c.failed):
        return None
    # a dead server still resolves: working layers below the outage do not make it "up"
    if c.at_or_above(min(rank(v.layer) for v in c.failed)):
        return None
    return Finding(c.failed[0].evidence, c.counts, c.failed[0].layer)


def _inconclusive(c: ServiceCase) -> Finding:
    x = c.failed[0] if c.failed else None
    if x is None:
        return Finding("no measurements", c.counts)
    return Finding(f"{len(c.failed)}/{len(c.verdicts)} failed: {x.evidence}",
                   {**c.counts, "rules": sorted({v.rule_id for v in c.failed})}, x.layer)


SERVICE_RULES: tuple[Rule[ServiceCase], ...] = (
    Rule("service.app_blocked", "blocked",
         "the catalogue's app rule: every core part of the app is blocked, so the app cannot "
         "work even if its web pages load", _app_blocked),
    Rule("service.app_degraded", "partial",
         "the catalogue's app rule: a part of the app is blocked (or some of its hosts are) "
         "while another part works", _app_degraded),
    Rule("service.quic_only", "partial",
         "reachable over TCP, blocked over QUIC: every blocking verdict is the quic probe's "
         "while measurements over TCP (TLS, HTTP) work", _quic_only),
    Rule("service.partial", "partial", "blocking evidence on some measurements, others work",
         _partial),
    Rule("service.blocked", "blocked", "blocking evidence and no working measurement", _blocked),
    Rule("service.ok", "ok", "every measurement of the service is ok", _ok),
    Rule("service.down", "down",
         "failures that the controls share, and nothing works at or above their layer (a dead "
         "server's name still resolves)", _down),
    Rule("service.inconclusive", "inconclusive",
         "failures without evidence of blocking, or no measurements", _inconclusive),
)
NETWORK_UNAVAILABLE: Rule[Any] = Rule("service.network_unavailable", "network_unavailable",
                                "the local network was down")


def judge_service(name: str, verdicts: Sequence[Verdict],
                  probes: Mapping[str, str] | None = None, service: Service | None = None,
                  keys: Mapping[str, str] | None = None) -> Verdict:
    """One verdict for a service from its measurements' verdicts (``probes``: measurement id
    -> probe name, to place ``ok`` measurements in their layer; ``service`` and ``keys``: the
    catalogue entry and the measurements' target keys, for the app rule)."""
    decision = first(SERVICE_RULES, case(name, verdicts, probes, service, keys))
    assert decision is not None  # the last rule always applies
    return verdict(decision.rule, decision.finding, None, name)
