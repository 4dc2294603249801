"""Verdicts: pure functions from observations to opinions, with stable rule ids.

Blocking is claimed only on evidence that stands without guessing:

* a **strong signature**, which needs no control: one query answered several times with
  different contents (an on-path injector), a DNS answer that is a known forged address, an HTTP
  body or header matching a national/ISP/product block-page fingerprint, every DNS answer
  outside the networks a service uses exclusively;
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

Rules are data (``RULES``) with stable ids; ``ANALYZER_VERSION`` changes whenever a rule's
logic does, so stored verdicts can be recomputed (``blockwatch reanalyze``) and compared.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from blockwatch.analysis.fingerprints import FingerprintSet, HTTPMatch
from blockwatch.probes import failures as F
from blockwatch.probes.model import (
    DNSObservation,
    HTTPObservation,
    Measurement,
    RawObservation,
    RunInputs,
    Service,
    TCPObservation,
    TLSObservation,
    Verdict,
    VPNObservation,
)

ANALYZER_VERSION = "5"  # 5: DNS timeouts count only when confirmed; services judged apart


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
    Rule("dns.injection.silent_address", "dns_blocked",
         "a query sent to an address where no DNS server runs ([dns] silent) got an answer: "
         "something on the path forged it"),
    Rule("dns.silent.quiet", "ok",
         "the silent address did not answer (as it should): no injector on this path for "
         "this name"),
    Rule("dns.fingerprint", "dns_blocked",
         "an answer is a known forged address (a DNS fingerprint): a strong signature"),
    Rule("dns.nxdomain_vs_control", "dns_blocked",
         "the tested resolver says NXDOMAIN while a control resolver returns addresses"),
    Rule("dns.bogon_vs_control", "dns_blocked",
         "the tested resolver returns only bogons while a control resolver returns addresses"),
    Rule("dns.answer_vs_control_nxdomain", "dns_blocked",
         "the tested resolver returns addresses for a name the controls say does not exist"),
    Rule("dns.outside_expected_prefixes", "dns_blocked",
         "every answer lies outside the prefixes the service uses exclusively"),
    Rule("dns.inconsistent_vs_control", "dns_blocked",
         "the answers share nothing with the control's, whose answers lie in the service's "
         "known networks"),
    Rule("dns.inconsistent.corroborated", "dns_blocked",
         "the answers share nothing with the control's, and the returned addresses do not "
         "serve the name (invalid certificate, or no connection where the control's do)"),
    Rule("dns.inconsistent.cdn", "inconclusive",
         "the answers differ from the control's, but the control's lie outside any known "
         "network of the service (a CDN may answer differently by region)"),
    Rule("dns.failure_vs_control", "dns_blocked",
         "resolving failed while the control resolved the name or fetched the URL"),
    Rule("dns.timeout.unconfirmed", "inconclusive",
         "resolving timed out, but the silence was not repeated for the name, or the resolver "
         "answered no other name in this run: packet loss or a broken resolver, not evidence "
         "of blocking"),
    Rule("dns.same_as_control", "down",
         "the control resolver fails the same way: the name is broken everywhere"),
    Rule("vpn.failure_vs_control", "vpn_blocked",
         "the VPN handshake got no answer, a reset or an ICMP error while the control's "
         "handshake with the same endpoint succeeded"),
    Rule("vpn.unverifiable", "inconclusive",
         "the VPN protocol cannot be tested without key material the config does not give"),
    Rule("tcp.failure_vs_control", "tcp_blocked",
         "the connection failed while the control connected to the same address or fetched "
         "the URL"),
    Rule("tls.failure_vs_control", "tls_blocked",
         "the TLS handshake failed while the control completed it or fetched the URL"),
    Rule("tls.sni_vs_control_sni", "tls_blocked",
         "the handshake naming the service failed (reset, EOF, timeout) while, right after, the "
         "same address completed a handshake for a harmless control name: the name is filtered "
         "(SNI blocking), the address and the server work"),
    Rule("tls.invalid_cert_vs_control", "tls_blocked",
         "the certificate is invalid for the name while the control's handshake for the same "
         "name is valid: interception or a block page"),
    Rule("http.failure_vs_control", "http_blocked",
         "the HTTP exchange failed while the control fetched the URL"),
    Rule("http.blockpage_fingerprint", "http_blocked",
         "the response matches a national/ISP/product block-page fingerprint"),
    Rule("http.blockpage_weak_vs_control", "http_blocked",
         "the response matches a vague block-page fingerprint and differs from the control's"),
    Rule("http.blockpage_weak", "inconclusive",
         "the response matches a vague block-page fingerprint, but no control confirms it"),
    Rule("http.fingerprint.false_positive", "ok",
         "the response matches a known false-positive fingerprint (a CDN captcha or error "
         "page): the site's own answer, not a censor's"),
    Rule("http.diff_vs_control", "inconclusive",
         "the response differs from the control's (status, or body length, headers and title) "
         "without any block-page fingerprint"),
    Rule("failure.same_as_control", "down",
         "the control fails at the same step: an outage, not blocking"),
    Rule("failure.no_control", "inconclusive",
         "a failure without a control cannot tell blocking from an outage"),
    Rule("raw.forged_rst.tcp", "tcp_blocked",
         "a RST whose IP TTL, DF bit or IP-ID disagrees with the server's SYN-ACK in the same "
         "flow: sent by something on the path, not the server (trace probe)"),
    Rule("raw.forged_rst.tls", "tls_blocked",
         "after the ClientHello, a RST whose IP TTL, DF bit or IP-ID disagrees with the "
         "server's SYN-ACK: injected on the path (trace probe)"),
    Rule("raw.forged_rst.http", "http_blocked",
         "after the HTTP request, a RST whose IP TTL, DF bit or IP-ID disagrees with the "
         "server's SYN-ACK: injected on the path (trace probe)"),
    Rule("raw.before_server.tcp", "tcp_blocked",
         "TTL-limited SYNs: drops or resets begin at a TTL too small to reach the server, which "
         "answers at a larger one (trace probe)"),
    Rule("raw.before_server.tls", "tls_blocked",
         "TTL-limited ClientHellos: resets or drops begin at a TTL that does not reach the "
         "server, which answers at a larger one (trace probe)"),
    Rule("raw.before_server.http", "http_blocked",
         "TTL-limited HTTP requests: resets or drops begin at a TTL that does not reach the "
         "server, which answers at a larger one (trace probe)"),
    Rule("raw.interference", "inconclusive",
         "resets or silence, located (the hop where they begin) but not shown to come from "
         "the path rather than the server (trace probe)"),
    Rule("raw.clean", "ok", "the full-TTL attempt got the server's answer, no RST (trace probe)"),
    Rule("raw.unavailable", "inconclusive",
         "no raw sockets (CAP_NET_RAW): no raw-packet evidence was collected (trace probe)"),
    Rule("scope.refused", "error", "the scope allow-list refused the address; nothing was sent"),
    Rule("probe.bug", "error", "the probe raised an unexpected exception (a blockwatch bug)"),
    Rule("service.ok", "ok", "every measurement of the service is ok"),
    Rule("service.blocked", "blocked", "blocking evidence and no working measurement"),
    Rule("service.partial", "partial", "blocking evidence on some measurements, others work"),
    Rule("service.app_chat_blocked", "blocked",
         "the catalogue's app rule: every chat endpoint is blocked (against a control), so the "
         "app cannot work even if its web pages load"),
    Rule("service.down", "down",
         "failures that the controls share, and nothing works at or above their layer (a dead "
         "server's name still resolves)"),
    Rule("service.inconclusive", "inconclusive",
         "failures without evidence of blocking, or no measurements"),
    Rule("service.network_unavailable", "network_unavailable", "the local network was down"),
)}

BLOCKED = {"dns_blocked", "tcp_blocked", "tls_blocked", "http_blocked", "vpn_blocked"}

# Failures a censor produces. Others (too many redirects, a broken Location, unknown_failure)
# are the server's or our own doing: a control that succeeds does not make them blocking.
INTERFERENCE = frozenset({
    F.GENERIC_TIMEOUT, F.CONNECTION_REFUSED, F.CONNECTION_RESET, F.CONNECTION_ABORTED,
    F.HOST_UNREACHABLE, F.NETWORK_UNREACHABLE, F.EOF_ERROR, F.SSL_INVALID_HOSTNAME,
    F.SSL_UNKNOWN_AUTHORITY, F.SSL_INVALID_CERTIFICATE, F.SSL_FAILED_HANDSHAKE,
    F.DNS_NXDOMAIN, F.DNS_SERVFAIL, F.DNS_REFUSED, F.DNS_NO_ANSWER, F.DNS_BOGON,
})
CERT_FAILURES = frozenset({F.SSL_INVALID_HOSTNAME, F.SSL_UNKNOWN_AUTHORITY,
                           F.SSL_INVALID_CERTIFICATE})
_LAYER = {"resolve": "dns", "connect": "tcp", "tls_handshake": "tls", "http_round_trip": "http"}
_FAILURE_RULE = {"dns": "dns.failure_vs_control", "tcp": "tcp.failure_vs_control",
                 "tls": "tls.failure_vs_control", "http": "http.failure_vs_control"}


def _verdict(rule_id: str, m: Measurement | None, service: str, *, layer: str | None = None,
             evidence: str = "", details: dict[str, Any] | None = None) -> Verdict:
    return Verdict(
        verdict=RULES[rule_id].verdict, rule_id=rule_id, analyzer_version=ANALYZER_VERSION,
        service=service, measurement_id=m.id if m else None, layer=layer, evidence=evidence,
        details=details or {},
    )


# --- what the run knows beside each measurement ---------------------------------------------


@dataclass(frozen=True, slots=True)
class _ControlAnswer:
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

    dns: dict[str, list[_ControlAnswer]] = field(default_factory=lambda: defaultdict(list))
    # control vantage observations, keyed by what they are about
    tcp: dict[tuple[str, int], list[str | None]] = field(default_factory=lambda: defaultdict(list))
    tls: dict[tuple[str, int], list[TLSObservation]] = field(
        default_factory=lambda: defaultdict(list))
    http: dict[str, list[HTTPObservation]] = field(default_factory=lambda: defaultdict(list))
    vpn: dict[tuple[str, str, int], list[str]] = field(default_factory=lambda: defaultdict(list))
    # the tested vantage's own TLS and TCP facts, by server name / address
    verified: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    bad_cert: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    tcp_ok: set[str] = field(default_factory=set)
    tcp_failed: set[str] = field(default_factory=set)
    facts: RunFacts = field(default_factory=lambda: RunFacts())
    # prefixes the user's scope names explicitly: bogon addresses there are real servers
    local: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # the control-SNI handshakes of this vantage, by address and port: (control name, failure)
    control_sni: dict[tuple[str, int], list[tuple[str, str | None]]] = field(
        default_factory=lambda: defaultdict(list))


def _dns_a(m: Measurement) -> DNSObservation | None:
    """The A query's outcome: its confirmation if it was asked again, else the query."""
    found = None
    for o in m.observations:
        if isinstance(o, DNSObservation) and o.qtype == "A":
            found = o
    return found


