"""The Encrypted Client Hello probe ``ech``: is a ClientHello carrying ECH answered where one
without it is?

Censors block ECH apart from the names it hides: Russia has reset Cloudflare's ECH hellos
since 2024-11-05 while the same address answers hellos without ECH. For each TLS endpoint
(address) of a service this probe sends, in a random order, each on its own TCP connection:

* ``plain``: a TLS 1.3 ClientHello naming the service (SNI), without ECH;
* ``grease``: the same with a GREASE ECH extension (RFC 9849 section 6.2), as browsers send
  to every server that publishes no ECH config;
* ``real`` (when the service's HTTPS record publishes an ``ech=`` config and
  ``[probe.ech] real_config`` is on): an outer ClientHello naming the config's public name and
  carrying the config's id and HPKE suite, as a browser using ECH sends it (its encrypted
  inner hello is random bytes: the question is whether the hello is answered).

The hellos and the reply reading are in ``probes.ech_hello`` (scapy builds every hello, in one
worker process, ``probes.ech_build``: importing scapy's TLS layers takes seconds and a build
10-20 ms of CPU, which on the event loop would hold up every other probe's timing).

Guarantees:

- The HTTPS (type 65) record of the name is asked at the sweep's lookup resolver through the
  sweep's shared queries (the DNS probe's path, asked once per name per sweep), in parallel
  with the A/AAAA lookup; its first well-formed answer is recorded (the ``DNSObservation``, and
  one ``https_record`` observation per record: ALPN, ports, address hints, whether it carries
  an ECH config and the configs' ids and public names). A record or config that does not
  parse is recorded as such (``ech_error``) and never stops the probe. Nothing is asked
  through a proxy (the proxy resolves names) or for an IP literal.
- Every connection goes through ``probes.dial`` (the scope, our limits, the source address).
- A reply is read within bounds (``ech_hello.read_reply``): one TLS record at most, one
  deadline. A ServerHello, a HelloRetryRequest or a TLS alert is the server answering; a reset
  (``connection_reset``), silence (``generic_timeout_error``), an EOF (``eof_error``) and bytes
  that are not TLS (``tls_malformed_reply``) are not.
- A hello that timed out is sent once more on a new connection (``attempt`` 2), after the
  address's three (a connect that timed out: at once): one lost segment is not a censor. The
  second attempt counts.
- An address whose connection failed (after that) gets no further hellos: nothing there can
  speak to ECH.
- The measurement fails (operation ``ech_hello``) when, on every address where the plain hello
  was answered, some ECH hello was not; when no plain hello was answered it fails as the plain
  hello did (``connect`` when no connection opened, else ``tls_handshake``): whether that is
  blocking is the tls and tcp probes' question. The verdict is ``blockwatch.analysis.ech``'s.
"""

from __future__ import annotations

import asyncio
import random
import time
from concurrent.futures import BrokenExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import dns.exception
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.svcbbase as svcb
from pydantic import BaseModel, ConfigDict, Field

from blockwatch.probes import pacing
from blockwatch.probes.context import ProbeContext, ProbeResult
from blockwatch.probes.dial import Clock, Route, attempt, close, plan
from blockwatch.probes.ech_build import build
from blockwatch.probes.ech_hello import (
    ANSWERED,
    ECHConfig,
    Reply,
    grease_extension,
    parse_ech_configs,
    read_reply,
    real_extension,
)
from blockwatch.probes.errors import MalformedReply
from blockwatch.probes.failures import GENERIC_TIMEOUT, classify, unknown
from blockwatch.probes.model import (
    DNSObservation,
    Observation,
    ProbeObservation,
    Service,
    Target,
)
from blockwatch.probes.scope import is_ip
from blockwatch.probes.targets import PlanContext, tcp_endpoints

OPERATION = "ech_hello"
NOT_BUILT = "not_built"  # outcome: the ClientHello could not be built, nothing was sent


