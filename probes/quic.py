"""The QUIC/HTTP/3 probe ``quic``: does each address of an HTTPS endpoint answer QUIC (UDP/443)
for the service's name, as browsers and apps try it first?

Per resolved address of each HTTPS endpoint (the TLS probe measures the same addresses over TCP;
the analysis compares the two):

1. at once, side by side: a **version-negotiation ping** (OONI's quicping, ts-031: a 1200-byte
   long-header packet of a reserved version; every QUIC server answers it with a Version
   Negotiation packet, so an answer proves UDP reaches a QUIC stack without any handshake or
   name) and a **handshake with the control SNI** (``ctx.control_sni``, unverified, no
   request): the address's QUIC with a harmless name;
2. then the **handshake naming the service** (ALPN ``h3``), its certificate verified against the
   vantage's CA settings as the TLS probe's (the system store and ``[tls] ca_bundle``, or a
   service's pinned CA), and over a trusted connection an **HTTP/3 GET** of ``/`` (the
   target's URL path and query when it carries one; the planner's targets are endpoints, so
   ``/``), whose status is recorded (any status is an answer: no failure).

The control SNI and the ping go *first*: a censor that blocks by SNI, as the Great Firewall has
done for QUIC since 2024, then blocks the client, server address and port for a while
(residual blocking), which would hide what the address does for other names.

Guarantees:

- The scope is checked before any packet: an address outside it is ``out_of_scope``, nothing
  sent. Through a SOCKS5 proxy nothing is sent (UDP cannot go through it):
  ``quic_unsupported_with_proxy``; the registry never runs this probe on a control path.
- A handshake that timed out is made once more (QUIC retransmits its own Initial within each
  attempt, so one lost datagram is not a failure; a dropped flow fails twice). Both are
  recorded, the second counts. Every exchange ends by ``[probe.quic] timeout``, and a probe
  takes at most three of them per address (ping and control side by side, the handshake, its
  retry), well inside the runner's deadline.
- Each exchange takes its share of our limits first: the server's connections, as a TCP
  connection does (``Limits.connection``), then one of at most ``[probe.quic] in_flight`` QUIC
  exchanges at once in a sweep (aioquic is pure Python: a handshake must not time out
  waiting for our own CPU). Waiting is queue time, outside every timeout.
- ``after_failure_s`` (every exchange): seconds from the start of the latest handshake of this
  process (this sweep or one in the last ``RESIDUAL_S``: a daemon's sweeps follow each other)
  naming *another* service name at the same address that failed or was still in flight,
  and that began before this exchange did (the ping, the control SNI) or ended (a handshake:
  0 when it began during this one), to this exchange's start; None: none did. A censor's
  residual blocking begins with the Initial that names a blocked name and blocks every name
  after it: the analysis never calls a silence of this kind blocked.
- Facts only (``QUICObservation``), bounded in memory (``probes.quic_wire``); the verdicts are
  ``blockwatch.analysis.quic``'s.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from blockwatch.probes import failures as F
from blockwatch.probes import quic_ping as ping
from blockwatch.probes import quic_wire as wire
from blockwatch.probes.context import ProbeContext, ProbeResult
from blockwatch.probes.dial import Clock
from blockwatch.probes.model import Observation, ProbeObservation, Service, Target
from blockwatch.probes.pacing import Limiter, Slot
from blockwatch.probes.targets import PlanContext, tcp_endpoints
from blockwatch.probes.tls import describe, profile

HANDSHAKE, CONTROL, PING = "handshake", "control_sni", "quicping"
PROXY_UNSUPPORTED = "quic_unsupported_with_proxy"  # project-local: nothing sent
ALPN = ("h3",)
# residual blocking lasts 60 s at the GFW, longer elsewhere: what the analysis calls too soon
# after another name's failure (``analysis.quic``) and how long the book below remembers one
RESIDUAL_S = 180.0
# address -> service name -> (time.monotonic() its latest handshake there started, False: it
# completed / True: it failed / None: in flight): the residual blocking a censor may have set
# for our client and that address (see ``_after``). Kept by the process, not the sweep: a
# daemon's next sweep, or one more run, may come within the residual blocking of the last
_TRIED: dict[str, dict[str, tuple[float, bool | None]]] = {}
MAX_TRIED = (65536, 8)  # addresses kept (the oldest forgotten first), names kept per address
_LIMITER_KEY = "quic_in_flight"  # ctx.cache: the sweep's Limiter of QUIC exchanges


class QUICSettings(BaseModel):
    """``[probe.quic]``: the time each QUIC exchange may take, and the two extra exchanges."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    timeout: Annotated[float, Field(gt=0, le=12)] = 8.0  # 3 per address: the deadline
    control_sni: bool = True  # a handshake with the control SNI on each address
    quicping: bool = True  # the version-negotiation ping on each address
    # QUIC exchanges in flight in a sweep: aioquic is pure Python, and a handshake waiting for
    # our own CPU must not time out (the wait is queue time, outside every timeout)
    in_flight: Annotated[int, Field(ge=1, le=4096)] = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class QUICObservation(ProbeObservation):
    """One exchange with one address: a handshake (naming the service, or the control SNI) or
    the version-negotiation ping (``kind``)."""

    layer: str = field(default="quic", init=False)
    kind: str  # "handshake", "control_sni" or "quicping"
    address: str
    port: int
    t0: float
    t: float
    sni: str | None = None
    attempt: int = 1  # 2: a timed-out handshake made again
    version: str | None = None  # QUIC version of the connection ("1", "2")
    alpn: str | None = None
    peer_chain_sha256: tuple[str, ...] = ()
    cert_subject: str | None = None
    cert_sans: tuple[str, ...] = ()
    cert_not_after: str | None = None
    verified: bool | None = None
    verify_error: str | None = None
    http_status: int | None = None  # the HTTP/3 GET's status
    versions: tuple[str, ...] = ()  # quicping: the versions the server offered
    answered: bool = False  # any datagram came back from the address
    # the CONNECTION_CLOSE reason phrase (data): the peer's, or aioquic's own when it closed
    # over a malformed answer
    close_reason: str | None = None
    ignored: int = 0  # quicping: datagrams that were not our Version Negotiation
    after_failure_s: float | None = None
    failure: str | None = None
    operation: str | None = None  # the failed step: quic_handshake, http3_round_trip, quicping