def _add_control(ev: Evidence, m: Measurement) -> None:
    final_a = _dns_a(m)  # an unanswered query's confirmation speaks for both
    for o in m.observations:
        if isinstance(o, DNSObservation):
            if o is final_a:
                ev.dns[m.target.host.lower()].append(
                    _ControlAnswer(frozenset(o.addresses), o.failure))
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
        if isinstance(o, TLSObservation) and o.control:
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


# --- DNS --------------------------------------------------------------------------------------


def _injection(obs: DNSObservation) -> bool:
    valid = [r for r in obs.responses if r.malformed is None]
    contents = {(r.rcode, frozenset(a.value for a in r.answers)) for r in valid}
    return len(valid) > 1 and len(contents) > 1


def _in_prefixes(address: str, prefixes: Sequence[str]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip.version == n.version and ip in n
               for n in (ipaddress.ip_network(p, strict=False) for p in prefixes))


def _outside(addresses: Sequence[str], prefixes: Sequence[str]) -> bool:
    return bool(addresses) and not any(_in_prefixes(a, prefixes) for a in addresses)


def _bogon(address: str) -> bool:
    from blockwatch.probes.dns import is_bogon  # probes.dns imports dnspython: only when needed

    try:
        return is_bogon(address)
    except ValueError:
        return False


