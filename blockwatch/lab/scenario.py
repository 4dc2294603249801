"""Scenarios: which blocking method the lab's censor applies to which service.

A scenario is a TOML file (the shipped ones are in ``blockwatch/lab/scenarios/``)::

    description = "what this scenario models"
    [services]
    twitter = "dns_nxdomain"
    kakaotalk = ["dns_injection", "tcp_syn_drop"]
    [options]
    loss_percent = 30          # for services with packet_loss
    global_loss_percent = 0    # every packet of the censored client, both ways
    udp_ports = [1194, 51820]  # for udp_drop
    delay_ms = 200             # for delay

    [only]                     # optional: a service's methods hit only these names/addresses
    telegram = ["web.telegram.org", "149.154.175.50"]
    [expect]                   # optional: collateral damage, or what [only] leaves working
    messenger = "blocked dns"  # e.g. it shares names under a poisoned facebook.com

Each method also carries, as data, what the analyzer (``blockwatch.analysis``, version
``ANALYZER``) must say about the affected service from the censored client of a single
``blockwatch run``: the tests assert exactly that, and the demo prints it. A method it cannot
call ``blocked`` says ``inconclusive`` (a single run has no control *vantage*: TCP/TLS failures
cannot be told from an outage) or ``ok`` (no probe looks at that layer yet: UDP).
``with_control`` is what it says once the control client's measurements are in the same
database and named in ``[analysis] control_vantages`` (tests/lab/test_control_vantage.py).

These expectations are for catalogue services, which have no VPN endpoint on a dropped UDP
port. The lab-only service ``labvpn`` (real OpenVPN and strongSwan servers, see
``blockwatch.lab.vpn``) is what ``udp_drop`` and ``tcp_rst_data``/``tcp_rst_syn`` are for in
scenario ``vpn`` (``udp_ports = [1194, 1195, 500, 4500]``): its handshakes then get no reply or a
reset, ``inconclusive`` at layer vpn from one run and ``vpn_blocked`` (service ``blocked``, layer
vpn) against a control vantage that completed them (tests/lab/test_vpn.py).

Scenario ``evidence`` (issue #4, tests/lab/test_evidence.py) exercises the verdicts that need
evidence the ``methods`` scenario cannot give, with the methods of ``EVIDENCE``:

* ``http_blockpage_national``: the censor answers the lab-only site ``labweb`` (its URL is
  ``http://``; an opt-in service, see ``blockwatch.lab.services``) with a copy of Iran's national
  block page, which a shipped fingerprint describes: ``blocked`` at layer http from one run;
* ``dns_poison_known`` (also in ``methods``): the ISP resolver answers the GFW's forged
  8.7.198.45, a shipped DNS fingerprint: ``blocked`` dns from one run even for a service without
  exclusive prefixes; the TCP/TLS/HTTP probes never send it a packet (``out_of_scope``);
* ``server_down``: not the censor but an outage in the server namespace, seen by both clients
  (``everywhere``): ``inconclusive`` from one run, ``down`` (never ``blocked``) with the control
  client's measurements as control vantage.

Scenario ``ipv6`` (tests/lab/test_ipv6.py) carries the method of ``IPV6``:

* ``ipv6_broken``: not the censor either: the server's side drops every packet to the service's
  IPv6 address (its AAAA record), for everybody, while IPv4 works; the TCP/TLS probes try every
  address and one that works is enough, so the service is ``ok`` from one run and with the
  control, never ``blocked`` (broken IPv6 is a known false positive in the field).

The lab is dual-stack (``blockwatch.lab.topology``): every address-based method hits the
service's IPv6 address too, and the DNS methods answer AAAA queries as well, so these
expectations hold for both address families (tests/lab/test_ipv6.py).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blockwatch.lab.state import LabError

if TYPE_CHECKING:
    from blockwatch.lab.services import Catalogue

ANALYZER = "10"  # the analysis.rules.ANALYZER_VERSION these expectations were checked against


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    what: str
    verdict: str  # the service verdict analyzer v1 gives from the censored client
    layer: str | None  # the service verdict's layer
    failure: str | None  # failure string of the affected measurements (None: no failure)
    # the service verdict and layer when the control client's measurements are in the same
    # database and the censored client names it in [analysis] control_vantages
    with_control: tuple[str, str | None] = ("ok", None)
    # not the censor's doing: the control client meets it too, and sees what a single run of
    # the censored client sees (``verdict``, ``layer``) instead of ``ok``
    everywhere: bool = False


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("dns_nxdomain", "the ISP resolver says NXDOMAIN", "blocked", "dns",
           "dns_nxdomain_error", ("blocked", "dns")),
    # the stored measurement holds the answer (no failure: facts only); the analysis decides
    # that a bogon outside the scope is a sinkhole (analysis/bogons.py)
    Method("dns_bogon", "the ISP resolver answers a private (bogon) address", "blocked", "dns",
           None, ("blocked", "dns")),
    # Services with exclusive prefixes (Meta's) are blocked by the answer alone; elsewhere an
    # answer unlike the control's may be a CDN's, until the control resolver's addresses
    # connect from here where the forged one does not (see expected()).
    # With a control vantage: blocked at dns only. The fetches and connections to the forged
    # address fail, but the control never used that address: no tcp layer is claimed (#13).
    Method("dns_poison", "the ISP resolver answers a fixed lab address that goes nowhere",
           "blocked", "dns", None, ("blocked", "dns")),
    Method("dns_injection", "an on-path injector answers first; the real answer follows",
           "blocked", "dns", None, ("blocked", "dns")),
    # a strong signature: blocked from one run whatever the service's prefixes; the forged
    # address is public and outside the lab's scope, so the TCP/TLS/HTTP probes refuse it
    # (out_of_scope, verdict error) and the service stays blocked at dns only
    Method("dns_poison_known", "the ISP resolver answers a known forged address (the GFW's "
           "8.7.198.45, a shipped DNS fingerprint)", "blocked", "dns", None, ("blocked", "dns")),
    Method("tcp_syn_drop", "SYNs to the service's addresses are dropped", "inconclusive", "tcp",
           "generic_timeout_error", ("blocked", "tcp")),
    Method("tcp_rst_syn", "SYNs to the service's addresses get a RST", "inconclusive", "tcp",
           "connection_refused", ("blocked", "tcp")),
    # blocked from one run where raw sockets are available (the lab's clients run as root): the
    # follow-up trace of the reset handshake sees a RST whose IP TTL is not the server's
    # (raw.forged_rst.tls); without CAP_NET_RAW it stays inconclusive alone
    Method("tcp_rst_data", "the first data segment of a connection gets a RST", "blocked",
           "tls", "connection_reset", ("blocked", "tls")),
    # the same address then completes a handshake for the control SNI: blocked from one run
    Method("tls_sni_rst", "a TLS ClientHello naming the service (SNI) gets a RST",
           "blocked", "tls", "connection_reset", ("blocked", "tls")),
    # the same address answers the hello without ECH in the same run (the probe's own control)
    # while the TLS handshakes and fetches work: partial, at layer ech, from one run
    Method("ech_block", "a TLS ClientHello carrying the ECH extension (0xfe0d) gets a RST "
           "(NFQUEUE filter, Russia since 2024-11)", "partial", "ech", "connection_reset",
           ("partial", "ech")),
    Method("http_blockpage", "a transparent proxy serves a block page (HTTP 451; HTTPS with "
           "the censor's own CA)", "inconclusive", "tls", "ssl_unknown_authority",
           ("blocked", "tls")),
    Method("udp_drop", "UDP to the service's VPN ports is dropped", "ok", None, None),
    Method("packet_loss", "a share of the service's packets is dropped both ways", "ok", None,
           None),
    # slow is not blocked: every measurement still succeeds, only later (tests check the time)
    Method("delay", "the service's packets are held back delay_ms each way (NFQUEUE)", "ok",
           None, None),
)}
# Methods of scenario ``evidence`` only: scenario ``methods`` cannot carry them, because the
# clients' default configs do not sweep the opt-in service ``labweb``, or because the control
# client (which must see every service of ``methods`` ok) meets them too.
EVIDENCE: dict[str, Method] = {m.name: m for m in (
    # a strong signature needs no control
    Method("http_blockpage_national", "a transparent proxy answers HTTP with a copy of Iran's "
           "national block page (403, an iframe to 10.10.34.34: a shipped fingerprint)",
           "blocked", "http", None, ("blocked", "http")),
    # One run cannot tell an outage from blocking; against the control client, which fails the
    # same way, every TCP/TLS/HTTP measurement is "down" (failure.same_as_control), and the
    # service's correct DNS answers (a dead server still resolves) do not make it up.
    Method("server_down", "not the censor: the server's side answers the service's addresses "
           "with ICMP host unreachable, for everybody", "inconclusive", "tcp", "host_unreachable",
           ("down", "tcp"), everywhere=True),
)}
# Methods of scenario ``ipv6`` only (tests/lab/test_ipv6.py), on a service no other scenario
# touches.
IPV6: dict[str, Method] = {m.name: m for m in (
    # The IPv6 address times out for both clients, the IPv4 one answers: a measurement fails
    # only if every address failed, so nothing fails and nothing is blocked.
    Method("ipv6_broken", "not the censor: the server's side drops every packet to the "
           "service's IPv6 address, for everybody; IPv4 works", "ok", None, None, ("ok", None),
           everywhere=True),
)}
# Methods of scenario ``quic`` (tests/lab/test_quic.py): QUIC blocked while TCP works, so the
# service is reachable over TCP and blocked over QUIC (service.quic_only: partial, layer quic)
# from one run already (the ping and the control SNI, or Alt-Svc h3 and working TCP, are the
# evidence) and against the control vantage.
QUIC: dict[str, Method] = {m.name: m for m in (
    Method("quic_drop", "UDP/443 to the service's addresses is dropped (nftables)", "partial",
           "quic", None, ("partial", "quic")),
    Method("quic_sni", "QUIC Initials naming the service (SNI, decrypted with the keys of the "
           "connection id) are dropped, GFW-style: source port >= 443, then 60 s of residual "
           "blocking of (client, server, 443)", "partial", "quic", None, ("partial", "quic")),
)}
ALL_METHODS: dict[str, Method] = {**METHODS, **EVIDENCE, **IPV6, **QUIC}
DNS_METHODS = {"dns_nxdomain", "dns_bogon", "dns_poison", "dns_injection", "dns_poison_known"}
_OPTIONS = {"loss_percent": (int, 20), "global_loss_percent": (int, 0),
            "udp_ports": (list, [1194, 51820]), "delay_ms": (int, 200)}


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    blocks: Mapping[str, tuple[str, ...]]  # service -> methods
    options: Mapping[str, Any] = field(default_factory=dict)
    expect: Mapping[str, tuple[str, str | None]] = field(default_factory=dict)
    # service -> the host names and IP literals its methods are limited to (``[only]``)
    only: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def services_with(self, method: str) -> list[str]:
        return [s for s, ms in self.blocks.items() if method in ms]

    def hosts(self, cat: Catalogue, service: str) -> list[str]:
        """The names the name-based methods (DNS, SNI) hit for ``service``."""
        hosts = cat.hosts_of(service)
        only = self.only.get(service)
        return hosts if only is None else [h for h in hosts if h in only]

    def addresses(self, cat: Catalogue, service: str) -> list[str]:
        """The IPv4 addresses the address-based methods hit for ``service``: with ``[only]``,
        just the IP literals listed there (its own address serves every name)."""
        only = self.only.get(service)
        addresses = cat.addresses_of(service)
        return addresses if only is None else [a for a in addresses if a in only]

    def addresses6(self, cat: Catalogue, service: str) -> list[str]:
        return cat.addresses6_of(service) if service not in self.only else []

    def option(self, key: str) -> Any:
        return self.options.get(key, _OPTIONS[key][1])


def shipped() -> list[str]:
    folder = resources.files("blockwatch.lab").joinpath("scenarios")
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir()
                  if p.name.endswith(".toml"))


def load(name_or_path: str, known_services: Mapping[str, object]) -> Scenario:
    """A shipped scenario by name, or a user's file by path; every mistake names the key."""
    if name_or_path in shipped():
        text = resources.files("blockwatch.lab").joinpath(
            f"scenarios/{name_or_path}.toml").read_text("utf-8")
        source, name = f"scenario {name_or_path!r}", name_or_path
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise LabError(f"no scenario {name_or_path!r}: not a file, and not one of "
                           f"{', '.join(shipped())}")
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LabError(f"{path}: cannot read scenario: {exc}") from None
        source, name = str(path), path.stem
    return parse(text, source, name, known_services)


