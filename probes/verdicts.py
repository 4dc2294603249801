"""Verdicts, first version: pure functions from observations to opinions, with rule ids.

Blocking is claimed only on evidence that stands without guessing:

* a tested resolver says NXDOMAIN, or answers only bogons, while a control resolver gives the
  same name real addresses;
* one query got several responses with different contents (an on-path injector races the
  resolver; a duplicated packet would carry the same contents);
* every answer lies outside the prefixes a service is known to use exclusively, and the control
  resolver (if any) does not give that same answer.

Everything else that failed is ``inconclusive`` with the reason (no control yet says whether it
is blocking or an outage), or ``down`` when the control fails the same way. When the baseline
found the local network down, nothing is judged at all: ``network_unavailable``.
Rules are data with stable ids; ``ANALYZER_VERSION`` changes whenever a rule's logic does, so
stored verdicts can be recomputed and compared.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from probes import failures as F
from probes.model import DNSObservation, Measurement, Service, Verdict

ANALYZER_VERSION = "1"


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    verdict: str
    why: str


RULES: dict[str, Rule] = {r.id: r for r in (
    Rule("baseline.network_unavailable", "network_unavailable",
         "the local network was down before the sweep; nothing can be judged"),
    Rule("ok.no_failure", "ok", "every layer of the measurement succeeded"),
    Rule("dns.injection.multiple_responses", "dns_blocked",
         "one query got several responses with different contents: an on-path injector"),
    Rule("dns.nxdomain_vs_control", "dns_blocked",
         "the tested resolver says NXDOMAIN while a control resolver returns addresses"),
    Rule("dns.bogon_vs_control", "dns_blocked",
         "the tested resolver returns only bogons while a control resolver returns addresses"),
    Rule("dns.outside_expected_prefixes", "dns_blocked",
         "every answer lies outside the prefixes the service uses exclusively"),
    Rule("dns.same_as_control", "down",
         "the control resolver fails the same way: the name is broken everywhere"),
    Rule("failure.no_control", "inconclusive",
         "a failure without a control cannot tell blocking from an outage"),
    Rule("scope.refused", "error", "the scope allow-list refused the address; nothing was sent"),
    Rule("probe.bug", "error", "the probe raised an unexpected exception (a blockwatch bug)"),
    Rule("service.ok", "ok", "every measurement of the service is ok"),
    Rule("service.blocked", "blocked", "blocking evidence and no working measurement"),
    Rule("service.partial", "partial", "blocking evidence on some measurements, others work"),
    Rule("service.down", "down", "failures that the controls share"),
    Rule("service.inconclusive", "inconclusive",
         "failures without evidence of blocking, or no measurements"),
    Rule("service.network_unavailable", "network_unavailable", "the local network was down"),
)}

BLOCKED = {"dns_blocked", "tcp_blocked", "tls_blocked", "http_blocked", "vpn_blocked"}


def _verdict(rule_id: str, m: Measurement | None, service: str, *, layer: str | None = None,
             evidence: str = "", details: dict[str, Any] | None = None) -> Verdict:
    return Verdict(
        verdict=RULES[rule_id].verdict, rule_id=rule_id, analyzer_version=ANALYZER_VERSION,
        service=service, measurement_id=m.id if m else None, layer=layer, evidence=evidence,
        details=details or {},
    )


@dataclass(frozen=True, slots=True)
class _ControlAnswer:
    addresses: frozenset[str]
    failure: str | None


def _dns_a(m: Measurement) -> DNSObservation | None:
    for o in m.observations:
        if isinstance(o, DNSObservation) and o.qtype == "A":
            return o
    return None


def _controls(ms: Iterable[Measurement], controls: set[str]) -> dict[str, list[_ControlAnswer]]:
    out: dict[str, list[_ControlAnswer]] = defaultdict(list)
    for m in ms:
        if m.probe != "dns" or (m.target.resolver or "system") not in controls:
            continue
        obs = _dns_a(m)
        if obs is not None:
            out[m.target.host.lower()].append(_ControlAnswer(frozenset(obs.addresses), obs.failure))
    return out


def _injection(obs: DNSObservation) -> bool:
    valid = [r for r in obs.responses if r.malformed is None]
    contents = {(r.rcode, frozenset(a.value for a in r.answers)) for r in valid}
    return len(valid) > 1 and len(contents) > 1


def _outside(addresses: Sequence[str], prefixes: Sequence[str]) -> bool:
    nets = [ipaddress.ip_network(p) for p in prefixes]
    for a in addresses:
        ip = ipaddress.ip_address(a)
        if any(ip.version == n.version and ip in n for n in nets):
            return False
    return bool(addresses)


def judge_dns(m: Measurement, service: Service | None,
              controls: list[_ControlAnswer]) -> Verdict | None:
    obs = _dns_a(m)
    if obs is None:
        return None
    name = m.service
    good_control = [c for c in controls if c.failure is None and c.addresses]
    if _injection(obs):
        answers = sorted({a.value for r in obs.responses for a in r.answers})
        return _verdict("dns.injection.multiple_responses", m, name, layer="dns",
                        evidence=f"{len(obs.responses)} responses: {', '.join(answers[:4])}",
                        details={"responses": len(obs.responses)})
    if obs.failure == F.DNS_NXDOMAIN and good_control:
        return _verdict("dns.nxdomain_vs_control", m, name, layer="dns",
                        evidence="NXDOMAIN; control resolver returned addresses")
    if obs.failure == F.DNS_BOGON and good_control:
        return _verdict("dns.bogon_vs_control", m, name, layer="dns",
                        evidence=f"bogon {', '.join(obs.addresses[:3])}; control disagrees")
    if obs.failure is None and service and service.exclusive_prefixes and obs.addresses:
        control_addrs = set().union(*(c.addresses for c in good_control)) if good_control else set()
        if _outside(obs.addresses, service.prefixes) and not (set(obs.addresses) & control_addrs):
            return _verdict("dns.outside_expected_prefixes", m, name, layer="dns",
                            evidence=f"{obs.addresses[0]} outside {service.title}'s networks")
    if obs.failure is not None and controls and all(c.failure == obs.failure for c in controls):
        return _verdict("dns.same_as_control", m, name, layer="dns",
                        evidence=f"{obs.failure} from control resolvers too")
    return None


_LAYER = {"resolve": "dns", "connect": "tcp", "tls_handshake": "tls", "http_round_trip": "http"}


def judge_measurement(m: Measurement, service: Service | None,
                      controls: list[_ControlAnswer]) -> Verdict:
    if m.probe == "dns":
        found = judge_dns(m, service, controls)
        if found is not None:
            return found
    if m.failure is None:
        return _verdict("ok.no_failure", m, m.service)
    if m.failure == F.OUT_OF_SCOPE:
        return _verdict("scope.refused", m, m.service, evidence="address outside scope")
    if m.failed_operation == "probe":
        return _verdict("probe.bug", m, m.service, evidence=m.failure[:80])
    layer = _LAYER.get(m.failed_operation or "")
    return _verdict("failure.no_control", m, m.service, layer=layer,
                    evidence=f"{m.failure} at {m.failed_operation}")


def judge_run(measurements: Sequence[Measurement], services: dict[str, Service],
              control_resolvers: Iterable[str], *, network_ok: bool = True) -> list[Verdict]:
    """Verdicts for every tested measurement of a run, then one per service."""
    controls = set(control_resolvers)
    if not network_ok:
        names = sorted({m.service for m in measurements} | set(services))
        return [_verdict("service.network_unavailable", None, n,
                         evidence="local network down at baseline") for n in names]
    control_answers = _controls(measurements, controls)
    out: list[Verdict] = []
    for m in measurements:
        if m.probe == "dns" and (m.target.resolver or "system") in controls:
            continue  # control measurements are evidence, not subjects
        out.append(judge_measurement(m, services.get(m.service),
                                     control_answers.get(m.target.host.lower(), [])))
    by_service: dict[str, list[Verdict]] = defaultdict(list)
    for v in out:
        by_service[v.service].append(v)
    for name in sorted(set(by_service) | {m.service for m in measurements}):
        out.append(judge_service(name, by_service.get(name, [])))
    return out


def judge_service(name: str, verdicts: Sequence[Verdict]) -> Verdict:
    blocked = [v for v in verdicts if v.verdict in BLOCKED]
    ok = [v for v in verdicts if v.verdict == "ok"]
    failed = [v for v in verdicts if v.verdict not in ("ok", *BLOCKED)]
    layers = sorted({v.layer for v in blocked if v.layer})
    counts = {"measurements": len(verdicts), "ok": len(ok), "blocked": len(blocked),
              "failed": len(failed)}
    if blocked:
        rule = "service.partial" if ok else "service.blocked"
        return _verdict(rule, None, name, layer=",".join(layers), evidence=blocked[0].evidence,
                        details={**counts, "rules": sorted({v.rule_id for v in blocked})})
    if verdicts and len(ok) == len(verdicts):
        return _verdict("service.ok", None, name, evidence=f"{len(ok)} measurements ok",
                        details=counts)
    if failed and all(v.verdict == "down" for v in failed) and not ok:
        return _verdict("service.down", None, name, layer=failed[0].layer,
                        evidence=failed[0].evidence, details=counts)
    first = failed[0] if failed else None
    return _verdict("service.inconclusive", None, name, layer=first.layer if first else None,
                    evidence=(f"{len(failed)}/{len(verdicts)} failed: {first.evidence}"
                              if first else "no measurements"), details=counts)
