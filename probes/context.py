"""What every probe gets: timeouts, the scope, the address-lookup resolver and shared caches.

A ``ProbeContext`` is built once per sweep by the scheduler from validated config; probes never
read files or environment variables themselves.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from dataclasses import dataclass, field
from typing import Protocol

from probes.model import DNSObservation, Observation, Target
from probes.resolvers import ResolverSpec
from probes.scope import Scope


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    dns: float = 4.0
    tcp: float = 10.0
    tls: float = 10.0
    http: float = 15.0


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
    dns_retries: int = 1
    dns_inflight_per_resolver: int = 32
    # the harmless server name tried on an address after the real one failed (None: never)
    control_sni: str | None = "example.com"
    # key material for VPN probes by Target.key; held in memory only, never stored or logged
    secrets: dict[str, bytes] = field(default_factory=dict, repr=False)
    _lookups: dict[str, asyncio.Future[Lookup]] = field(default_factory=dict)
    _dns_limits: dict[str, asyncio.Semaphore] = field(default_factory=dict)
    _ssl: dict[tuple[bool, tuple[str, ...]], ssl.SSLContext] = field(default_factory=dict)

    def ssl_context(self, verify: bool = True, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
        """Shared per sweep (building one loads the system CA store: milliseconds each time).

        Callers must not modify the returned context; ask for ALPN protocols here instead.
        """
        cached = self._ssl.get((verify, alpn))
        if cached is not None:
            return cached
        ctx = self._ssl[(verify, alpn)] = ssl.create_default_context()
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        if self.ca_bundle:
            ctx.load_verify_locations(cafile=self.ca_bundle)
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def dns_limit(self, resolver: str) -> asyncio.Semaphore:
        """Bound queries in flight per resolver: a burst overflows a small resolver's buffer."""
        sem = self._dns_limits.get(resolver)
        if sem is None:
            sem = self._dns_limits[resolver] = asyncio.Semaphore(self.dns_inflight_per_resolver)
        return sem

    async def lookup(self, host: str) -> Lookup:
        """Resolve ``host`` once per sweep (A and AAAA) with the lookup resolver."""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return Lookup((host,))
        fut = self._lookups.get(host)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._lookups[host] = fut
            try:
                from probes.dns import lookup_addresses

                fut.set_result(await lookup_addresses(host, self))
            except BaseException as exc:  # a cancelled lookup must not poison the cache
                del self._lookups[host]
                fut.cancel()
                raise exc
        return await asyncio.shield(fut)


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