def _net(address: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    ip = ipaddress.ip_address(address)
    return ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 48}", strict=False)


def consistent(tested: Iterable[str], control: Iterable[str], *,
               prefixes: Sequence[str] = (), verified: Iterable[str] = ()) -> bool:
    """OONI / Censored Planet style: a shared IP, a shared /24 (IPv4) or /48 (IPv6), an answer
    inside the service's known networks, or a certificate valid for the name on an answer."""
    tested, control = set(tested), set(control)
    if tested & control or tested & set(verified):
        return True
    if {_net(a) for a in tested} & {_net(a) for a in control}:
        return True
    return any(_in_prefixes(a, prefixes) for a in tested)


def _fingerprinted(m: Measurement, fps: FingerprintSet) -> tuple[str, str] | None:
    for o in m.observations:
        if isinstance(o, DNSObservation):
            for r in o.responses:
                for a in r.answers:
                    found = fps.match_dns(a.value)
                    if found is not None and found.strong:
                        return a.value, found.name
    return None


def _inconsistent(m: Measurement, obs: DNSObservation, service: Service | None,
                  good: list[_ControlAnswer], ev: Evidence) -> Verdict | None:
    name, host = m.service, m.target.host.lower()
    control = set().union(*(c.addresses for c in good))
    prefixes = service.prefixes if service else ()
    if consistent(obs.addresses, control, prefixes=prefixes, verified=ev.verified.get(host, ())):
        return None
    details = {"answers": sorted(obs.addresses)[:8], "control": sorted(control)[:8]}
    shown = f"{', '.join(obs.addresses[:2])} vs control {', '.join(sorted(control)[:2])}"
    if prefixes and not _outside(sorted(control), prefixes):
        return _verdict("dns.inconsistent_vs_control", m, name, layer="dns", details=details,
                        evidence=f"{shown} (in {service.title if service else name}'s networks)")
    tested = set(obs.addresses)
    if tested & ev.bad_cert.get(host, set()):
        return _verdict("dns.inconsistent.corroborated", m, name, layer="dns", details=details,
                        evidence=f"{shown}; invalid certificate for {host} there")
    if tested <= ev.tcp_failed and control & ev.tcp_ok:
        return _verdict("dns.inconsistent.corroborated", m, name, layer="dns", details=details,
                        evidence=f"{shown}; no connection there, the control's connect")
    return _verdict("dns.inconsistent.cdn", m, name, layer="dns", details=details,
                    evidence=f"{shown}; control outside known networks (CDN?)")


def _catalogued(service: Service, host: str) -> bool:
    """The catalogue's prefixes are facts about the names it lists, not about every subdomain
    (OONI's 2022 WhatsApp data: e*.whatsapp.net answered from AWS, outside AS32934)."""
    host = host.lower().rstrip(".")
    names = {*service.domains, *(urlsplit(u).hostname or "" for u in service.urls),
             *(e.host for e in service.endpoints)}
    return host in {n.lower() for n in names}


