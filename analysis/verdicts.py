"""The judgement of a run: ``AnalysisInputs`` in, verdicts out, by the ordered rule lists of
each layer (analysis/dns.py, http.py, trace.py, vpn.py, failure.py, service.py).

Blocking is claimed only on evidence that stands without guessing:

* a **strong signature**, which needs no control: one query answered several times with
  different contents (an on-path injector), a DNS answer that is a known forged address, an HTTP
  body or header matching a national/ISP/product block-page fingerprint, every DNS answer
  outside the networks a service uses exclusively, a RST that the server did not send;
* a **control** that disagrees: a control resolver (or a control vantage, such as OONI's test
  helper for imported data) gets real addresses where the tested resolver says NXDOMAIN, answers
  bogons, or answers addresses that share nothing with the control's (no IP, no /24 or /48, no
  catalogue prefix, no certificate valid for the name); the control connects, handshakes or
  fetches where the tested side failed; a certificate invalid for the name where the control's
  address presents a valid one.

Known false positives come first: a CDN's captcha or error page (fingerprint scope ``fp``) is
never a block page, and DNS answers that differ from the control while the control's own answers
lie outside the service's known networks are CDN answers until something else corroborates
them (``inconclusive``). A failure the control shares is ``down``; any other failure is
``inconclusive`` with the reason; with the local network down nothing is judged at all.

A measurement goes through its probe's stages first (``PROBE_STAGES``: the ``STAGES`` of
``blockwatch.analysis.<probe name>``, found through the probe registry: DNS answers, an HTTP
response, raw packets, ...), then ``COMMON_STAGES``: the generic rules (no failure, out of
scope, our bug), then its failure against the controls (a VPN handshake's or a step's).
``RULES`` lists every rule in that order, by id, for documentation and tests.
"""

from __future__ import annotations

import importlib
import importlib.util
import ipaddress
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from blockwatch.analysis import bogons, dns, failure, service, vpn
from blockwatch.analysis.evidence import (
    ControlAnswer,
    Evidence,
    RunFacts,
    Subject,
    gather,
    is_control,
)
from blockwatch.analysis.evidence import unconfirmed_silence as unconfirmed_silence
from blockwatch.analysis.fingerprints import FingerprintSet
from blockwatch.analysis.rules import (
    ANALYZER_VERSION,
    BLOCKED,
    LAYER,
    Decision,
    Finding,
    Rule,
    by_id,
    decide,
    first,
    verdict,
)
from blockwatch.probes import failures as F
from blockwatch.probes import registry
from blockwatch.probes.model import Measurement, RunInputs, Service, Verdict

__all__ = ["ANALYZER_VERSION", "BLOCKED", "RULES", "RULE_LISTS", "AnalysisInputs", "Judge",
           "builtin_fingerprints", "judge_measurement", "judge_run"]


def _ok(m: Measurement) -> Finding | None:
    return Finding() if m.failure is None else None


def _out_of_scope(m: Measurement) -> Finding | None:
    return Finding("address outside scope") if m.failure == F.OUT_OF_SCOPE else None


def _our_bug(m: Measurement) -> Finding | None:
    return Finding((m.failure or "")[:80]) if m.failed_operation == "probe" else None


GENERIC_RULES: tuple[Rule[Measurement], ...] = (
    Rule("ok.no_failure", "ok", "every layer of the measurement succeeded", _ok),
    Rule("scope.refused", "error", "the scope allow-list refused the address; nothing was sent",
         _out_of_scope),
    Rule("probe.bug", "error", "the probe raised an unexpected exception (a blockwatch bug)",
         _our_bug),
)


Stage = Callable[[Subject], Decision | None]


def _probe_rules() -> dict[str, Any]:
    """Each registered probe's rules module, ``blockwatch.analysis.<probe name>``, where one
    exists (a probe may have none: the generic and failure rules judge it)."""
    found: dict[str, Any] = {}
    for spec in registry.SPECS:
        name = f"blockwatch.analysis.{spec.name}"
        if importlib.util.find_spec(name) is not None:
            found[spec.name] = importlib.import_module(name)
    return found


