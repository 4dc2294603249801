"""The TLS handshake probe: what each address presents for a server name, and whether we trust it.

Guarantees:

- Per resolved address: a TCP connect (``TCPObservation``), then a handshake with the SNI under
  ``ctx.timeouts.tls`` (``TLSObservation``). TCP and TLS failures are separate observations, so a
  reset is pinned to the layer it happened at.
- The handshake is verified first. If the certificate is rejected, the facts are still recorded:
  a second connection (its own ``TCPObservation``) completes an unverified handshake, and the
  ``TLSObservation`` carries ``verified=False``, ``verify_error`` and ``failure`` (the same string:
  a certificate we do not trust is a TLS failure, and often interception or a block page).
- The handshake is driven through a memory BIO over the raw stream, so an EOF from the peer
  (``eof_error``) stays distinct from a reset (``connection_reset``); asyncio's own TLS reports
  both as a reset.
- When the handshake itself fails (a reset, an EOF, a timeout, an alert), the same address is
  tried once more with the control SNI (``ctx.control_sni``, default ``example.com``) on a new
  connection, unverified: a ``TLSObservation`` with ``control=True``. If it completes, what was
  filtered was the name (SNI blocking); if it fails too, the address or the server is the matter.
- A handshake that timed out is also made again with the real name, on a new connection, at the
  same time as the control SNI's: under packet loss one segment retransmitted too late (3 s,
  then 6 s after a retransmitted SYN) times a handshake out, and that is not a censor. When the
  second handshake completes, the address counts as working (both are recorded, in order); a
  censor that drops the handshake drops it twice. No time is added: the two run together.
- Facts: protocol version, cipher suite (by IANA's name: ``cipher_suites.py``), ALPN, SHA-256
  of each certificate the peer sent (the leaf alone on Pythons that cannot return the chain),
  the certificates themselves (base64 DER, as OONI's ``peer_certificates``; bounded: the first
  ``MAX_CERTS`` and at most ``MAX_CHAIN_BYTES`` of DER in all, as the server may be hostile),
  and the leaf's subject CN, SANs and notAfter; all read before our close_notify.
- Per service (``ProbeContext.tls_settings``, from the catalogue's or the config's ``tls``
  table): the ALPN offered, and a pinned CA trusted alone for its handshakes (OONI's Signal
  test pins Signal's); such an observation carries the CA file's SHA-256 (``ca_sha256``).
"""

from __future__ import annotations

import _ssl
import asyncio
import base64
import contextlib
import hashlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, replace

from blockwatch.probes.cipher_suites import iana_name
from blockwatch.probes.context import ProbeContext, ProbeResult
from blockwatch.probes.dial import Clock, Dialed, Route, Streams, attempt, close, plan
from blockwatch.probes.errors import ProbeError
from blockwatch.probes.failures import GENERIC_TIMEOUT, classify
from blockwatch.probes.model import Observation, Service, Target, TLSObservation
from blockwatch.probes.targets import PlanContext, tcp_endpoints

ALPN = ("h2", "http/1.1")  # what a browser offers; a censor may look at it
_READ = 16384
# the certificates kept of a chain: a leaf and its intermediates fit (real chains are 2-4
# certificates of 1-2 KB); a hostile server's hundred or its 1 MB certificate do not
MAX_CERTS = 4
MAX_CHAIN_BYTES = 16384


class Session:
    """A client TLS session driven over an asyncio stream pair through memory BIOs."""

    def __init__(self, streams: Streams, context: ssl.SSLContext, sni: str | None) -> None:
        self.streams = streams
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=sni)

    async def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.streams[1].write(data)
            await self.streams[1].drain()

    async def handshake(self) -> None:
        """Complete the handshake; raise what went wrong (ssl, socket or EOF), unwrapped."""
        while True:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                data = await self.streams[0].read(_READ)
                if data:
                    self.incoming.write(data)
                else:
                    self.incoming.write_eof()
                continue
            except ssl.SSLError:
                # send our alert (e.g. bad certificate) so the server sees why we left
                with contextlib.suppress(OSError):
                    await self._flush()
                raise
            await self._flush()
            return

    def close_notify(self) -> None:
        """Send close_notify without waiting for the server's: politeness, not a measurement."""
        with contextlib.suppress(ssl.SSLError):
            self.tls.unwrap()
        data = self.outgoing.read()
        if data:
            self.streams[1].write(data)


def _peer_chain(tls: ssl.SSLObject) -> list[bytes]:
    """DER of each certificate the peer sent, leaf first (the leaf alone if Python can't tell)."""
    getter = getattr(tls, "get_unverified_chain", None)  # public from Python 3.13
    if getter is None:
        getter = getattr(getattr(tls, "_sslobj", None), "get_unverified_chain", None)
    chain = None
    if getter is not None:
        with contextlib.suppress(Exception):  # a private API: never let it fail the probe
            chain = getter()
    if chain:
        return [c if isinstance(c, bytes) else c.public_bytes(_ssl.ENCODING_DER) for c in chain]
    leaf = tls.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def kept_chain(chain: list[bytes]) -> tuple[str, ...]:
    """The chain's first certificates as base64 DER, within ``MAX_CERTS`` and
    ``MAX_CHAIN_BYTES`` (a certificate that would pass the byte bound ends the list)."""
    out: list[str] = []
    total = 0
    for der in chain[:MAX_CERTS]:
        total += len(der)
        if total > MAX_CHAIN_BYTES:
            break
        out.append(base64.b64encode(der).decode("ascii"))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Leaf:
    subject: str | None = None
    sans: tuple[str, ...] = ()
    not_after: str | None = None


