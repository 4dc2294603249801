"""The evidence a measurement's verdict may lean on, gathered from one service's measurements
and their controls, plus the facts of the whole run (``RunFacts``).

Controls are measurements of control resolvers (DNS) and of control vantages (any probe): they
are evidence, never judged themselves (``is_control``). Address helpers (bogons, the /24 or /48
neighbourhood, OONI-style consistency) live here because several layers use them.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from blockwatch.analysis.bogons import bogon as bogon  # the one list of bogons
from blockwatch.analysis.fingerprints import FingerprintSet
from blockwatch.analysis.rules import CERT_FAILURES
from blockwatch.probes.model import (
    DNSObservation,
    HTTPObservation,
    Measurement,
    Service,
    TCPObservation,
    TLSObservation,
    VPNObservation,
)


@dataclass(frozen=True, slots=True)
class ControlAnswer:
    addresses: frozenset[str]
    failure: str | None


@dataclass(slots=True)
class RunFacts:
    """What the whole run knows beside each service: which tested resolvers answered which
    names (at most two each: enough to know that one answers *another* name)."""

    answering: dict[str, set[str]] = field(default_factory=dict)

    def add(self, m: Measurement) -> None:
        for o in m.observations:
            if isinstance(o, DNSObservation) and any(r.malformed is None for r in o.responses):
                names = self.answering.setdefault(o.resolver, set())
                if len(names) < 2:
                    names.add(_name(o.qname))

    def answers_other(self, resolver: str, name: str) -> bool:
        return bool(self.answering.get(resolver, set()) - {_name(name)})


def _name(qname: str) -> str:
    return qname.lower().rstrip(".")


def unconfirmed_silence(m: Measurement, facts: RunFacts) -> str | None:
    """Why this measurement's DNS timeout is not evidence of blocking, or None if it is: the
    name went unanswered twice (the query and its confirmation) at a resolver that answered
    other names in this run. Random loss is not repeated; a dead resolver answers nothing."""
    found = [o for o in m.observations if isinstance(o, DNSObservation)]
    queries = [o for o in found if o.qtype == "A"] or found
    if not queries:
        return "no DNS facts recorded"
    final = queries[-1]
    if final.responses or final.attempt < 2:
        return "not repeated: the name went unanswered once (a lost packet is no evidence)"
    if not facts.answers_other(final.resolver, final.qname):
        return (f"{final.resolver} answered no other name in this run (a broken resolver or "
                "network)")
    return None


@dataclass(slots=True)
class Evidence:
    """Facts of a whole run that a measurement's verdict may lean on (controls, certificates)."""

    dns: dict[str, list[ControlAnswer]] = field(default_factory=lambda: defaultdict(list))
    # control vantage observations, keyed by what they are about
    tcp: dict[tuple[str, int], list[str | None]] = field(default_factory=lambda: defaultdict(list))
    tls: dict[tuple[str, int], list[TLSObservation]] = field(
        default_factory=lambda: defaultdict(list))
    http: dict[str, list[HTTPObservation]] = field(default_factory=lambda: defaultdict(list))
    vpn: dict[tuple[str, str, int], list[str]] = field(default_factory=lambda: defaultdict(list))
    # every control vantage measurement by (probe, target key): what a probe's own rules
    # compare with when no index above fits (a new probe's)
    by_target: dict[tuple[str, str], list[Measurement]] = field(
        default_factory=lambda: defaultdict(list))
    # the tested vantage's own TLS and TCP facts, by server name / address
    verified: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    bad_cert: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    # the addresses this vantage's own lookups gave for each name (any tested measurement's
    # DNS observations)
    resolved: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    tcp_ok: set[str] = field(default_factory=set)
    tcp_failed: set[str] = field(default_factory=set)
    facts: RunFacts = field(default_factory=lambda: RunFacts())
    # prefixes the user's scope names explicitly: bogon addresses there are real servers
    local: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # the control-SNI handshakes of this vantage, by address and port: (control name, failure)
    control_sni: dict[tuple[str, int], list[tuple[str, str | None]]] = field(
        default_factory=lambda: defaultdict(list))
    # names (and the addresses that answered for them) whose HTTPS response (this vantage's)
    # advertised HTTP/3 (Alt-Svc h3): the server speaks QUIC, so silence on UDP there is not a
    # server without it (analysis/quic.py)
    alt_svc_h3: set[str] = field(default_factory=set)