PROBE_RULES = _probe_rules()
# probe -> its content stages, in order, before the generic ones
PROBE_STAGES: dict[str, tuple[tuple[str, Stage], ...]] = {
    probe: tuple(module.STAGES) for probe, module in PROBE_RULES.items()}


def _generic_stage(s: Subject) -> Decision | None:
    return first(GENERIC_RULES, s.m)


def _vpn_stage(s: Subject) -> Decision | None:
    if s.m.failed_operation != "vpn_handshake":
        return None
    return first(vpn.VPN_RULES, vpn.case(s.m, s.ev))


def _failure_stage(s: Subject) -> Decision | None:
    c = failure.case(s.m, s.ev)
    return first(failure.FAILURE_RULES, c) if c is not None else None


# A measurement's path, in order: its probe's stages (PROBE_STAGES), then these; the first
# stage that decides gives its verdict.
COMMON_STAGES: tuple[tuple[str, Stage], ...] = (
    ("generic", _generic_stage),
    ("vpn handshake", _vpn_stage),
    ("failure vs control", _failure_stage),
)
MEASUREMENT_STAGES: tuple[tuple[str, Stage], ...] = (
    *(stage for stages in PROBE_STAGES.values() for stage in stages), *COMMON_STAGES)

# every list of rules, in the order a measurement meets them, then the service's
RULE_LISTS: dict[str, tuple[Rule[Any], ...]] = {
    "reserved": (Rule("baseline.network_unavailable", "network_unavailable",
                      "reserved (never given): the local network was down before the sweep; "
                      "the services of such a run get service.network_unavailable"),),
    **{k: v for module in PROBE_RULES.values() for k, v in module.RULE_LISTS.items()},
    "generic": GENERIC_RULES,
    "vpn handshake": vpn.VPN_RULES,
    "failure vs control": failure.FAILURE_RULES,
    "service": (*service.SERVICE_RULES, service.NETWORK_UNAVAILABLE),
}
RULES: dict[str, Rule[Any]] = by_id(*RULE_LISTS.values())


def judge_measurement(m: Measurement, service_: Service | None,
                      controls: list[ControlAnswer], ev: Evidence,
                      fps: FingerprintSet) -> Verdict:
    subject = Subject(m, service_, controls, ev, fps)
    for _, stage in (*PROBE_STAGES.get(m.probe, ()), *COMMON_STAGES):
        decision = stage(subject)
        if decision is not None:
            return decide(decision, m, m.service)
    # a failure at a step blockwatch does not know: no control can speak to it
    return verdict(failure.NO_CONTROL, Finding(f"{m.failure} at {m.failed_operation}",
                                               layer=LAYER.get(m.failed_operation or "")),
                   m, m.service)


_BUILTIN: list[FingerprintSet] = []