@dataclass(frozen=True, slots=True)
class Job:
    """What one target's exchanges share."""

    ctx: ProbeContext
    settings: QUICSettings
    sni: str
    port: int
    path: str
    alpn: tuple[str, ...]
    trust: wire.Trust
    clock: Clock


def _trust(ctx: ProbeContext, target: Target) -> tuple[wire.Trust, tuple[str, ...]]:
    prof = profile(ctx, target)  # the service's pinned CA, as the TLS probe's
    if prof.cafile:
        return wire.Trust(cafile=prof.cafile), ALPN
    key = "quic_trust"
    found = ctx.cache.get(key)
    if found is None:
        found = ctx.cache[key] = wire.system_trust(ctx.ca_bundle)
    return found, ALPN


def _handshake_obs(job: Job, kind: str, address: str, t0: float, out: wire.Outcome,
                   attempt: int, after: float | None) -> QUICObservation:
    leaf = describe(out.chain[0]) if out.chain else None
    return QUICObservation(
        kind=kind, address=address, port=job.port, t0=t0, t=job.clock(),
        sni=job.sni if kind == HANDSHAKE else job.ctx.control_sni, attempt=attempt,
        version=out.version, alpn=out.alpn,
        peer_chain_sha256=tuple(hashlib.sha256(d).hexdigest() for d in out.chain),
        cert_subject=leaf.subject if leaf else None, cert_sans=leaf.sans if leaf else (),
        cert_not_after=leaf.not_after if leaf else None, verified=out.verified,
        verify_error=out.verify_error, http_status=out.status, answered=out.answered,
        close_reason=out.close_reason, after_failure_s=after, failure=out.failure,
        operation=out.operation if out.failure else None)


