"""Wiring: turn a validated Config into the typed objects the lower packages take."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from blockwatch import DISTRIBUTION
from blockwatch.config import Config, ConfigError
from blockwatch.probes.catalogue import parse_endpoint
from blockwatch.probes.context import ProbeContext, Timeouts
from blockwatch.probes.pacing import Limits, raise_fd_limit
from blockwatch.probes.resolvers import parse_resolver
from blockwatch.probes.scope import Scope, is_ip
from blockwatch.scheduler.sweep import ControlPath, SweepSettings


def software_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"


def probe_context(cfg: Config, *, proxy: str | None = None) -> ProbeContext:
    """The sweep's probe context; ``proxy`` replaces the vantage's own SOCKS5 proxy (the
    control path), and its address joins the scope (the user named it)."""
    t = cfg.timeouts
    scope = list(cfg.probes.scope)
    host = urlsplit(proxy).hostname if proxy else None
    if host and is_ip(host):
        scope.append(host)
    return ProbeContext(
        scope=Scope.from_entries(scope),
        timeouts=Timeouts(dns=t.dns, tcp=t.tcp, tls=t.tls, http=t.http),
        lookup_resolver=parse_resolver(cfg.dns.resolvers[0]),
        ca_bundle=str(cfg.tls.ca_bundle) if cfg.tls.ca_bundle else None,
        proxy=proxy or cfg.vantage.socks5_proxy,
        source_address=cfg.vantage.source_address,
        user_agent=f"blockwatch/{software_version()}",
        dns_retries=cfg.dns.retries,
        dns_confirm=cfg.dns.confirm,
        limits=Limits(per_resolver=cfg.concurrency.per_resolver,
                      per_resolver_qps=cfg.concurrency.per_resolver_qps,
                      per_host=cfg.concurrency.per_host, sockets=raise_fd_limit()),
        control_sni=cfg.tls.control_sni or None,
        # the control path carries TCP/TLS/HTTP only: no VPN key is read for it
        secrets=vpn_secrets(cfg) if proxy is None else {},
        tls_settings={name: s.tls for name, s in cfg.catalogue().items() if s.tls is not None},
        # the dns probe asks them anyway; without it, no control query is sent for the TCP
        # probe either
        control_resolvers=tuple(parse_resolver(c) for c in cfg.dns.controls)
        if "dns" in cfg.probes.probes and proxy is None else (),
        settings=cfg.probe_settings(),
    )


def plan(cfg: Config, services: list[Any]) -> list[Any]:
    """The sweep's targets for ``services`` under the config's probes and resolvers."""
    from blockwatch.scheduler.plan import plan_sweep

    dns = "dns" in cfg.probes.probes
    return plan_sweep(services, probes=cfg.probes.probes, resolvers=cfg.dns.resolvers,
                      controls=cfg.dns.controls if dns else (),
                      silent=cfg.dns.silent if dns else (), settings=cfg.probe_settings())


def vpn_secrets(cfg: Config) -> dict[str, bytes]:
    """Key material of the VPN endpoints that name a ``key_file``, by target key. Read here,
    held in memory for the sweep, never logged or stored."""
    from blockwatch.probes.context import secret_key
    from blockwatch.scheduler.plan import vpn_target

    out: dict[str, bytes] = {}
    for service in cfg.catalogue().values():
        for ep in service.vpn:
            if ep.key_file is None:
                continue
            try:
                data = Path(ep.key_file).read_bytes()
            except OSError as exc:
                raise ConfigError(f"{cfg.source}: vpn {ep.name}: cannot read key_file "
                                  f"{ep.key_file}: {exc.strerror}") from None
            if len(data) > 64 * 1024:
                raise ConfigError(f"{cfg.source}: vpn {ep.name}: key_file {ep.key_file} is "
                                  "too large to be a key")
            out[secret_key(vpn_target(service.name, ep))] = data
    return out


def local_networks(cfg: Config) -> tuple[str, ...]:
    """The scope's explicit prefixes (not "public" nor "system-resolvers")."""
    return tuple(e for e in cfg.probes.scope if e not in ("public", "system-resolvers"))


def control_path(cfg: Config, vantage: str) -> ControlPath | None:
    """The SOCKS5 control path of ``[analysis] control_proxy``, if one is configured."""
    proxy = cfg.analysis.control_proxy
    if proxy is None:
        return None
    name = cfg.analysis.control_proxy_vantage or f"{vantage}-via-proxy"
    if name == vantage:
        raise ConfigError(f"{cfg.source}: analysis.control_proxy_vantage must differ from the "
                          f"vantage's own name {vantage!r}")
    return ControlPath(vantage=name, ctx=probe_context(cfg, proxy=proxy))


def sweep_settings(cfg: Config, *, vantage: str | None = None,
                   group: str | None = None) -> SweepSettings:
    name = vantage or cfg.vantage.name
    return SweepSettings(
        control_path=control_path(cfg, name),
        local_networks=local_networks(cfg),
        vantage=name,
        country=cfg.vantage.country,
        asn=cfg.vantage.asn,
        group=group,
        concurrency=cfg.concurrency.total,
        control_resolvers=tuple(cfg.dns.controls),
        baseline_endpoints=tuple(parse_endpoint(e) for e in cfg.baseline.endpoints),
        baseline_timeout=cfg.baseline.timeout,
        software_version=software_version(),
        config_hash=cfg.digest,
        fingerprints=fingerprints(cfg),
        control_vantages=tuple(cfg.analysis.control_vantages),
        control_max_age_s=cfg.analysis.control_max_age_h * 3600,
        warnings=scope_warnings(cfg),
        resolvers=tuple(cfg.dns.resolvers),
    )


def scope_warnings(cfg: Config) -> tuple[str, ...]:
    """What the scope silently switches off: baseline endpoints and control resolvers (given
    as addresses) that ``[probes] scope`` does not admit are never contacted, so the sweep runs
    without a network check or without a DNS control. Said on stderr and in the summary."""
    scope = Scope.from_entries(list(cfg.probes.scope))

    def outside(address: str) -> bool:  # a name is looked up first: it cannot be told here
        return is_ip(address) and not scope.allows(address)

    out = []
    baseline = [e for e in cfg.baseline.endpoints if outside(parse_endpoint(e).host)]
    if baseline and len(baseline) == len(cfg.baseline.endpoints):
        out.append(f"the baseline endpoints ({', '.join(baseline)}) are outside [probes] scope: "
                   "the local network is not checked before the sweep, and a network that is "
                   "down cannot be told from blocking (set [baseline] endpoints in the scope)")
    controls = [c for c in cfg.dns.controls if outside(parse_resolver(c).address)]
    if controls and "dns" in cfg.probes.probes:
        out.append(f"the control resolvers ({', '.join(controls)}) are outside [probes] scope: "
                   "they are not asked, so DNS answers are compared with "
                   f"{'no control' if len(controls) == len(cfg.dns.controls) else 'fewer'} "
                   "(set [dns] controls in the scope)")
    return tuple(out)


def fingerprints(cfg: Config) -> Any:
    """The built-in fingerprints plus the configured files; ConfigError names a bad one."""
    from blockwatch.analysis.fingerprints import FingerprintError, load

    try:
        return load(cfg.analysis.fingerprints)
    except FingerprintError as exc:
        raise ConfigError(f"{cfg.source}: analysis.fingerprints: {exc}") from None