def dns_a(m: Measurement) -> DNSObservation | None:
    """The A query's outcome: its confirmation if it was asked again, else the query."""
    found = None
    for o in m.observations:
        if isinstance(o, DNSObservation) and o.qtype == "A":
            found = o
    return found


def _add_control(ev: Evidence, m: Measurement) -> None:
    ev.by_target[(m.probe, m.target.key)].append(m)
    final_a = dns_a(m)  # an unanswered query's confirmation speaks for both
    for o in m.observations:
        if isinstance(o, DNSObservation):
            if o is final_a:
                ev.dns[m.target.host.lower()].append(
                    ControlAnswer(frozenset(o.addresses), o.failure))
        elif isinstance(o, TCPObservation):
            ev.tcp[(o.address, o.port)].append(o.failure)
        elif isinstance(o, TLSObservation) and not o.control:
            ev.tls[(o.address, o.port)].append(o)
        elif isinstance(o, HTTPObservation):
            ev.http[m.target.url or o.url].append(o)
        elif isinstance(o, VPNObservation):
            ev.vpn[(o.protocol, m.target.host.lower(), o.port)].append(o.result)


def _add_tested(ev: Evidence, m: Measurement) -> None:
    for o in m.observations:
        if isinstance(o, DNSObservation):
            ev.resolved[o.qname.lower().rstrip(".")].update(o.addresses)
        elif isinstance(o, TLSObservation) and o.control:
            ev.control_sni[(o.address, o.port)].append((o.sni or "", o.failure))
            # and by the name that failed there, for other probes of that name (an HTTPS
            # fetch does not record the address its handshake failed at)
            name = (m.target.sni or m.target.host).lower()
            ev.control_sni[(name, o.port)].append((o.sni or "", o.failure))
        elif isinstance(o, TLSObservation) and o.sni:
            if o.verified:
                ev.verified[o.sni.lower()].add(o.address)
            elif o.failure in CERT_FAILURES:
                ev.bad_cert[o.sni.lower()].add(o.address)
        elif isinstance(o, TCPObservation):
            (ev.tcp_ok if o.failure is None else ev.tcp_failed).add(o.address)
        elif isinstance(o, HTTPObservation) and any(
                k.lower() == "alt-svc" and "h3" in v for k, v in o.headers):
            ev.alt_svc_h3.add((urlsplit(o.url).hostname or "").lower())
            if o.address:
                ev.alt_svc_h3.add(o.address)


def is_control(m: Measurement, resolvers: set[str], vantages: set[str]) -> bool:
    """Control measurements are evidence, never subjects of a verdict."""
    if m.vantage in vantages:
        return True
    return m.probe == "dns" and (m.target.resolver or "system") in resolvers


def gather(measurements: Iterable[Measurement], resolvers: set[str],
           vantages: set[str]) -> Evidence:
    """The evidence of these measurements (one service's, with its controls)."""
    ev = Evidence()
    for m in measurements:
        if is_control(m, resolvers, vantages):
            _add_control(ev, m)
        else:
            _add_tested(ev, m)
    return ev


# --- addresses ------------------------------------------------------------------------------


def in_prefixes(address: str, prefixes: Sequence[str]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip.version == n.version and ip in n
               for n in (ipaddress.ip_network(p, strict=False) for p in prefixes))


def outside(addresses: Sequence[str], prefixes: Sequence[str]) -> bool:
    return bool(addresses) and not any(in_prefixes(a, prefixes) for a in addresses)




def net(address: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    ip = ipaddress.ip_address(address)
    return ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 48}", strict=False)


def consistent(tested: Iterable[str], control: Iterable[str], *,
               prefixes: Sequence[str] = (), verified: Iterable[str] = ()) -> bool:
    """OONI / Censored Planet style: a shared IP, a shared /24 (IPv4) or /48 (IPv6), an answer
    inside the service's known networks, or a certificate valid for the name on an answer."""
    tested, control = set(tested), set(control)
    if tested & control or tested & set(verified):
        return True
    if {net(a) for a in tested} & {net(a) for a in control}:
        return True
    return any(in_prefixes(a, prefixes) for a in tested)


@dataclass(frozen=True, slots=True)
class Subject:
    """One tested measurement with what its probe's rules may read (a probe's rules module,
    ``blockwatch.analysis.<probe>``, gets it in its ``STAGES``)."""

    m: Measurement
    service: Service | None
    controls: list[ControlAnswer]  # the control resolvers' answers for its host
    ev: Evidence
    fps: FingerprintSet