async def _slot(job: Job, address: str) -> Slot:
    """Our limits for one exchange: the server's connections (``Limits.connection``), then the
    sweep's QUIC exchanges in flight (in that order, as ``Limits.connection`` takes a socket
    after the server's share: an exchange waiting for a busy server must not hold a permit the
    exchanges with other servers need); waiting is queue time."""
    limiter = job.ctx.cache.get(_LIMITER_KEY)
    if limiter is None:
        limiter = job.ctx.cache[_LIMITER_KEY] = Limiter(job.settings.in_flight)
    theirs = await job.ctx.limits.connection(address)
    try:
        mine = await limiter.acquire()
    except BaseException:
        theirs.release()
        raise

    def release() -> None:
        theirs.release()
        mine.release()

    return Slot(release)


def _tried(address: str) -> dict[str, tuple[float, bool | None]]:
    """The address's handshakes of the last ``RESIDUAL_S`` seconds."""
    names = _TRIED.get(address)
    if names is None:
        if len(_TRIED) >= MAX_TRIED[0]:
            del _TRIED[next(iter(_TRIED))]
        names = _TRIED[address] = {}
    old = time.monotonic() - RESIDUAL_S
    for name in [n for n, (t, _) in names.items() if t < old]:
        del names[name]
    return names


def _begin(job: Job, address: str) -> float:
    """A handshake naming the service starts at ``address``: recorded as in flight."""
    started = time.monotonic()
    names = _tried(address)
    names.pop(job.sni.lower(), None)
    if len(names) >= MAX_TRIED[1]:
        del names[next(iter(names))]
    names[job.sni.lower()] = (started, None)
    return started


def _end(job: Job, address: str, started: float, failed: bool) -> None:
    names = _tried(address)
    if names.get(job.sni.lower(), (None, None))[0] == started:
        names[job.sni.lower()] = (started, failed)


def _after(job: Job, address: str, started: float, until: float) -> float | None:
    """``after_failure_s`` of an exchange at ``address`` that started at ``started``: the
    handshakes naming another name that began by ``until`` and failed or have not ended."""
    own = job.sni.lower()
    suspects = [t for name, (t, failed) in _tried(address).items()
                if name != own and failed is not False and t <= until]
    return round(max(0.0, started - max(suspects)), 3) if suspects else None


async def _handshake(job: Job, address: str, kind: str, attempt: int) -> QUICObservation:
    slot = await _slot(job, address)
    try:
        t0 = job.clock()
        control = kind == CONTROL
        started = time.monotonic() if control else _begin(job, address)
        out = await wire.handshake(
            address, job.port, job.ctx.control_sni if control else job.sni, alpn=job.alpn,
            trust=None if control else job.trust, path=job.path,
            user_agent=job.ctx.user_agent, limit=job.settings.timeout,
            source=job.ctx.source_address)
    finally:
        slot.release()
    if not control:
        _end(job, address, started, out.failure is not None)
    # the handshake counts a residual blocking set at any time until it ended (its later
    # packets, or the GET, met it), the control SNI one set before it began
    after = _after(job, address, started, started if control else time.monotonic())
    return _handshake_obs(job, kind, address, t0, out, attempt, after)


async def _ping(job: Job, address: str) -> QUICObservation:
    slot = await _slot(job, address)
    try:
        t0 = job.clock()
        started = time.monotonic()
        got = await ping.quicping(address, job.port, job.settings.timeout,
                                  job.ctx.source_address)
    finally:
        slot.release()
    after = _after(job, address, started, started)
    return QUICObservation(kind=PING, address=address, port=job.port, t0=t0, t=job.clock(),
                           versions=got.versions, answered=bool(got.versions),
                           ignored=got.ignored, after_failure_s=after, failure=got.failure,
                           operation="quicping" if got.failure else None)