def judge_silent(m: Measurement) -> Verdict:
    """A query to a silent address: any well-formed response is an injector's; none is ok."""
    obs = _dns_a(m)
    answered = [r for r in (obs.responses if obs else ()) if r.malformed is None]
    if not answered:
        return _verdict("dns.silent.quiet", m, m.service, layer="dns",
                        evidence=f"no answer from {m.target.resolver} "
                                 f"({obs.failure if obs else m.failure})")
    first = answered[0]
    values = sorted({a.value for r in answered for a in r.answers}) or [first.rcode]
    ttl = f", IP TTL {first.ip_ttl}" if first.ip_ttl is not None else ""
    return _verdict("dns.injection.silent_address", m, m.service, layer="dns",
                    evidence=f"{len(answered)} response(s) from {first.source}, where no DNS "
                             f"server runs: {', '.join(values[:4])}{ttl}",
                    details={"responses": len(answered), "answers": values[:8],
                             "ip_ttl": [r.ip_ttl for r in answered]})


def judge_dns(m: Measurement, service: Service | None, controls: list[_ControlAnswer],
              ev: Evidence | None = None, fps: FingerprintSet | None = None) -> Verdict | None:
    if ("silent", "yes") in m.target.options:
        return judge_silent(m)
    obs = _dns_a(m)
    if obs is None:
        return None
    ev = ev or Evidence()
    name = m.service
    good_control = [c for c in controls if c.failure is None and c.addresses]
    if _injection(obs):
        answers = sorted({a.value for r in obs.responses for a in r.answers})
        ttls = [r.ip_ttl for r in obs.responses]
        # responses from one resolver cross one path: different IP TTLs mean different senders
        shown = (f"; IP TTL {'/'.join(str(t) for t in ttls)}"
                 if len({t for t in ttls if t is not None}) > 1 else "")
        return _verdict("dns.injection.multiple_responses", m, name, layer="dns",
                        evidence=f"{len(obs.responses)} responses: {', '.join(answers[:4])}"
                                 f"{shown}",
                        details={"responses": len(obs.responses), "ip_ttl": ttls,
                                 "first": sorted(a.value for a in obs.responses[0].answers)})
    if obs.failure == F.DNS_NXDOMAIN and good_control:
        return _verdict("dns.nxdomain_vs_control", m, name, layer="dns",
                        evidence="NXDOMAIN; control resolver returned addresses")
    if obs.failure == F.DNS_BOGON and good_control:
        return _verdict("dns.bogon_vs_control", m, name, layer="dns",
                        evidence=f"bogon {', '.join(obs.addresses[:3])}; control disagrees")
    if (obs.failure is None and obs.addresses and controls
            and all(c.failure == F.DNS_NXDOMAIN for c in controls)):
        return _verdict("dns.answer_vs_control_nxdomain", m, name, layer="dns",
                        evidence=f"{obs.addresses[0]} for a name the control says does not exist")
    if (obs.failure is None and service and service.exclusive_prefixes and obs.addresses
            and _catalogued(service, m.target.host)):
        control_addrs = set().union(*(c.addresses for c in good_control))
        if _outside(obs.addresses, service.prefixes) and not (set(obs.addresses) & control_addrs):
            return _verdict("dns.outside_expected_prefixes", m, name, layer="dns",
                            evidence=f"{obs.addresses[0]} outside {service.title}'s networks")
    control_addrs = set().union(*(c.addresses for c in good_control))
    forged = _fingerprinted(m, fps) if fps is not None else None
    if forged is not None and forged[0] not in control_addrs:  # else the fingerprint is stale
        return _verdict("dns.fingerprint", m, name, layer="dns",
                        evidence=f"{forged[0]} is a known forged answer ({forged[1]})",
                        details={"address": forged[0], "fingerprint": forged[1]})
    if obs.failure is None and obs.addresses and good_control:
        return _inconsistent(m, obs, service, good_control, ev)
    if obs.failure is not None and controls and all(c.failure == obs.failure for c in controls):
        return _verdict("dns.same_as_control", m, name, layer="dns",
                        evidence=f"{obs.failure} from control resolvers too")
    return None


# --- HTTP content -----------------------------------------------------------------------------

_COMMON_HEADERS = frozenset({
    "date", "content-type", "server", "cache-control", "vary", "set-cookie", "location",
    "expires", "x-powered-by", "content-encoding", "last-modified", "accept-ranges", "pragma",
    "x-frame-options", "etag", "x-content-type-options", "age", "via", "p3p", "x-xss-protection",
    "content-language", "cf-ray", "strict-transport-security", "link", "x-varnish",
    "content-length", "connection", "transfer-encoding", "alt-svc", "keep-alive",
})


