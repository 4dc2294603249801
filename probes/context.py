"""What every probe gets: timeouts, the scope, the address-lookup resolver and shared caches.

A ``ProbeContext`` is built once per sweep by the scheduler from validated config; probes never
read files or environment variables themselves.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from blockwatch.probes.model import DNSObservation, Observation, Target, TLSSettings
from blockwatch.probes.pacing import Limits
from blockwatch.probes.resolvers import ResolverSpec
from blockwatch.probes.scope import Scope, is_ip

if TYPE_CHECKING:
    from blockwatch.probes.dns import Resolutions


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    dns: float = 4.0
    tcp: float = 10.0
    tls: float = 10.0
    http: float = 15.0


# ``ProbeContext.cache`` key: a list of ``async () -> None`` that ``aclose`` awaits at the
# sweep's end (whatever ended it), for what a probe started and must end with the sweep
CLOSERS = "closers"


@dataclass(frozen=True, slots=True)
class Lookup:
    """The addresses a name resolved to for this sweep, and the DNS facts behind them."""

    addresses: tuple[str, ...]
    observations: tuple[DNSObservation, ...] = ()
    failure: str | None = None


@dataclass(kw_only=True)
class ProbeContext:
    scope: Scope
    timeouts: Timeouts = field(default_factory=Timeouts)
    lookup_resolver: ResolverSpec = field(default_factory=lambda: ResolverSpec("system"))
    ca_bundle: str | None = None
    proxy: str | None = None
    source_address: str | None = None
    user_agent: str = "blockwatch/0.1 (+https://github.com/blockwatch)"
    # UDP retransmissions of an unanswered query within its timeout, and whether a query that
    # got no response at all is asked once more before its silence counts
    dns_retries: int = 2
    dns_confirm: bool = True
    limits: Limits = field(default_factory=Limits)
    # the harmless server name tried on an address after the real one failed (None: never)
    control_sni: str | None = "example.com"
    # key material for VPN probes by ``secret_key(target)``; in memory only, never stored or
    # logged
    secrets: dict[str, bytes] = field(default_factory=dict, repr=False)
    # names whose lookup is given in advance (as curl's --resolve): no query is sent for them
    static_lookups: dict[str, Lookup] = field(default_factory=dict)
    _resolutions: Resolutions | None = None
    # the control resolvers ([dns] controls, when the dns probe runs): their answers are asked
    # anyway, and the TCP probe tries them where every address of our own answer failed
    control_resolvers: tuple[ResolverSpec, ...] = ()
    # per-service TLS settings (a pinned CA, the ALPN offered), by service name
    tls_settings: dict[str, TLSSettings] = field(default_factory=dict)
    # each probe's own knobs ([probe.NAME], the model its registry line names), by probe name
    settings: dict[str, Any] = field(default_factory=dict)
    _ssl: dict[tuple[bool, tuple[str, ...], str | None], ssl.SSLContext] = field(
        default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)  # per-sweep facts read once

    def ssl_context(self, verify: bool = True, alpn: tuple[str, ...] = (),
                    cafile: str | None = None) -> ssl.SSLContext:
        """Shared per sweep (building one loads the system CA store: milliseconds each time).
        ``cafile``: a pinned CA bundle, trusted alone (not the system store, not ``ca_bundle``).

        Callers must not modify the returned context; ask for ALPN protocols here instead.
        """
        key = (verify, alpn, cafile)
        cached = self._ssl.get(key)
        if cached is not None:
            return cached
        if cafile is not None:
            ctx = self._ssl[key] = ssl.create_default_context(cafile=cafile)
        else:
            ctx = self._ssl[key] = ssl.create_default_context()
            if self.ca_bundle:
                ctx.load_verify_locations(cafile=self.ca_bundle)
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    @property
    def resolutions(self) -> Resolutions:
        """The sweep's shared DNS queries: each (resolver, name, type) is asked once."""
        if self._resolutions is None:
            from blockwatch.probes.dns import Resolutions

            self._resolutions = Resolutions(self)
        return self._resolutions

    async def lookup(self, host: str, *, every_address: bool = True) -> Lookup:
        """The addresses of ``host`` (A and AAAA at the lookup resolver), from the sweep's
        shared queries; ``every_address=False`` for a fetch that goes, as browsers do, once
        one address family has answered (``probes.dns.lookup``)."""
        if is_ip(host):
            return Lookup((host,))
        if host in self.static_lookups:
            return self.static_lookups[host]
        from blockwatch.probes.dns import lookup

        return await lookup(host, self, every_address=every_address)

    def for_sweep(self) -> ProbeContext:
        """This context with nothing of an earlier sweep: its own shared queries, limits and
        per-sweep facts (a daemon reuses one context for many sweeps)."""
        return replace(self, limits=self.limits.fresh(), _resolutions=None, cache={})

    async def aclose(self) -> None:
        """End what the sweep left running (queries still listening for late answers, kept
        connections to resolvers, what a probe registered under ``CLOSERS``: e.g. the ech
        probe's worker process)."""
        for closing in self.cache.pop(CLOSERS, []):
            await closing()
        if self._resolutions is not None:
            await self._resolutions.aclose()
        from blockwatch.probes.dns import close_connections

        for closing in close_connections(self):
            await closing


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What a probe saw, and the failure that stopped it (if any) with the operation that failed.

    ``operation`` is one of ``resolve``, ``connect``, ``tls_handshake``, ``http_round_trip``
    (OONI's names). A TCP probe of several addresses fails only if every address failed.
    """

    observations: tuple[Observation, ...]
    failure: str | None = None
    operation: str | None = None


class Probe(Protocol):
    name: str
    version: str

    async def observe(self, target: Target, ctx: ProbeContext) -> ProbeResult: ...


def secret_key(target: Target) -> str:
    """Whose key material ``ProbeContext.secrets`` holds: the probe (the protocol), the service
    and the endpoint. Not the endpoint alone: two ``[[vpn]]`` entries on one address and port
    (WireGuard and OpenVPN over UDP) each get their own key, never the other's."""
    return f"{target.probe} {target.service} {target.key}"