class ECHSettings(BaseModel):
    """``[probe.ech]``: the reply timeout (None: ``[timeouts] tls``) and whether the service's
    own ECH config is sent when its HTTPS record publishes one."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    timeout: float | None = Field(default=None, gt=0, le=60)
    real_config: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class ECHObservation(ProbeObservation):
    """One ClientHello and its reply (``kind`` ``hello``), or one HTTPS record of the name
    (``kind`` ``https_record``). Facts only."""

    layer: str = field(default="ech", init=False)
    kind: str
    t0: float
    t: float
    failure: str | None = None
    # kind hello
    address: str | None = None
    port: int | None = None
    sni: str | None = None
    variant: str | None = None  # plain, grease or real
    order: int | None = None  # its place (1-3) in this address's random order
    attempt: int = 1  # 2: sent again after a timeout
    outcome: str | None = None  # ech_hello.Reply.outcome, connect_failed or not_built
    alert: int | None = None
    config_id: int | None = None  # the ECH config id sent (grease: a random one)
    detail: str | None = None
    # kind https_record
    qname: str | None = None
    priority: int | None = None
    target: str | None = None
    alpn: tuple[str, ...] = ()
    record_port: int | None = None
    ipv4hint: tuple[str, ...] = ()
    ipv6hint: tuple[str, ...] = ()
    ech_config: bool = False
    ech_config_ids: tuple[int, ...] = ()
    ech_public_names: tuple[str, ...] = ()
    ech_error: str | None = None

    @property
    def answered(self) -> bool:
        return self.outcome in ANSWERED


@dataclass(frozen=True, slots=True)
class _Hello:
    variant: str
    sni: str | None
    ech: bytes | None
    config_id: int | None


def _hellos(sni: str | None, config: ECHConfig | None, real: bool) -> list[_Hello]:
    grease = grease_extension()
    out = [_Hello("plain", sni, None, None), _Hello("grease", sni, grease, grease[5])]
    if config is not None and real:
        out.append(_Hello("real", config.public_name, real_extension(config), config.config_id))
    random.shuffle(out)
    return out


async def _send(ctx: ProbeContext, route: Route, hello: _Hello, order: int, tries: int,
                clock: Clock, seconds: float) -> tuple[Observation, ...]:
    base = ECHObservation(kind="hello", t0=clock(), t=0.0, address=route.address,
                          port=route.port, sni=hello.sni, variant=hello.variant, order=order,
                          attempt=tries, config_id=hello.config_id)
    try:  # built before connecting, in the worker: scapy's import (seconds) and each build
        # (10-20 ms) would otherwise stop the event loop, and every other probe's clock
        record = await build(ctx, hello.sni, hello.ech)
    except (ValueError, TimeoutError, BrokenExecutor, RuntimeError) as exc:  # nothing is
        # sent: a name IDNA cannot encode, a builder that hung or died twice (ours)
        return (replace(base, t=clock(), outcome=NOT_BUILT,
                        failure=unknown(f"ClientHello not built: {type(exc).__name__}")),)
    dialed = await attempt(ctx, route, clock, streams=True)
    base = replace(base, t0=clock())
    if dialed.streams is None:
        failed = replace(base, t=clock(), outcome="connect_failed",
                         failure=dialed.observation.failure)
        return dialed.observation, failed
    try:
        reader, writer = dialed.streams
        try:
            writer.write(record)
            async with asyncio.timeout(seconds):
                await writer.drain()
            reply = await read_reply(reader, seconds)
        except (OSError, TimeoutError) as exc:
            reply = Reply("error", classify(exc))
    finally:
        await close(dialed)
    return dialed.observation, replace(base, t=clock(), outcome=reply.outcome,
                                       failure=reply.failure, alert=reply.alert,
                                       detail=reply.detail)


async def _address(ctx: ProbeContext, route: Route, sni: str | None, config: ECHConfig | None,
                   settings: ECHSettings, clock: Clock) -> tuple[Observation, ...]:
    """The address's hellos in a random order, then the timed-out ones once more. An address
    that refuses a connection gets no further hellos: no hello can speak to ECH there."""
    timeout = settings.timeout or ctx.timeouts.tls
    hellos = _hellos(sni, config, settings.real_config)
    out: list[Observation] = []
    again: list[tuple[int, _Hello]] = []
    for order, hello in enumerate(hellos, 1):
        got = await _send(ctx, route, hello, order, 1, clock, timeout)
        if _connect_failed(got[-1]) and got[-1].failure == GENERIC_TIMEOUT:
            out.extend(got)  # a lost SYN: the same hello once more, at once
            got = await _send(ctx, route, hello, order, 2, clock, timeout)
        out.extend(got)
        if _connect_failed(got[-1]):
            break
        if got[-1].failure == GENERIC_TIMEOUT:
            again.append((order, hello))
    retried = await asyncio.gather(*(_send(ctx, route, h, order, 2, clock, timeout)
                                     for order, h in again))
    return (*out, *(o for got in retried for o in got))


def _connect_failed(o: Observation) -> bool:
    return isinstance(o, ECHObservation) and o.outcome == "connect_failed"


def counted(hellos: list[ECHObservation]) -> dict[str, dict[str, ECHObservation]]:
    """address -> variant -> the hello that counts (the last attempt)."""
    out: dict[str, dict[str, ECHObservation]] = {}
    for o in hellos:
        if o.kind == "hello" and o.address is not None and o.variant is not None:
            out.setdefault(o.address, {})[o.variant] = o
    return out


def outcome(observations: tuple[Observation, ...]) -> tuple[str | None, str | None]:
    """The measurement's failure and operation (see the module's guarantees). A hello that
    was never built (so never sent) fails it at ``probe``: our own failure, judged as such
    (``probe.bug``), never a hello the network did not answer."""
    by_address = counted([o for o in observations if isinstance(o, ECHObservation)])
    unbuilt = [o for v in by_address.values() for o in v.values() if o.outcome == NOT_BUILT]
    if unbuilt:
        return unbuilt[0].failure, "probe"
    plain_ok = {a: v for a, v in by_address.items() if "plain" in v and v["plain"].answered}
    if plain_ok:
        if any(all(o.answered for o in v.values()) for v in plain_ok.values()):
            return None, None
        first = next(o for v in plain_ok.values() for o in v.values() if not o.answered)
        return first.failure, OPERATION
    failed = [o for v in by_address.values() for o in v.values() if not o.answered]
    if not failed:
        return None, None
    plain = next((o for o in failed if o.variant == "plain"), failed[0])
    connect = all(o.outcome == "connect_failed" for o in failed)
    return plain.failure, "connect" if connect else "tls_handshake"


# --- the HTTPS record ---------------------------------------------------------------------------

MAX_RECORDS = 16
NO_USABLE_CONFIG = ("ECHConfigList: no config a client can use (another version, a public name "
                    "that is no host name, a mandatory extension)")
MAX_HINTS = 16
_Records = tuple[tuple[DNSObservation, ...], tuple[ECHObservation, ...], ECHConfig | None]


def https_qname(host: str, port: int) -> str:
    """The name of the HTTPS record for ``host:port`` (RFC 9460 section 9.1)."""
    return host if port == 443 else f"_{port}._https.{host}"


def read_record(qname: str, text: str, t0: float, t: float
                ) -> tuple[ECHObservation, list[ECHConfig]]:
    """One HTTPS record (dnspython's text of it, as the DNS observation keeps it) summarised,
    and its ECH configs. Never raises: what does not parse is said in ``ech_error``."""
    base = ECHObservation(kind="https_record", t0=t0, t=t, qname=qname)
    try:
        rd: Any = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.HTTPS, text)
    except (dns.exception.DNSException, ValueError) as exc:
        return replace(base, ech_error=f"record does not parse: {type(exc).__name__}"), []
    params = rd.params
    alpn = params.get(svcb.ParamKey.ALPN)
    port = params.get(svcb.ParamKey.PORT)
    v4, v6 = params.get(svcb.ParamKey.IPV4HINT), params.get(svcb.ParamKey.IPV6HINT)
    obs = replace(base, priority=rd.priority, target=rd.target.to_text(),
                  alpn=tuple(a.decode("ascii", "replace") for a in alpn.ids)[:MAX_HINTS]
                  if alpn else (),
                  record_port=port.port if port else None,
                  ipv4hint=tuple(str(a) for a in v4.addresses)[:MAX_HINTS] if v4 else (),
                  ipv6hint=tuple(str(a) for a in v6.addresses)[:MAX_HINTS] if v6 else ())
    ech = params.get(svcb.ParamKey.ECH)
    if ech is None:
        return obs, []
    try:
        configs = parse_ech_configs(ech.ech)
    except MalformedReply as exc:
        return replace(obs, ech_config=True, ech_error=str(exc)[:200]), []
    if not configs:
        return replace(obs, ech_config=True, ech_error=NO_USABLE_CONFIG), []
    return replace(obs, ech_config=True,
                   ech_config_ids=tuple(c.config_id for c in configs),
                   ech_public_names=tuple(c.public_name for c in configs)), configs


async def https_records(ctx: ProbeContext, host: str, port: int) -> _Records:
    """The name's HTTPS records at the sweep's lookup resolver (its first well-formed answer,
    from the sweep's shared queries), summarised, and the first ECH config they publish."""
    from blockwatch.probes.dns import _credit, _first

    qname = https_qname(host, port)
    query = ctx.resolutions.get(ctx.lookup_resolver, qname, "HTTPS")
    with pacing.waiting(record=False):
        found = await _first(query)
    _credit(query)
    answers = next((r.answers for r in found.responses if r.malformed is None), ())
    t = round(time.time() - found.t0, 6)
    summaries: list[ECHObservation] = []
    config: ECHConfig | None = None
    for answer in [a for a in answers if a.rtype == "HTTPS"][:MAX_RECORDS]:
        obs, configs = read_record(qname, answer.value, 0.0, t)
        summaries.append(obs)
        if config is None and configs:
            config = configs[0]
    return (found,), tuple(summaries), config


class ECHProbe:
    """Is a ClientHello carrying ECH answered where one without it is?"""

    name = "ech"
    version = "1"

    async def observe(self, target: Target, ctx: ProbeContext) -> ProbeResult:
        settings = ctx.settings.get("ech") or ECHSettings()
        clock = Clock()
        # an address is no server name (RFC 6066 3): an endpoint given as one is greeted
        # without SNI
        sni = target.sni or (None if is_ip(target.host) else target.host)
        port = target.port or 443
        ask = not ctx.proxy and not is_ip(target.host) and target.host not in ctx.static_lookups
        found, records = await asyncio.gather(
            plan(target.host, port, ctx),
            https_records(ctx, target.host, port) if ask else _nothing())
        dns_obs, summaries, config = records
        if not found.routes:
            return ProbeResult((*found.dns, *dns_obs, *summaries), found.failure,
                               found.operation)
        hellos = await asyncio.gather(*(_address(ctx, r, sni, config, settings, clock)
                                        for r in found.routes))
        observations = (*found.dns, *dns_obs, *summaries, *(o for h in hellos for o in h))
        failure, operation = outcome(observations)
        return ProbeResult(observations, failure, operation)


async def _nothing() -> _Records:
    return (), (), None


def plan_targets(service: Service, pc: PlanContext) -> list[Target]:
    """Every TCP endpoint of the service that speaks TLS, with its host as the SNI (none for
    an address)."""
    targets = [Target(service=service.name, probe="ech", host=h, port=p,
                      sni=None if is_ip(h) else h)
               for (h, p), tls in tcp_endpoints(service).items() if tls]
    return targets