def http_matches_control(tested: HTTPObservation, control: HTTPObservation) -> bool:
    """OONI web_connectivity: the same status and one of body length (proportion > 0.7),
    uncommon header names, or title words of 5+ characters match."""
    if tested.status != control.status:
        return False
    a, b = tested.body_length or 0, control.body_length or 0
    if a and b and min(a, b) / max(a, b) > 0.7:
        return True
    if tested.body_truncated and 0 < b and a <= b:
        return True  # we stopped reading (512 KiB cap) where the control's page goes on
    names = [{k.lower() for k, _ in h.headers} - _COMMON_HEADERS for h in (tested, control)]
    if names[0] and names[0] == names[1]:
        return True
    words = [{w.lower() for w in (h.title or "").split() if len(w) >= 5} for h in (tested, control)]
    return bool(words[0] & words[1])


def _http_obs(m: Measurement) -> HTTPObservation | None:
    return next((o for o in reversed(m.observations) if isinstance(o, HTTPObservation)), None)


def _matches(obs: HTTPObservation, fps: FingerprintSet) -> list[HTTPMatch]:
    # the probe follows redirects: a redirect to a block page shows as a redirect URL
    headers = (*obs.headers, *(("location", url) for url in obs.redirects))
    return fps.match_http(obs.body_sample, headers)


def judge_http(m: Measurement, ev: Evidence, fps: FingerprintSet) -> Verdict | None:
    obs = _http_obs(m)
    if obs is None or obs.status is None:
        return None
    name = m.service
    found = _matches(obs, fps)
    if m.failure is not None:
        # a redirect to a block page that could not be followed (its name does not resolve
        # here, its address is out of scope) is still a block page; nothing else is judged
        found = [f for f in found if f.fingerprint.strong and not f.fingerprint.false_positive]
        if not found:
            return None
    controls = [c for c in ev.http.get(m.target.url or obs.url, []) if c.status is not None
                and c.failure is None]
    differs = bool(controls) and not any(http_matches_control(obs, c) for c in controls)
    if found and found[0].fingerprint.false_positive:
        fp = found[0].fingerprint
        return _verdict("http.fingerprint.false_positive", m, name, layer="http",
                        evidence=f"{fp.name} in {found[0].where}: not a censor's page",
                        details={"fingerprint": fp.name})
    strong = [f for f in found if f.fingerprint.strong]
    if strong:
        fp = strong[0].fingerprint
        return _verdict("http.blockpage_fingerprint", m, name, layer="http",
                        evidence=f"block page {fp.name} ({fp.scope}"
                                 f"{', ' + ','.join(fp.countries) if fp.countries else ''}) "
                                 f"in {strong[0].where}",
                        details={"fingerprint": fp.name, "status": obs.status})
    if found:
        fp = found[0].fingerprint
        rule = "http.blockpage_weak_vs_control" if differs else "http.blockpage_weak"
        return _verdict(rule, m, name, layer="http", details={"fingerprint": fp.name},
                        evidence=f"vague block page {fp.name} in {found[0].where}"
                                 f"{'; control differs' if differs else '; no control agrees'}")
    if differs:
        c = controls[0]
        return _verdict("http.diff_vs_control", m, name, layer="http",
                        evidence=f"status {obs.status} vs control {c.status}, "
                                 f"{obs.body_length} vs {c.body_length} bytes, no fingerprint",
                        details={"status": obs.status, "control_status": c.status})
    return None


# --- failures against a control ---------------------------------------------------------------