def builtin_fingerprints() -> FingerprintSet:
    """The shipped fingerprints, loaded once."""
    if not _BUILTIN:
        from blockwatch.analysis.fingerprints import load

        _BUILTIN.append(load())
    return _BUILTIN[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class AnalysisInputs:
    """Everything a run's verdicts are a function of, and nothing else.

    ``measurements``: the run's own (an OONI import's control measurements among them, as
    measurements of a control vantage); ``controls``: other runs' measurements of
    ``run.control_vantages`` (from ``run.controls_since`` to ``run.controls_until``), evidence
    for the services this run measured and for nothing else; ``run``: the recorded inputs
    (control resolvers and vantages, local networks); ``fingerprints`` None: the built-in set;
    ``network_ok`` False: the local network was down, nothing is judged.
    """

    measurements: Sequence[Measurement]
    services: Mapping[str, Service]
    run: RunInputs = field(default_factory=RunInputs)
    controls: Sequence[Measurement] = ()
    fingerprints: FingerprintSet | None = None
    network_ok: bool = True


def judge_run(inputs: AnalysisInputs) -> list[Verdict]:
    """Verdicts for every tested measurement of a run, then one per service: the one
    judgement of a run, used alike by a sweep (service by service, through ``Judge``), by
    ``blockwatch reanalyze`` and by the OONI import.

    Measurements of control resolvers (DNS) and of control vantages (any probe) are controls:
    evidence for the others, judged themselves never. Local networks hold real servers even
    where their addresses are bogons. Each service is judged on its own measurements and their
    controls, plus the run's ``RunFacts`` (``Judge``), so a sweep that judges each service as
    soon as it is measured gets the same verdicts.
    """
    judge = Judge(inputs.services, inputs.run, fingerprints=inputs.fingerprints)
    if not inputs.network_ok:
        names = sorted({m.service for m in inputs.measurements} | set(inputs.services))
        return [verdict(service.NETWORK_UNAVAILABLE,
                        Finding("local network down at baseline"), None, n) for n in names]
    by_service: dict[str, list[Measurement]] = defaultdict(list)
    for m in inputs.measurements:
        judge.observe(m)
        by_service[m.service].append(m)
    for m in inputs.controls:  # other runs' controls: only for the services measured here
        if m.service in by_service:
            by_service[m.service].append(m)
    judged = {name: judge.service(name, ms) for name, ms in by_service.items()}
    out = [v for m in inputs.measurements for v in judged[m.service]
           if v.measurement_id == m.id]
    out += [v for name in sorted(judged) for v in judged[name] if v.measurement_id is None]
    return out


class Judge:
    """Verdicts service by service, as a sweep measures them.

    ``observe`` every measurement of the run as it comes (the run's facts grow); ``ready``
    says whether a service's verdicts can no longer change with the rest of the run (a DNS
    timeout counts only at a resolver seen answering another name: until then, wait);
    ``service`` judges one service from its measurements and their controls.
    """

    def __init__(self, services: Mapping[str, Service], run: RunInputs, *,
                 fingerprints: FingerprintSet | None = None) -> None:
        self.services = services
        self.resolvers, self.vantages = set(run.control_resolvers), set(run.control_vantages)
        self.fps = fingerprints if fingerprints is not None else builtin_fingerprints()
        self.local = tuple(ipaddress.ip_network(n, strict=False) for n in run.local_networks)
        self.facts = RunFacts()

    def is_control(self, m: Measurement) -> bool:
        return is_control(m, self.resolvers, self.vantages)

    def decided(self, m: Measurement) -> Measurement:
        """``m`` as the rules read it: with the one bogon decision applied (``bogons``)."""
        return bogons.decided(m, self.local)

    def observe(self, m: Measurement) -> None:
        if not self.is_control(m):
            self.facts.add(m)  # which resolvers answered: the bogon decision changes nothing

    def ready(self, measurements: Iterable[Measurement]) -> bool:
        for m in measurements:
            if (m.failure == F.GENERIC_TIMEOUT and m.failed_operation == "resolve"
                    and not self.is_control(m)):
                why = unconfirmed_silence(m, self.facts)
                if why is not None and "answered no other name" in why:
                    return False
        return True

    def service(self, name: str, measurements: Sequence[Measurement]) -> list[Verdict]:
        """The measurement verdicts of one service, then its service verdict."""
        measurements = [self.decided(m) for m in measurements]
        ev = gather(measurements, self.resolvers, self.vantages)
        ev.facts, ev.local = self.facts, self.local
        tested = [m for m in measurements if not self.is_control(m)]
        out = [judge_measurement(m, self.services.get(m.service),
                                 ev.dns.get(m.target.host.lower(), []), ev, self.fps)
               for m in tested]
        if not tested:
            return out
        probes = {m.id: m.probe for m in tested}
        keys = {m.id: m.target.key for m in tested}
        # some evidence only adds blocking: raw packets (their absence, or no CAP_NET_RAW, takes
        # nothing away; the registry says which probes, Spec.adds_only), and a query to a
        # silent address, whose quiet says nothing about whether the service's names resolve
        adds_only = {m.id for m in tested if m.probe in registry.ADDS_ONLY or dns.silent(m)}
        counted = [v for v in out if v.verdict in BLOCKED or v.measurement_id not in adds_only]
        return [*out, service.judge_service(name, counted, probes, self.services.get(name),
                                            keys)]