async def measure_address(job: Job, address: str) -> tuple[QUICObservation, ...]:
    """The ping and the control SNI side by side, then the real name (and its retry)."""
    ctx = job.ctx
    if not ctx.scope.allows(address):
        t = job.clock()
        return (QUICObservation(kind=HANDSHAKE, address=address, port=job.port, t0=t, t=t,
                                sni=job.sni, failure=F.OUT_OF_SCOPE,
                                operation="quic_handshake"),)
    first: list[asyncio.Future[QUICObservation]] = []
    if job.settings.quicping:
        first.append(asyncio.ensure_future(_ping(job, address)))
    name = ctx.control_sni
    if job.settings.control_sni and name and name.lower() != job.sni.lower():
        first.append(asyncio.ensure_future(_handshake(job, address, CONTROL, 1)))
    before = list(await asyncio.gather(*first))
    real = [await _handshake(job, address, HANDSHAKE, 1)]
    if real[0].failure == F.GENERIC_TIMEOUT:
        real.append(await _handshake(job, address, HANDSHAKE, 2))
    return (*before, *real)


def _request_path(url: str | None) -> str:
    """The GET's ``:path``: the URL's path and query (RFC 9114 section 4.3.1), else "/"."""
    if not url:
        return "/"
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _outcome(per_address: list[tuple[QUICObservation, ...]]) -> tuple[str | None, str | None]:
    """None if any address completed a trusted handshake and answered the GET, else the first
    address's (last) handshake failure."""
    finals = [next(o for o in reversed(obs) if o.kind == HANDSHAKE) for obs in per_address]
    if any(o.failure is None for o in finals):
        return None, None
    return finals[0].failure, finals[0].operation


class QUICProbe:
    """Does each address answer QUIC and HTTP/3 for the service's name?"""

    name = "quic"
    version = "1"

    async def observe(self, target: Target, ctx: ProbeContext) -> ProbeResult:
        clock = Clock()
        port = target.port or 443
        sni = target.sni or target.host
        if ctx.proxy:
            obs = QUICObservation(kind=HANDSHAKE, address=target.host, port=port, t0=0.0,
                                  t=0.0, sni=sni, failure=PROXY_UNSUPPORTED,
                                  operation="quic_handshake")
            return ProbeResult((obs,), PROXY_UNSUPPORTED, "quic_handshake")
        found = await ctx.lookup(target.host)
        if found.failure or not found.addresses:
            return ProbeResult(found.observations, found.failure or F.DNS_NO_ANSWER, "resolve")
        settings = ctx.settings.get("quic") or QUICSettings()
        trust, alpn = _trust(ctx, target)
        path = _request_path(target.url)
        job = Job(ctx, settings, sni, port, path, alpn, trust, clock)
        per_address = list(await asyncio.gather(*(measure_address(job, a)
                                                  for a in found.addresses)))
        failure, operation = _outcome(per_address)
        observations: tuple[Observation, ...] = (
            *found.observations, *(o for obs in per_address for o in obs))
        return ProbeResult(observations, failure, operation)


def plan_targets(service: Service, pc: PlanContext) -> list[Target]:
    """Every HTTPS endpoint of the service (its https:// URLs' and its TLS endpoints on 443),
    named by its host, over UDP."""
    https = {(urlsplit(u).hostname or "", urlsplit(u).port or 443) for u in service.urls
             if urlsplit(u).scheme == "https"}
    return [Target(service=service.name, probe="quic", host=h, port=p, sni=h, transport="udp")
            for (h, p), tls in tcp_endpoints(service).items()
            if tls and (p == 443 or (h, p) in https)]