def _failed_step(m: Measurement) -> tuple[str, str | None, int | None, str | None]:
    """(layer, address, port, server name) of the step that failed."""
    layer = _LAYER.get(m.failed_operation or "", "")
    host = urlsplit(m.target.url).hostname if m.target.url else None
    for o in reversed(m.observations):
        if (isinstance(o, TLSObservation) and layer == "tls" and o.failure is not None
                and not o.control):
            return layer, o.address, o.port, o.sni
        if isinstance(o, TCPObservation) and layer == "tcp" and o.failure is not None:
            return layer, o.address, o.port, None
    port = m.target.port
    if m.target.url and port is None:
        parts = urlsplit(m.target.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    http = next((o for o in m.observations if isinstance(o, HTTPObservation)), None)
    if http is not None:
        return layer, http.address, port, host
    return layer, None, port, host or m.target.sni or m.target.host


def _control_outcome(m: Measurement, ev: Evidence, layer: str, address: str | None,
                     port: int | None, sni: str | None) -> tuple[bool, bool, str]:
    """(the control succeeded at this step, the control failed at it, what the control was)."""
    ok = failed = False
    what = ""
    # a control through a SOCKS5 proxy connects by name (the proxy resolves it): its facts are
    # keyed by the host name instead of an address
    host = (urlsplit(m.target.url).hostname if m.target.url else m.target.host) or ""
    keys = [(a, port) for a in dict.fromkeys((address, host.lower()))
            if a and port is not None]
    if layer == "tcp":
        for failure in (f for k in keys for f in ev.tcp.get(k, [])):
            ok, failed, what = ok or failure is None, failed or failure is not None, "connect"
    if layer == "tls":
        for o in (o for k in keys for o in ev.tls.get(k, [])):
            if sni is None or o.sni is None or o.sni.lower() == sni.lower():
                ok, failed = ok or o.failure is None, failed or o.failure is not None
                what = "handshake"
    if layer == "dns" and m.probe == "dns":  # other probes may fail at a redirect's name
        for c in ev.dns.get(m.target.host.lower(), []):
            ok, failed = ok or bool(c.addresses), failed or c.failure is not None
            what = "resolver"
    for h in ev.http.get(m.target.url or "", []) if m.target.url else []:
        good = h.failure is None and h.status is not None
        ok, failed, what = ok or good, failed or not good, what or "fetch"
    return ok, failed, what


def _valid_at_control_address(ev: Evidence, address: str | None, sni: str | None) -> bool:
    """This vantage got a valid certificate for the name at an address a control resolver
    gave, and ``address`` is not one of the control's (else: the server's own misconfiguration)."""
    if not sni:
        return False
    control = set().union(*(c.addresses for c in ev.dns.get(sni.lower(), [])))
    return address not in control and bool(ev.verified.get(sni.lower(), set()) & control)


# failures of a handshake that a censor filtering on the name causes (not certificate problems)
SNI_FILTER_FAILURES = frozenset({F.CONNECTION_RESET, F.EOF_ERROR, F.GENERIC_TIMEOUT,
                                 F.CONNECTION_ABORTED, F.SSL_FAILED_HANDSHAKE})


def _control_sni(ev: Evidence, failure: str, address: str | None, port: int | None,
                 name: str | None) -> tuple[str, str | None] | None:
    """The control-SNI handshake at the failed address (or, without one, at the addresses of
    the failed name in this run): (control name, its failure or None)."""
    if port is None or failure not in SNI_FILTER_FAILURES:
        return None
    key = address or (name or "").lower()
    found = ev.control_sni.get((key, port), [])
    answered = [c for c in found if c[1] is None]
    return next(iter(answered or found), None)


def _unvouched_bogon(ev: Evidence, address: str | None, port: int | None) -> bool:
    """A bogon address that nothing else in the run reached: a control vantage's connection or
    handshake, or this vantage's control-SNI handshake, succeeding at the same address and port
    make it a real server (a lab's, a LAN's) rather than a DNS answer pointing nowhere; so does
    an address in a prefix the scope names explicitly (the user says servers live there)."""
    if not address or not _bogon(address) or port is None:
        return False
    ip = ipaddress.ip_address(address)
    if any(ip.version == n.version and ip in n for n in ev.local):
        return False
    key = (address, port)
    return not (any(f is None for f in ev.tcp.get(key, ()))
                or any(o.failure is None for o in ev.tls.get(key, ()))
                or any(f is None for _, f in ev.control_sni.get(key, ())))


def judge_failure(m: Measurement, ev: Evidence) -> Verdict | None:
    failure = m.failure or ""
    layer, address, port, sni = _failed_step(m)
    if not layer:
        return None
    where = f"{address}:{port}" if address else m.target.key
    control_sni = _control_sni(ev, failure, address, port, sni) if layer == "tls" else None
    if control_sni is not None and control_sni[1] is None:
        same = "the same address" if address else f"{sni}'s addresses"
        return _verdict("tls.sni_vs_control_sni", m, m.service, layer="tls",
                        evidence=f"{failure} at {m.failed_operation} naming {sni} ({where}); "
                                 f"{same} completed a handshake for {control_sni[0]}",
                        details={"address": address, "sni_based": True,
                                 "control_sni": control_sni[0]})
    note, extra = "", {}
    if control_sni is not None:  # the harmless name failed as well: not the name
        note = (f"; the control SNI {control_sni[0]} failed too ({control_sni[1]}): not "
                "SNI filtering (the address, the port, the server, or residual blocking)")
        extra = {"sni_based": False, "control_sni": control_sni[0]}
    if layer in ("tcp", "tls") and _unvouched_bogon(ev, address, port):
        # a connection to a bogon fails because of the DNS answer, judged there
        return _verdict("failure.no_control", m, m.service, layer=layer,
                        evidence=f"{failure} at {m.failed_operation} ({where}){note}",
                        details=extra) if note else None
    ok, failed, what = _control_outcome(m, ev, layer, address, port, sni)
    if layer == "tls" and failure in CERT_FAILURES and (
            ok or _valid_at_control_address(ev, address, sni)):
        return _verdict("tls.invalid_cert_vs_control", m, m.service, layer="tls",
                        evidence=f"{failure} at {where}; the control's certificate for "
                                 f"{sni} is valid", details={"address": address})
    if layer == "dns" and failure == F.GENERIC_TIMEOUT and ok:
        why = unconfirmed_silence(m, ev.facts)
        if why is not None:
            return _verdict("dns.timeout.unconfirmed", m, m.service, layer="dns",
                            evidence=f"{failure} at {m.failed_operation}: {why}")
    if ok and failure in INTERFERENCE:
        return _verdict(_FAILURE_RULE[layer], m, m.service, layer=layer,
                        evidence=f"{failure} at {m.failed_operation} ({where}); control {what} "
                                 f"succeeded{note}", details={"address": address, **extra})
    if failed and not ok:
        return _verdict("failure.same_as_control", m, m.service, layer=layer,
                        evidence=f"{failure} at {m.failed_operation}; control {what} failed "
                                 f"too{note}", details=extra)
    if note:
        return _verdict("failure.no_control", m, m.service, layer=layer,
                        evidence=f"{failure} at {m.failed_operation} ({where}){note}",
                        details=extra)
    return None


def judge_vpn(m: Measurement, ev: Evidence) -> Verdict:
    """A failed VPN handshake: blocked only if a control vantage completed the same one (by
    host name as configured, so that a control resolving to other addresses still counts)."""
    obs = next((o for o in m.observations if isinstance(o, VPNObservation)), None)
    if obs is None or obs.result == "unverifiable":
        why = dict(obs.details).get("why", "") if obs else ""
        return _verdict("vpn.unverifiable", m, m.service, layer="vpn",
                        evidence=f"unverifiable: {why}"[:120])
    controls = ev.vpn.get((obs.protocol, m.target.host.lower(), obs.port), [])
    where = f"{obs.protocol} {m.target.key}"
    if "reachable" in controls and obs.result in ("no_reply", "reset", "icmp_unreachable",
                                                  "refused", "closed", "tls_failed"):
        return _verdict("vpn.failure_vs_control", m, m.service, layer="vpn",
                        evidence=f"{obs.result} from {where}; the control's handshake succeeded")
    if controls and "reachable" not in controls:
        return _verdict("failure.same_as_control", m, m.service, layer="vpn",
                        evidence=f"{obs.result} from {where}; the control failed too")
    return _verdict("failure.no_control", m, m.service, layer="vpn",
                    evidence=f"{obs.result} from {where} (a server with tls-auth or a dead one "
                             "is silent too)" if obs.result == "no_reply" else
                             f"{obs.result} from {where}")


# --- raw-packet evidence (the trace probe) ---------------------------------------------------

_TRACE_LAYER = {"syn": "tcp", "tls": "tls", "http": "http"}


def _hop_story(o: RawObservation) -> str:
    if o.interference_ttl is None:
        return ""
    after = f", after hop {o.last_hop}" if o.last_hop else ""
    server = f"; the server answers at TTL {o.server_ttl}" if o.server_ttl is not None else ""
    return (f"{o.interference or 'interference'} begins at TTL {o.interference_ttl}{after}"
            f"{server}")


def judge_trace(m: Measurement) -> Verdict | None:
    """Raw-packet evidence, strongest first: a forged RST, then interference that begins
    before the server's distance; otherwise the facts (the hop) without a claim."""
    raws = [o for o in m.observations if isinstance(o, RawObservation)]
    if not raws:
        return None
    if not any(o.capture for o in raws):
        if any(o.failure == F.RAW_UNAVAILABLE for o in raws):
            return _verdict("raw.unavailable", m, m.service, layer="raw",
                            evidence="no raw sockets (CAP_NET_RAW): nothing captured")
        return None  # out of scope, IPv6: judged like any other probe's failure
    for o in raws:
        layer = _TRACE_LAYER.get(o.mode, "tcp")
        if o.forged_rst:
            fp = f" ({o.rst_fingerprint})" if o.rst_fingerprint else ""
            hop = _hop_story(o)
            return _verdict(f"raw.forged_rst.{layer}", m, m.service, layer=layer,
                            evidence=f"RST at {o.address}:{o.port} not from the server: "
                                     f"{o.forged_rst}{fp}{'; ' + hop if hop else ''}",
                            details={"address": o.address, "forged_rst": o.forged_rst,
                                     "rst_fingerprint": o.rst_fingerprint,
                                     "interference_ttl": o.interference_ttl,
                                     "last_hop": o.last_hop})
    for o in raws:
        layer = _TRACE_LAYER.get(o.mode, "tcp")
        if (o.interference_ttl is not None and o.server_ttl is not None
                and o.interference_ttl < o.server_ttl):
            return _verdict(f"raw.before_server.{layer}", m, m.service, layer=layer,
                            evidence=f"{o.address}:{o.port}: {_hop_story(o)}",
                            details={"address": o.address, "interference_ttl":
                                     o.interference_ttl, "last_hop": o.last_hop,
                                     "server_ttl": o.server_ttl})
    found = [o for o in raws if o.capture and o.reply not in ("data", "synack")]
    if found:
        o = found[0]
        story = _hop_story(o) or "not located"
        return _verdict("raw.interference", m, m.service, layer=_TRACE_LAYER.get(o.mode, "tcp"),
                        evidence=f"{o.reply} at {o.address}:{o.port}; {story}",
                        details={"address": o.address, "reply": o.reply,
                                 "interference_ttl": o.interference_ttl,
                                 "last_hop": o.last_hop, "server_ttl": o.server_ttl})
    if m.failure is None:
        return _verdict("raw.clean", m, m.service, layer="raw",
                        evidence=f"{raws[0].reply} from {raws[0].address}:{raws[0].port}")
    return None


# --- measurements, runs, services -------------------------------------------------------------


def judge_measurement(m: Measurement, service: Service | None, controls: list[_ControlAnswer],
                      ev: Evidence | None = None,
                      fps: FingerprintSet | None = None) -> Verdict:
    ev = ev or Evidence()
    if m.probe == "dns":
        found = judge_dns(m, service, controls, ev, fps)
        if found is not None:
            return found
    if m.probe == "http" and fps is not None:
        found = judge_http(m, ev, fps)
        if found is not None:
            return found
    if m.probe == "trace":
        found = judge_trace(m)
        if found is not None:
            return found
    if m.failure is None:
        return _verdict("ok.no_failure", m, m.service)
    if m.failure == F.OUT_OF_SCOPE:
        return _verdict("scope.refused", m, m.service, evidence="address outside scope")
    if m.failed_operation == "probe":
        return _verdict("probe.bug", m, m.service, evidence=m.failure[:80])
    if m.failed_operation == "vpn_handshake":
        return judge_vpn(m, ev)
    found = judge_failure(m, ev)
    if found is not None:
        return found
    layer = _LAYER.get(m.failed_operation or "")
    return _verdict("failure.no_control", m, m.service, layer=layer,
                    evidence=f"{m.failure} at {m.failed_operation}")


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
        return [_verdict("service.network_unavailable", None, n,
                         evidence="local network down at baseline") for n in names]
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

    def observe(self, m: Measurement) -> None:
        if not self.is_control(m):
            self.facts.add(m)

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
        # raw-packet evidence adds blocking; its absence (or no CAP_NET_RAW) takes nothing away
        counted = [v for v in out if v.verdict in BLOCKED
                   or probes.get(v.measurement_id or "") != "trace"]
        app = judge_app(self.services.get(name), counted, probes, keys)
        return [*out, app or judge_service(name, counted, probes)]


def judge_app(service: Service | None, verdicts: Sequence[Verdict], probes: Mapping[str, str],
              keys: Mapping[str, str]) -> Verdict | None:
    """The catalogue's app-level rule (``all_chat_fail_with_working_control``): the app is
    blocked when every connection to its chat endpoints was judged blocked, whatever its web
    pages do. Only blocking verdicts count, and those already required a control."""
    if service is None or service.app is None or \
            service.app.rule != "all_chat_fail_with_working_control":
        return None
    chat = set(service.app.chat_endpoints)
    on_chat = [v for v in verdicts if v.measurement_id is not None
               and probes.get(v.measurement_id) in ("tcp", "tls")
               and keys.get(v.measurement_id) in chat]
    reached = {keys[v.measurement_id] for v in on_chat if v.measurement_id}
    if not on_chat or reached != chat or any(v.verdict not in BLOCKED for v in on_chat):
        return None
    layers = sorted({v.layer for v in verdicts if v.verdict in BLOCKED and v.layer})
    return _verdict("service.app_chat_blocked", None, service.name, layer=",".join(layers),
                    evidence=f"all {len(chat)} chat endpoints blocked: {service.app.text}",
                    details={"chat_endpoints": sorted(chat),
                             "rules": sorted({v.rule_id for v in on_chat})})


# Layers from the bottom up: a working layer below a blocked one (DNS answering while TCP to
# the answer is dropped) does not make the blocking partial; a working one at or above does.
_RANK = {"dns": 0, "tcp": 1, "tls": 2, "http": 3}


def _rank(layer_or_probe: str | None) -> int:
    return _RANK.get(layer_or_probe or "", 4)  # VPN and other probes: their own top layer


def judge_service(name: str, verdicts: Sequence[Verdict],
                  probes: Mapping[str, str] | None = None) -> Verdict:
    """One verdict for a service from its measurements' verdicts (``probes``: measurement id
    -> probe name, to place ``ok`` measurements in their layer)."""
    blocked = [v for v in verdicts if v.verdict in BLOCKED]
    ok = [v for v in verdicts if v.verdict == "ok"]
    if blocked and probes is not None:
        lowest = min(_rank(v.layer) for v in blocked)
        ok = [v for v in ok if _rank(probes.get(v.measurement_id or "")) >= lowest]
    failed = [v for v in verdicts if v.verdict not in ("ok", *BLOCKED)]
    layers = sorted({v.layer for v in blocked if v.layer})
    counts = {"measurements": len(verdicts), "ok": sum(v.verdict == "ok" for v in verdicts),
              "blocked": len(blocked), "failed": len(failed)}
    if blocked:
        rule = "service.partial" if ok else "service.blocked"
        return _verdict(rule, None, name, layer=",".join(layers), evidence=blocked[0].evidence,
                        details={**counts, "rules": sorted({v.rule_id for v in blocked})})
    if verdicts and len(ok) == len(verdicts):
        return _verdict("service.ok", None, name, evidence=f"{len(ok)} measurements ok",
                        details=counts)
    if failed and all(v.verdict == "down" for v in failed):
        # a dead server still resolves: working layers below the outage do not make it "up"
        lowest = min(_rank(v.layer) for v in failed)
        if not [v for v in ok if probes is None
                or _rank(probes.get(v.measurement_id or "")) >= lowest]:
            return _verdict("service.down", None, name, layer=failed[0].layer,
                            evidence=failed[0].evidence, details=counts)
    first = failed[0] if failed else None
    return _verdict("service.inconclusive", None, name, layer=first.layer if first else None,
                    evidence=(f"{len(failed)}/{len(verdicts)} failed: {first.evidence}"
                              if first else "no measurements"), details=counts)