def parse(text: str, source: str, name: str, known: Mapping[str, object]) -> Scenario:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LabError(f"{source}: not valid TOML: {exc}") from None
    unknown = set(raw) - {"description", "services", "options", "expect", "only"}
    if unknown:
        raise LabError(f"{source}: unknown key {sorted(unknown)[0]!r} (expected description, "
                       "services, options, expect, only)")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise LabError(f"{source}: description must be a string")
    services = raw.get("services", {})
    if not isinstance(services, dict):
        raise LabError(f"{source}: [services] must be a table of service = method(s)")
    blocks: dict[str, tuple[str, ...]] = {}
    for service, value in services.items():
        methods = [value] if isinstance(value, str) else value
        if service not in known:
            raise LabError(f"{source}: services.{service}: unknown service (see `blockwatch "
                           "services`)")
        if not isinstance(methods, list) or not methods or not all(
                isinstance(m, str) for m in methods):
            raise LabError(f"{source}: services.{service}: a method name or a list of them")
        for m in methods:
            if m not in ALL_METHODS:
                raise LabError(f"{source}: services.{service}: unknown method {m!r}; known: "
                               f"{', '.join(ALL_METHODS)}")
        blocks[service] = tuple(dict.fromkeys(methods))
    return Scenario(name=name, description=description, blocks=blocks,
                    options=_options(raw.get("options", {}), source),
                    expect=_expect(raw.get("expect", {}), source, known),
                    only=_only(raw.get("only", {}), source, known, blocks))