def describe(der: bytes) -> Leaf:
    """Subject CN (or the whole subject without one), SANs and notAfter of a certificate.
    (cryptography is imported here, at the first certificate: planning a sweep imports this
    module, and a sweep of plain-HTTP URLs never parses one.)"""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return Leaf()
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    subject = str(names[0].value) if names else (cert.subject.rfc4514_string() or None)
    sans: list[str] = []
    with contextlib.suppress(x509.ExtensionNotFound, ValueError):
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [*ext.get_values_for_type(x509.DNSName),
                *(str(ip) for ip in ext.get_values_for_type(x509.IPAddress))]
    return Leaf(subject, tuple(sans), cert.not_valid_after_utc.isoformat())


def facts(base: TLSObservation, tls: ssl.SSLObject) -> TLSObservation:
    chain = _peer_chain(tls)
    leaf = describe(chain[0]) if chain else Leaf()
    cipher = tls.cipher()
    return replace(
        base,
        version=tls.version(),
        cipher=iana_name(cipher[0]) if cipher else None,
        alpn=tls.selected_alpn_protocol(),
        peer_chain_sha256=tuple(hashlib.sha256(der).hexdigest() for der in chain),
        peer_chain_der=kept_chain(chain),
        cert_subject=leaf.subject,
        cert_sans=leaf.sans,
        cert_not_after=leaf.not_after,
    )


@dataclass(frozen=True, slots=True)
class Profile:
    """How one target's handshakes are made: the ALPN offered and the CA trusted (a service's
    ``TLSSettings``, else h2/http1.1 and the system store); ``ca_sha256`` names a pinned CA."""

    alpn: tuple[str, ...] = ALPN
    cafile: str | None = None
    ca_sha256: str | None = None


DEFAULT = Profile()


