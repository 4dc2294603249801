"""DNS rules: a measurement of the ``dns`` probe, judged on its A query (the confirmation, if
the query was asked again) against the control resolvers' answers for the same name.

``DNS_RULES`` in order, the first that applies decides; none applies: the generic rules
(``ok.no_failure``, the failure rules of analysis/failure.py) judge it. A query to a ``[dns]
silent`` address is judged by ``SILENT_RULES`` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from blockwatch.analysis.evidence import (
    ControlAnswer,
    Evidence,
    Subject,
    consistent,
    dns_a,
    outside,
)
from blockwatch.analysis.fingerprints import FingerprintSet
from blockwatch.analysis.rules import Decision, Finding, Rule, first
from blockwatch.probes import failures as F
from blockwatch.probes.model import DNSObservation, Measurement, Service


@dataclass(frozen=True, slots=True)
class DNSCase:
    m: Measurement
    obs: DNSObservation  # the A query's outcome
    service: Service | None
    controls: list[ControlAnswer]  # the control resolvers' answers for the name
    ev: Evidence
    fps: FingerprintSet | None
    good: list[ControlAnswer] = field(default_factory=list)  # controls with addresses
    control_addresses: frozenset[str] = frozenset()


def case(m: Measurement, service: Service | None, controls: list[ControlAnswer],
         ev: Evidence, fps: FingerprintSet | None) -> DNSCase | None:
    obs = dns_a(m)
    if obs is None:
        return None
    good = [c for c in controls if c.failure is None and c.addresses]
    return DNSCase(m, obs, service, controls, ev, fps, good,
                   frozenset().union(*(c.addresses for c in good)))


def silent(m: Measurement) -> bool:
    return ("silent", "yes") in m.target.options


# --- conditions -------------------------------------------------------------------------------


def _multiple_responses(c: DNSCase) -> Finding | None:
    valid = [r for r in c.obs.responses if r.malformed is None]
    if len(valid) < 2 or len({(r.rcode, frozenset(a.value for a in r.answers))
                              for r in valid}) < 2:
        return None
    answers = sorted({a.value for r in c.obs.responses for a in r.answers})
    ttls = [r.ip_ttl for r in c.obs.responses]
    # responses from one resolver cross one path: different IP TTLs mean different senders
    shown = (f"; IP TTL {'/'.join(str(t) for t in ttls)}"
             if len({t for t in ttls if t is not None}) > 1 else "")
    return Finding(f"{len(c.obs.responses)} responses: {', '.join(answers[:4])}{shown}",
                   {"responses": len(c.obs.responses), "ip_ttl": ttls,
                    "first": sorted(a.value for a in c.obs.responses[0].answers)})


def _nxdomain_vs_control(c: DNSCase) -> Finding | None:
    if c.obs.failure == F.DNS_NXDOMAIN and c.good:
        return Finding("NXDOMAIN; control resolver returned addresses")
    return None


def _bogon_vs_control(c: DNSCase) -> Finding | None:
    if c.obs.failure == F.DNS_BOGON and c.good:
        return Finding(f"bogon {', '.join(c.obs.addresses[:3])}; control disagrees")
    return None


def _answer_vs_control_nxdomain(c: DNSCase) -> Finding | None:
    if (c.obs.failure is None and c.obs.addresses and c.controls
            and all(x.failure == F.DNS_NXDOMAIN for x in c.controls)):
        return Finding(f"{c.obs.addresses[0]} for a name the control says does not exist")
    return None


def _catalogued(service: Service, host: str) -> bool:
    """The catalogue's prefixes are facts about the names it lists, not about every subdomain
    (OONI's 2022 WhatsApp data: e*.whatsapp.net answered from AWS, outside AS32934)."""
    host = host.lower().rstrip(".")
    names = {*service.domains, *(urlsplit(u).hostname or "" for u in service.urls),
             *(e.host for e in service.endpoints)}
    return host in {n.lower() for n in names}


def _outside_expected_prefixes(c: DNSCase) -> Finding | None:
    s = c.service
    if (c.obs.failure is None and s and s.exclusive_prefixes and c.obs.addresses
            and _catalogued(s, c.m.target.host)
            and outside(c.obs.addresses, s.prefixes)
            and not set(c.obs.addresses) & c.control_addresses):
        return Finding(f"{c.obs.addresses[0]} outside {s.title}'s networks")
    return None


def _fingerprint(c: DNSCase) -> Finding | None:
    if c.fps is None:
        return None
    for o in c.m.observations:
        if isinstance(o, DNSObservation):
            for r in o.responses:
                for a in r.answers:
                    found = c.fps.match_dns(a.value)
                    if found is not None and found.strong:
                        if a.value in c.control_addresses:
                            return None  # a control returned it: the fingerprint is stale
                        return Finding(f"{a.value} is a known forged answer ({found.name})",
                                       {"address": a.value, "fingerprint": found.name})
    return None


def _inconsistent(c: DNSCase) -> tuple[str, dict[str, object]] | None:
    """(how they differ, details) when the answers share nothing with the control's."""
    if c.obs.failure is not None or not c.obs.addresses or not c.good:
        return None
    host = c.m.target.host.lower()
    prefixes = c.service.prefixes if c.service else ()
    control = c.control_addresses
    if consistent(c.obs.addresses, control, prefixes=prefixes,
                  verified=c.ev.verified.get(host, ())):
        return None
    return (f"{', '.join(c.obs.addresses[:2])} vs control {', '.join(sorted(control)[:2])}",
            {"answers": sorted(c.obs.addresses)[:8], "control": sorted(control)[:8]})


def _inconsistent_in_known_networks(c: DNSCase) -> Finding | None:
    found = _inconsistent(c)
    prefixes = c.service.prefixes if c.service else ()
    if found is None or not prefixes or outside(sorted(c.control_addresses), prefixes):
        return None
    title = c.service.title if c.service else c.m.service
    return Finding(f"{found[0]} (in {title}'s networks)", dict(found[1]))


def _inconsistent_corroborated(c: DNSCase) -> Finding | None:
    found = _inconsistent(c)
    if found is None:
        return None
    host, tested = c.m.target.host.lower(), set(c.obs.addresses)
    if tested & c.ev.bad_cert.get(host, set()):
        return Finding(f"{found[0]}; invalid certificate for {host} there", dict(found[1]))
    # the control resolver's addresses connect: from here (a probe that tried them), or from
    # a control vantage (issue #13: no probe of ours tries them, the control vantage does)
    elsewhere = {a for (a, _port), failures in c.ev.tcp.items() if None in failures}
    if tested <= c.ev.tcp_failed and c.control_addresses & (c.ev.tcp_ok | elsewhere):
        return Finding(f"{found[0]}; no connection there, the control's connect",
                       dict(found[1]))
    return None


def _inconsistent_cdn(c: DNSCase) -> Finding | None:
    found = _inconsistent(c)
    if found is None:
        return None
    return Finding(f"{found[0]}; control outside known networks (CDN?)", dict(found[1]))


def _same_as_control(c: DNSCase) -> Finding | None:
    if (c.obs.failure is not None and c.controls
            and all(x.failure == c.obs.failure for x in c.controls)):
        return Finding(f"{c.obs.failure} from control resolvers too")
    return None


DNS_RULES: tuple[Rule[DNSCase], ...] = (
    Rule("dns.injection.multiple_responses", "dns_blocked",
         "one query got several responses with different contents: an on-path injector",
         _multiple_responses, "dns"),
    Rule("dns.nxdomain_vs_control", "dns_blocked",
         "the tested resolver says NXDOMAIN while a control resolver returns addresses",
         _nxdomain_vs_control, "dns"),
    Rule("dns.bogon_vs_control", "dns_blocked",
         "the tested resolver returns only bogons while a control resolver returns addresses",
         _bogon_vs_control, "dns"),
    Rule("dns.answer_vs_control_nxdomain", "dns_blocked",
         "the tested resolver returns addresses for a name the controls say does not exist",
         _answer_vs_control_nxdomain, "dns"),
    Rule("dns.outside_expected_prefixes", "dns_blocked",
         "every answer lies outside the prefixes the service uses exclusively",
         _outside_expected_prefixes, "dns"),
    Rule("dns.fingerprint", "dns_blocked",
         "an answer is a known forged address (a DNS fingerprint): a strong signature",
         _fingerprint, "dns"),
    Rule("dns.inconsistent_vs_control", "dns_blocked",
         "the answers share nothing with the control's, whose answers lie in the service's "
         "known networks", _inconsistent_in_known_networks, "dns"),
    Rule("dns.inconsistent.corroborated", "dns_blocked",
         "the answers share nothing with the control's, and the returned addresses do not "
         "serve the name (invalid certificate, or no connection there while the control "
         "resolver's addresses connect, from here or from a control vantage)",
         _inconsistent_corroborated, "dns"),
    Rule("dns.inconsistent.cdn", "inconclusive",
         "the answers differ from the control's, but the control's lie outside any known "
         "network of the service (a CDN may answer differently by region)",
         _inconsistent_cdn, "dns"),
    Rule("dns.same_as_control", "down",
         "the control resolver fails the same way: the name is broken everywhere",
         _same_as_control, "dns"),
)


# --- a query to a silent address --------------------------------------------------------------


def _silent_answered(m: Measurement) -> Finding | None:
    obs = dns_a(m)
    answered = [r for r in (obs.responses if obs else ()) if r.malformed is None]
    if not answered:
        return None
    first = answered[0]
    values = sorted({a.value for r in answered for a in r.answers}) or [first.rcode]
    ttl = f", IP TTL {first.ip_ttl}" if first.ip_ttl is not None else ""
    return Finding(f"{len(answered)} response(s) from {first.source}, where no DNS server "
                   f"runs: {', '.join(values[:4])}{ttl}",
                   {"responses": len(answered), "answers": values[:8],
                    "ip_ttl": [r.ip_ttl for r in answered]})


def _silent_quiet(m: Measurement) -> Finding:
    obs = dns_a(m)
    return Finding(f"no answer from {m.target.resolver} ({obs.failure if obs else m.failure})")


SILENT_RULES: tuple[Rule[Measurement], ...] = (
    Rule("dns.injection.silent_address", "dns_blocked",
         "a query sent to an address where no DNS server runs ([dns] silent) got an answer: "
         "something on the path forged it", _silent_answered, "dns"),
    Rule("dns.silent.quiet", "ok",
         "the silent address did not answer (as it should): no injector on this path for "
         "this name", _silent_quiet, "dns"),
)


def _stage(s: Subject) -> Decision | None:
    if silent(s.m):
        return first(SILENT_RULES, s.m)
    c = case(s.m, s.service, s.controls, s.ev, s.fps)
    return first(DNS_RULES, c) if c is not None else None


# what blockwatch.analysis.verdicts takes from a probe's rules module: its stages (in order, for
# measurements of the probe of this module's name) and its rule lists
STAGES: tuple[tuple[str, Callable[[Subject], Decision | None]], ...] = (("dns answers", _stage),)
RULE_LISTS: dict[str, tuple[Rule[Any], ...]] = {"dns silent address": SILENT_RULES,
                                                "dns answers": DNS_RULES}
