"""Planning a sweep: which targets each service yields for each probe. Pure, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from urllib.parse import urlsplit

from blockwatch.probes.model import SILENT_PROTOCOLS, Service, Target, VPNEndpoint
from blockwatch.probes.scope import is_ip


def _url_endpoint(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    return parts.hostname or "", parts.port or (443 if tls else 80), tls


SILENT = ("silent", "yes")  # the option that marks a DNS query to a silent address


def plan_service(service: Service, *, probes: Iterable[str], resolvers: Sequence[str],
                 controls: Sequence[str] = (), silent: Sequence[str] = ()) -> list[Target]:
    """Targets for one service, deduplicated, in a stable order (dns, tcp, tls, http, vpn,
    trace). ``silent``: addresses where no DNS server runs; each name is asked there once, over
    UDP, and any answer is forged on the path."""
    wanted = set(probes)
    name = service.name
    out: list[Target] = []
    hosts = list(service.domains)
    for url in service.urls:
        host, _, _ = _url_endpoint(url)
        if host not in hosts and not is_ip(host):
            hosts.append(host)
    if "dns" in wanted:
        for host in hosts:
            for resolver in dict.fromkeys([*resolvers, *controls]):
                out.append(Target(service=name, probe="dns", host=host, resolver=resolver))
            for address in dict.fromkeys(silent):
                shown = f"[{address}]" if ":" in address else address
                out.append(Target(service=name, probe="dns", host=host,
                                  resolver=f"udp://{shown}", options=(SILENT,)))
    endpoints: dict[tuple[str, int], bool] = {}
    for url in service.urls:
        host, port, tls = _url_endpoint(url)
        endpoints[(host, port)] = endpoints.get((host, port), False) or tls
    for ep in service.endpoints:
        if ep.transport == "tcp":
            key = (ep.host, ep.port)
            endpoints[key] = endpoints.get(key, False) or ep.tls or (
                ep.port == 443 and not is_ip(ep.host))
    if "tcp" in wanted:
        out += [Target(service=name, probe="tcp", host=h, port=p) for (h, p) in endpoints]
    if "tls" in wanted:
        out += [Target(service=name, probe="tls", host=h, port=p, sni=h)
                for (h, p), tls in endpoints.items() if tls]
    if "http" in wanted:
        out += [Target(service=name, probe="http", host=_url_endpoint(u)[0], url=u)
                for u in dict.fromkeys(service.urls)]
    if "vpn" in wanted:
        out += [vpn_target(name, ep) for ep in service.vpn]
    if "trace" in wanted:  # raw-packet evidence: what answers, and where interference begins
        out += [Target(service=name, probe="trace", host=h, port=p, sni=h if tls else None,
                       options=(("mode", "tls" if tls else "http"),))
                for (h, p), tls in endpoints.items() if tls or p == 80]
    return out


def vpn_target(service: str, ep: VPNEndpoint) -> Target:
    """The target for a VPN endpoint. Protocols that stay silent without their secret (obfs4,
    Shadowsocks) become TCP reachability targets, labelled so in their options."""
    if ep.protocol in SILENT_PROTOCOLS:
        return Target(service=service, probe="tcp", host=ep.host, port=ep.port,
                      options=(("silent_protocol", ep.protocol), *ep.options))
    return Target(service=service, probe=ep.protocol, host=ep.host, port=ep.port,
                  transport=ep.transport, options=ep.options)


def plan_sweep(services: Sequence[Service], *, probes: Iterable[str], resolvers: Sequence[str],
               controls: Sequence[str] = (), silent: Sequence[str] = ()) -> list[Target]:
    """Every service's targets, each carrying its service's category."""
    probes = list(probes)
    return [replace(t, category=s.category) for s in services
            for t in plan_service(s, probes=probes, resolvers=resolvers, controls=controls,
                                  silent=silent)]