def profile(ctx: ProbeContext, target: Target) -> Profile:
    """The target's service's TLS settings as a handshake profile (read once per sweep)."""
    settings = ctx.tls_settings.get(target.service)
    if settings is None:
        return DEFAULT
    key = f"tls_profile:{target.service}"
    found = ctx.cache.get(key)
    if found is None:
        digest = None
        if settings.ca_file:
            with open(settings.ca_file, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
        found = ctx.cache[key] = Profile(settings.alpn or ALPN, settings.ca_file, digest)
    return found


def _context(ctx: ProbeContext, verify: bool, prof: Profile = DEFAULT) -> ssl.SSLContext:
    return ctx.ssl_context(verify=verify, alpn=prof.alpn, cafile=prof.cafile if verify else None)


async def _try(
    ctx: ProbeContext, streams: Streams, sni: str | None, verify: bool, base: TLSObservation,
    clock: Callable[[], float], prof: Profile = DEFAULT,
) -> TLSObservation:
    """One handshake; its facts (``base`` with ``t`` now) are read before our close_notify:
    a server that already sent data (HTTP/2's SETTINGS right after the handshake) makes
    OpenSSL's shutdown fail, and the object then reports no version."""
    session = Session(streams, _context(ctx, verify, prof), sni)
    async with asyncio.timeout(ctx.timeouts.tls):
        await session.handshake()
    observed = facts(replace(base, t=clock()), session.tls)
    session.close_notify()
    return observed


_EXPECTED = (OSError, ValueError, ProbeError)  # ssl.SSLError and TimeoutError are OSErrors


async def _unverified_facts(
    ctx: ProbeContext, route: Route, sni: str | None, clock: Clock, base: TLSObservation,
    prof: Profile = DEFAULT,
) -> tuple[Dialed, TLSObservation]:
    """After a rejected certificate: connect again and look at it without verifying."""
    again = await attempt(ctx, route, clock, streams=True)
    if again.streams is None:
        return again, base
    try:
        return again, await _try(ctx, again.streams, sni, False, base, lambda: base.t, prof)
    except _EXPECTED:
        return again, base
    finally:
        await close(again)


@dataclass(frozen=True, slots=True)
class AddressOutcome:
    """What one address showed: its observations, its connection, its handshake (if any)."""

    observations: tuple[Observation, ...]
    tcp: Dialed
    tls: TLSObservation | None


async def control_sni(ctx: ProbeContext, route: Route, sni: str | None, clock: Clock
                      ) -> tuple[Observation, ...]:
    """After the real name failed: the same address, a new connection, the harmless control
    name, unverified (``TLSObservation.control``). SNI filtering lets it through; a dead server
    or a blocked address does not. Nothing is tried when no control name is configured."""
    name = ctx.control_sni
    if not name or (sni or "").lower() == name.lower():
        return ()
    again = await attempt(ctx, route, clock, streams=True)
    if again.streams is None:
        return (again.observation,)
    base = TLSObservation(address=route.address, port=route.port, sni=name, t0=clock(), t=0.0,
                          control=True)
    try:
        observed = await _try(ctx, again.streams, name, False, base, clock)
    except _EXPECTED as exc:
        observed = replace(base, t=clock(), failure=classify(exc))
    finally:
        await close(again)
    return (again.observation, observed)


async def _verified(ctx: ProbeContext, route: Route, sni: str | None, clock: Clock,
                    prof: Profile) -> tuple[Dialed, TLSObservation | None, str | None]:
    """One TCP connect and one verified handshake: (the connection, the handshake's observation
    if it got that far, the certificate error if the certificate was rejected)."""
    tcp = await attempt(ctx, route, clock, streams=True)
    if tcp.streams is None:
        return tcp, None, None
    base = TLSObservation(address=route.address, port=route.port, sni=sni, t0=clock(), t=0.0,
                          ca_sha256=prof.ca_sha256)
    try:
        observed = await _try(ctx, tcp.streams, sni, True, replace(base, verified=True), clock,
                              prof)
    except ssl.SSLCertVerificationError as exc:
        error = classify(exc)
        return tcp, replace(base, t=clock(), verified=False, verify_error=error,
                            failure=error), error
    except _EXPECTED as exc:
        return tcp, replace(base, t=clock(), failure=classify(exc)), None
    else:
        return tcp, observed, None
    finally:
        await close(tcp)


async def _confirm(ctx: ProbeContext, route: Route, sni: str | None, clock: Clock,
                   prof: Profile) -> tuple[Observation, ...]:
    """A handshake that timed out, made once more on a new connection: a lost segment whose
    retransmission came too late (after a retransmitted SYN the kernel waits 3 s, then 6 s)
    is not a censor. Its observations follow the first attempt's."""
    tcp, observed, _ = await _verified(ctx, route, sni, clock, prof)
    return (tcp.observation,) if observed is None else (tcp.observation, observed)


async def handshakes(ctx: ProbeContext, route: Route, sni: str | None, clock: Clock,
                     prof: Profile = DEFAULT) -> AddressOutcome:
    """TCP connect, then a verified handshake (and an unverified one if the cert is rejected,
    or one with the control SNI if the handshake itself failed; a timed-out one is also made
    again with the real name, at the same time as the control SNI's)."""
    tcp, observed, error = await _verified(ctx, route, sni, clock, prof)
    if observed is None or observed.failure is None:
        return AddressOutcome(tuple(o for o in (tcp.observation, observed) if o), tcp, observed)
    if error is None:
        if observed.failure != GENERIC_TIMEOUT:
            extra = await control_sni(ctx, route, sni, clock)
            return AddressOutcome((tcp.observation, observed, *extra), tcp, observed)
        again, extra = await asyncio.gather(_confirm(ctx, route, sni, clock, prof),
                                            control_sni(ctx, route, sni, clock))
        counted = again[-1] if isinstance(again[-1], TLSObservation) else observed
        return AddressOutcome((tcp.observation, observed, *again, *extra), tcp, counted)
    retry, observed = await _unverified_facts(ctx, route, sni, clock, observed, prof)
    return AddressOutcome((tcp.observation, retry.observation, observed), tcp, observed)


def _outcome(attempts: list[AddressOutcome]) -> tuple[str | None, str | None]:
    if any(a.tls is not None and a.tls.verified for a in attempts):
        return None, None
    first = attempts[0]
    if first.tls is None:
        return first.tcp.observation.failure, first.tcp.operation
    return first.tls.failure, "tls_handshake"


class TLSProbe:
    """Does each address complete a trusted handshake for the server name?"""

    name = "tls"
    version = "5"  # 2: per-service ALPN and pinned CA (TLSSettings); 3: a timed-out handshake
    # is made again (packet loss is not a censor); 4: the version recorded whatever the server
    # sent after its handshake, cipher suites by their IANA names, the control SNI's ``t``;
    # 5: the peer's certificates themselves (``peer_chain_der``, bounded)

    async def observe(self, target: Target, ctx: ProbeContext) -> ProbeResult:
        clock = Clock()
        sni = target.sni or target.host
        found = await plan(target.host, target.port or 443, ctx)
        if not found.routes:
            return ProbeResult(found.dns, found.failure, found.operation)
        prof = profile(ctx, target)
        attempts = list(await asyncio.gather(*(handshakes(ctx, r, sni, clock, prof)
                                               for r in found.routes)))
        failure, operation = _outcome(attempts)
        observations = (*found.dns, *(o for a in attempts for o in a.observations))
        return ProbeResult(observations, failure, operation)


def plan_targets(service: Service, pc: PlanContext) -> list[Target]:
    """Every TCP endpoint of the service that speaks TLS, with its host as the SNI."""
    return [Target(service=service.name, probe="tls", host=h, port=p, sni=h)
            for (h, p), tls in tcp_endpoints(service).items() if tls]
