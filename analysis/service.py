"""Service rules: one verdict for a service from the verdicts of its measurements.

``SERVICE_RULES`` in order, the first that applies decides; the last always applies. Layers
count from the bottom up: a working layer below a blocked one (DNS answering while TCP to the
answer is dropped) does not make the blocking partial; a working one at or above does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from blockwatch.analysis.rules import BLOCKED, Finding, Rule, first, verdict
from blockwatch.probes import registry
from blockwatch.probes.model import Service, Verdict


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
    return ServiceCase(name, service, verdicts, probes, keys or {}, blocked, ok, failed)


def _app_chat_blocked(c: ServiceCase) -> Finding | None:
    """The catalogue's app-level rule (``all_chat_fail_with_working_control``): the app is
    blocked when every connection to its chat endpoints was judged blocked, whatever its web
    pages do. Only blocking verdicts count, and those already required a control."""
    s = c.service
    if s is None or s.app is None or s.app.rule != "all_chat_fail_with_working_control":
        return None
    probes = c.probes or {}
    chat = set(s.app.chat_endpoints)
    on_chat = [v for v in c.verdicts if v.measurement_id is not None
               and probes.get(v.measurement_id) in ("tcp", "tls")
               and c.keys.get(v.measurement_id) in chat]
    reached = {c.keys[v.measurement_id] for v in on_chat if v.measurement_id}
    if not on_chat or reached != chat or any(v.verdict not in BLOCKED for v in on_chat):
        return None
    layers = sorted({v.layer for v in c.verdicts if v.verdict in BLOCKED and v.layer})
    return Finding(f"all {len(chat)} chat endpoints blocked: {s.app.text}",
                   {"chat_endpoints": sorted(chat), "rules": sorted({v.rule_id for v in on_chat})},
                   ",".join(layers))


def _app_chat_degraded(c: ServiceCase) -> Finding | None:
    """The catalogue's ``any_chat_fail_with_working_control``: the app is degraded (partial)
    when some of its chat hosts are blocked on every port measured (as OONI's WhatsApp test:
    an endpoint counts as blocked only if both 443 and 5222 fail) while others work. Only
    blocking verdicts count, and those already required a control."""
    s = c.service
    if s is None or s.app is None or s.app.rule != "any_chat_fail_with_working_control":
        return None
    probes = c.probes or {}
    chat = set(s.app.chat_endpoints)
    by_host: dict[str, list[Verdict]] = {}
    for v in c.verdicts:
        key = c.keys.get(v.measurement_id or "")
        if v.measurement_id and probes.get(v.measurement_id) in ("tcp", "tls") and key in chat:
            by_host.setdefault(key.rpartition(":")[0], []).append(v)
    blocked = sorted(h for h, vs in by_host.items() if all(v.verdict in BLOCKED for v in vs))
    working = [h for h, vs in by_host.items() if any(v.verdict == "ok" for v in vs)]
    if not blocked or not working:
        return None
    layers = sorted({v.layer for h in blocked for v in by_host[h] if v.layer})
    return Finding(f"chat blocked at {', '.join(blocked)}, working at {len(working)} other "
                   f"host(s): {s.app.text}",
                   {"blocked_hosts": blocked, "rules": sorted({v.rule_id for h in blocked
                                                               for v in by_host[h]})},
                   ",".join(layers))


def _blocking(c: ServiceCase) -> Finding:
    layers = sorted({v.layer for v in c.blocked if v.layer})
    return Finding(c.blocked[0].evidence,
                   {**c.counts, "rules": sorted({v.rule_id for v in c.blocked})},
                   ",".join(layers))


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
    Rule("service.app_chat_blocked", "blocked",
         "the catalogue's app rule: every chat endpoint is blocked (against a control), so the "
         "app cannot work even if its web pages load", _app_chat_blocked),
    Rule("service.app_chat_degraded", "partial",
         "the catalogue's app rule any_chat_fail_with_working_control: some chat hosts are "
         "blocked on every port (against a control) while others work", _app_chat_degraded),
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