def _only(raw: Any, source: str, known: Mapping[str, object],
          blocks: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """``[only]``: service = [names and IP literals of it]: its methods hit those alone (a
    partly blocked app)."""
    if not isinstance(raw, dict):
        raise LabError(f"{source}: [only] must be a table of service = [hosts]")
    out: dict[str, tuple[str, ...]] = {}
    for service, value in raw.items():
        if service not in blocks:
            raise LabError(f"{source}: only.{service}: not a service of [services]")
        if not isinstance(value, list) or not value or not all(
                isinstance(h, str) for h in value):
            raise LabError(f"{source}: only.{service}: a list of its host names or addresses")
        from blockwatch.lab.services import service_hosts

        svc: Any = known[service]
        mine = {*service_hosts(svc), *(e.host for e in svc.endpoints)}
        for h in value:
            if h.lower() not in mine:
                raise LabError(f"{source}: only.{service}: {h!r} is not one of its names or "
                               "addresses")
        out[service] = tuple(h.lower() for h in value)
    return out


def _expect(raw: Any, source: str, known: Mapping[str, object]
            ) -> dict[str, tuple[str, str | None]]:
    if not isinstance(raw, dict):
        raise LabError(f"{source}: [expect] must be a table of service = \"verdict [layer]\"")
    out: dict[str, tuple[str, str | None]] = {}
    for service, value in raw.items():
        words = value.split() if isinstance(value, str) else []
        if service not in known or not 1 <= len(words) <= 2:
            raise LabError(f"{source}: expect.{service}: a known service = \"verdict [layer]\"")
        out[service] = (words[0], words[1] if len(words) > 1 else None)
    return out


def _options(raw: Any, source: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise LabError(f"{source}: [options] must be a table")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _OPTIONS:
            raise LabError(f"{source}: options.{key}: unknown option; known: "
                           f"{', '.join(_OPTIONS)}")
        kind = _OPTIONS[key][0]
        if kind is int:
            upper = 100 if key.endswith("percent") else 10_000
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= upper:
                raise LabError(f"{source}: options.{key}: an integer from 0 to {upper}")
        elif not isinstance(value, list) or not all(
                isinstance(p, int) and 0 < p < 65536 for p in value):
            raise LabError(f"{source}: options.{key}: a list of port numbers")
        out[key] = value
    return out


_LAYER_ORDER = ("server_down", "ipv6_broken", "tcp_syn_drop", "tcp_rst_syn", "tcp_rst_data",
                "tls_sni_rst", "ech_block", "http_blockpage", "http_blockpage_national", "udp_drop",
                "packet_loss", "delay", "quic_drop", "quic_sni")


@dataclass(frozen=True, slots=True)
class Expectation:
    verdict: str
    layer: str | None
    failure: str | None
    because: str


def expected_for(scenario: Scenario, service: str, exclusive_prefixes: bool) -> Expectation:
    """The scenario's expectation for one service (its own [expect] entry wins)."""
    if service in scenario.expect:
        verdict, layer = scenario.expect[service]
        return Expectation(verdict, layer, None, "collateral (scenario [expect])")
    return expected(scenario.blocks.get(service, ()), exclusive_prefixes)


def expected(methods: tuple[str, ...], exclusive_prefixes: bool) -> Expectation:
    """What the analyzer says about a service the censor treats with ``methods``."""
    if not methods:
        return Expectation("ok", None, None, "untouched")
    for m in ("dns_nxdomain", "dns_bogon", "dns_injection", "dns_poison_known"):
        if m in methods:
            e = METHODS[m]
            return Expectation(e.verdict, e.layer, e.failure, m)
    if "dns_poison" in methods:
        if exclusive_prefixes:
            return Expectation("blocked", "dns", None, "dns_poison (outside exclusive prefixes)")
        # unlike the control resolver's answer, which a CDN could explain; but the TCP probe
        # also tries the control resolver's addresses, which connect from here while the
        # forged one does not (issue #13): corroborated, from one vantage
        return Expectation("blocked", "dns", None, "dns_poison (corroborated from here)")
    first = min(methods, key=_LAYER_ORDER.index)
    e = ALL_METHODS[first]
    return Expectation(e.verdict, e.layer, e.failure, first)


def expected_with_control(scenario: Scenario, service: str,
                          exclusive_prefixes: bool) -> Expectation:
    """What the censored client's sweep says of a service when the control client's sweep is
    in the same database and named in ``[analysis] control_vantages`` (``Method.with_control``;
    the scenario's own [expect] entry wins)."""
    alone = expected_for(scenario, service, exclusive_prefixes)
    method = ALL_METHODS.get(alone.because)
    if service in scenario.expect or method is None:
        return alone  # collateral, untouched, or DNS poisoning (blocked at dns either way)
    verdict, layer = method.with_control
    return Expectation(verdict, layer, method.failure, f"{method.name}, against the control")


def expected_control(scenario: Scenario, service: str) -> Expectation:
    """What the control client's own sweep says of a service: ``ok``, unless the scenario
    does something to it that is not the censor's (``Method.everywhere``)."""
    methods = tuple(m for m in scenario.blocks.get(service, ()) if ALL_METHODS[m].everywhere)
    return expected(methods, exclusive_prefixes=False)
