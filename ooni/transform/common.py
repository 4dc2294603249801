"""The transform every OONI test shares: OONI's network primitives as blockwatch measurements.

OONI's df-002 ``queries``, df-005 ``tcp_connect``, df-006 ``tls_handshakes`` and df-001
``requests`` (``blockwatch.ooni.models.CommonKeys``) become blockwatch DNS, TCP, TLS and HTTP
measurements, in that order, whatever the test. The tests without a file of their own in
``blockwatch.ooni.transform`` are read by this one alone (``TRANSFORM``): whatsapp, telegram,
signal, facebook_messenger, riseupvpn, openvpn, dnscheck, urlgetter, ... hold these keys at the
top of their test keys and differ only in which endpoints they try, so each HTTP request is its
own fetch. Not read: openvpn's single ``tcp_connect`` object (ts-040, not df-005's list), and tor
and vanilla_tor, which hold no such keys at the top (nothing blockwatch can read: the import
counts them as skipped). The other transforms build on the helpers here. Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import ipaddress
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from blockwatch.analysis import CERT_FAILURES
from blockwatch.ooni.models import (
    SCRUBBED_IP,
    BinaryData,
    CommonKeys,
    DNSQuery,
    HTTPResponse,
    HTTPTransaction,
    MaybeBinary,
    OONIMeasurement,
    TCPConnect,
    TLSHandshake,
)
from blockwatch.probes import failures as F
from blockwatch.probes.http import body_sample, extract_title
from blockwatch.probes.model import (
    DNSAnswer,
    DNSObservation,
    DNSResponse,
    HTTPObservation,
    Measurement,
    Observation,
    Run,
    Target,
    TCPObservation,
    TLSObservation,
)
from blockwatch.probes.tls import kept_chain

CONTROL_VANTAGE = "ooni-th"
_NAMESPACE = uuid.UUID("6f0d5c3e-7f7b-4a53-9d8e-0b1f0e1a2c3d")

# OONI's legacy test-helper failure names -> df-007 names blockwatch uses
_FAILURES = {
    "connection_refused_error": F.CONNECTION_REFUSED,
    "connection_reset_error": F.CONNECTION_RESET,
    "dns_name_error": F.DNS_NXDOMAIN,
    "android_dns_cache_no_data": F.DNS_NXDOMAIN,
    "dns_server_failure": F.DNS_SERVFAIL,
    "eof_error": F.EOF_ERROR,
}
_RCODE = {F.DNS_NXDOMAIN: "NXDOMAIN", F.DNS_SERVFAIL: "SERVFAIL", F.DNS_REFUSED: "REFUSED",
          F.DNS_NO_ANSWER: "NOERROR"}


@dataclass(slots=True)
class Imported:
    """One OONI measurement as a blockwatch run (what it is judged on in ``run.inputs``) and
    its measurements."""

    run: Run
    measurements: list[Measurement] = field(default_factory=list)
    ooni_blocking: Any = None


@dataclass(slots=True)
class Ctx:
    """What the measurements of one OONI measurement share; numbers them as they are made."""

    run_id: str
    vantage: str
    service: str
    start: dt.datetime
    probe_ip: str | None
    seq: int = 0

    def measurement(self, target: Target, t: float, observations: tuple[Observation, ...],
                    failure: str | None, operation: str | None, *,
                    vantage: str | None = None, version: str = "ooni") -> Measurement:
        self.seq += 1
        mid = str(uuid.uuid5(_NAMESPACE, f"{self.run_id}/{self.seq}"))
        return Measurement(
            id=mid, run_id=self.run_id, vantage=vantage or self.vantage, target=target,
            probe_version=version, started_at=self.start + dt.timedelta(seconds=max(t, 0.0)),
            runtime_s=0.0, observations=observations, failure=failure,
            failed_operation=operation if failure else None)

    def scrub(self, text: str) -> str:
        """``text`` without the probe's IP address."""
        ip = self.probe_ip
        return text.replace(ip, "[scrubbed]") if ip and ip != SCRUBBED_IP else text


M = TypeVar("M", bound=OONIMeasurement)


@dataclass(frozen=True, slots=True)
class Transform(Generic[M]):
    """How one OONI test becomes blockwatch measurements: the model its records must fit, and
    the function from such a record to measurements, made in order through ``Ctx``."""

    model: type[M]
    measurements: Callable[[Ctx, M], list[Measurement]]


def text_of(value: MaybeBinary | None) -> str:
    """A df-001 MaybeBinaryData as text (undecodable bytes replaced, bad base64 empty)."""
    if isinstance(value, BinaryData):
        try:
            return base64.b64decode(value.data).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            return ""
    return "" if value is None else value


def failure_name(value: str | bool | None) -> str | None:
    """OONI's failure string as blockwatch's (df-007), None for none."""
    if value is None or value == "":
        return None
    text = str(value)  # df-005's old `false` is read as "False", as it always was
    return _FAILURES.get(text, text)


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def seconds(t: float | None) -> float:
    return 0.0 if t is None else t


def split(host_port: str) -> tuple[str, int | None]:
    """"1.2.3.4:443" and "[::1]:443" as host and port; no port if there is no decimal one."""
    host, sep, port = host_port.rpartition(":")
    if sep and port.isdigit():
        try:
            return host.strip("[]"), int(port)
        except ValueError:  # digits int() does not take ("²"), or thousands of them
            pass
    return host_port.strip("[]"), None


# --- df-002 DNS ----------------------------------------------------------------------------------


def _resolver(q: DNSQuery) -> str:
    engine, address = q.engine or "", q.resolver_address or ""
    if engine in ("getaddrinfo", "system", "android_dns_cache_no_data", "go") or not address:
        return "system"
    if engine == "doh" or address.startswith("https://"):
        return address
    if engine == "dot":
        return f"tls://{address}"
    return f"{'tcp' if engine == 'tcp' else 'udp'}://{address}"


def dns_obs(resolver: str, engine: str, host: str, qtype: str, addresses: list[str],
            failure: str | None, t: float, tid: int) -> DNSObservation:
    # bogon answers are facts here too: the analysis decides (blockwatch.analysis.bogons)
    if failure is None and not addresses:
        failure = F.DNS_NO_ANSWER
    rcode = "NOERROR" if failure in (None, F.DNS_BOGON) else _RCODE.get(failure or "")
    answers = tuple(DNSAnswer(rtype="AAAA" if ":" in a else "A", value=a, ttl=0)
                    for a in addresses)
    responses = () if rcode is None else (DNSResponse(t=t, source=resolver, id=tid, flags=0,
                                                      rcode=rcode, answers=answers),)
    return DNSObservation(resolver=resolver, transport=engine or "udp", qname=host, qtype=qtype,
                          t0=t, responses=responses, failure=failure)


def _answers(q: DNSQuery) -> list[str]:
    return [value for a in q.answers or [] if (value := a.ipv4 or a.ipv6) is not None]


def dns_measurements(c: Ctx, queries: list[DNSQuery]) -> Iterator[Measurement]:
    """One measurement per resolver and name, with an observation per A/AAAA query."""
    groups: dict[tuple[str, str], list[DNSQuery]] = {}
    for q in queries:
        if q.hostname:
            groups.setdefault((_resolver(q), q.hostname.lower()), []).append(q)
    for (resolver, host), qs in groups.items():
        obs: list[DNSObservation] = []
        for q in qs:
            addrs, failure = _answers(q), failure_name(q.failure)
            qtype = q.query_type or "A"
            for want in (("A", "AAAA") if qtype == "ANY" else (qtype,)):
                if want not in ("A", "AAAA"):
                    continue
                mine = [a for a in addrs if (":" in a) == (want == "AAAA")]
                if qtype == "ANY" and want == "AAAA" and not mine:
                    continue
                obs.append(dns_obs(resolver, q.engine or "", host, want, mine,
                                   failure if (failure or qtype != "ANY") else None,
                                   seconds(q.t), q.transaction_id or 0))
        a = next((o for o in obs if o.qtype == "A"), None)
        failure = a.failure if a is not None else None
        if a is not None and failure and any(o.addresses for o in obs if o.qtype == "AAAA"):
            failure = None  # the name resolved over IPv6
        yield c.measurement(Target(service=c.service, probe="dns", host=host, resolver=resolver),
                            min(seconds(q.t) for q in qs), tuple(obs), failure, "resolve")


# --- df-005 TCP, df-006 TLS ----------------------------------------------------------------------


def tcp_list(tk: CommonKeys) -> list[TCPConnect]:
    return tk.tcp_connect if isinstance(tk.tcp_connect, list) else []


def tcp_measurements(c: Ctx, entries: list[TCPConnect]) -> Iterator[Measurement]:
    for e in entries:
        if not e.ip or e.port is None:
            continue
        failure = failure_name(e.status.failure if e.status is not None else "unknown")
        t = seconds(e.t)
        obs = TCPObservation(address=e.ip, port=e.port, t0=t, t=t, failure=failure)
        yield c.measurement(Target(service=c.service, probe="tcp", host=obs.address,
                                   port=obs.port), t, (obs,), failure, "connect")


def _certs(entry: TLSHandshake) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(SHA-256 of each certificate, the chain kept as the TLS probe keeps its own)."""
    ders = []
    for cert in entry.peer_certificates or []:
        try:
            ders.append(base64.b64decode(cert.data))
        except (binascii.Error, ValueError):
            continue
    return tuple(hashlib.sha256(d).hexdigest() for d in ders), kept_chain(ders)


def tls_measurements(c: Ctx, entries: list[TLSHandshake]) -> Iterator[Measurement]:
    for e in entries:
        if not e.address:
            continue
        address, port = split(e.address)
        failure = failure_name(e.failure)
        cert_error = failure if failure in CERT_FAILURES else None
        t = seconds(e.t)
        hashes, chain = _certs(e)
        obs = TLSObservation(
            address=address, port=port or 443, sni=e.server_name or None, t0=t, t=t,
            version=e.tls_version or None, cipher=e.cipher_suite or None,
            alpn=e.negotiated_protocol or None, peer_chain_sha256=hashes, peer_chain_der=chain,
            verified=(failure is None and not e.no_tls_verify) if failure is None
            else (False if cert_error else None),
            verify_error=cert_error, failure=failure)
        yield c.measurement(Target(service=c.service, probe="tls", host=address,
                                   port=port or 443, sni=obs.sni), t, (obs,), failure,
                            "tls_handshake")


def primitives(c: Ctx, tk: CommonKeys) -> list[Measurement]:
    """The DNS, TCP and TLS measurements of any test's keys."""
    return [*dns_measurements(c, tk.queries or []), *tcp_measurements(c, tcp_list(tk)),
            *tls_measurements(c, tk.tls_handshakes or [])]


# --- df-001 HTTP ---------------------------------------------------------------------------------


def _http_obs(c: Ctx, url: str, final: HTTPTransaction | None, redirects: tuple[str, ...],
              failure: str | None) -> HTTPObservation:
    response = final.response if final is not None else None
    r = response if response is not None else HTTPResponse()
    body = c.scrub(text_of(r.body)).encode() if r.body else b""
    headers: tuple[tuple[str, str], ...] = ()
    if r.headers_list is not None:
        headers = tuple((text_of(h[0]), c.scrub(text_of(h[1])))
                        for h in r.headers_list if len(h) == 2)
    elif r.headers is not None:
        headers = tuple((k, c.scrub(text_of(v))) for k, v in r.headers.items())
    t = seconds(final.t) if final is not None else 0.0
    return HTTPObservation(
        url=url, t0=t, t=t, status=r.code if r.code is not None and r.code > 0 else None,
        redirects=redirects, headers=headers,
        body_length=len(body) if r.body is not None else None,
        body_sha256=hashlib.sha256(body).hexdigest() if r.present else None,
        body_truncated=bool(r.body_is_truncated),
        title=extract_title(body) if body else None,
        address=split(final.address)[0] if final is not None and final.address else None,
        failure=failure, body_sample=body_sample(body) if body else None)


def _step(found: Iterator[Measurement]) -> tuple[Observation, ...]:
    m = next(found, None)
    return m.observations if m is not None else ()


def _operation(failure: str, tk: CommonKeys, c: Ctx) -> tuple[str, tuple[Observation, ...]]:
    """The step a fetch failed at, and that step's failed observation (TCP or TLS) if any."""
    if failure.startswith("dns_"):
        return "resolve", ()
    for e in tcp_list(tk):
        if e.status is not None and failure_name(e.status.failure) == failure:
            return "connect", _step(tcp_measurements(c, [e]))
    for h in tk.tls_handshakes or []:
        if failure_name(h.failure) == failure:
            return "tls_handshake", _step(tls_measurements(c, [h]))
    return "http_round_trip", ()


def url_of(r: HTTPTransaction) -> str:
    return (r.request.url or "") if r.request is not None else ""


def one_fetch(c: Ctx, tk: CommonKeys, url: str, final: HTTPTransaction | None,
              redirects: tuple[str, ...], failure: str | None) -> Measurement:
    """One HTTP measurement of ``url``, ended by ``final``; a failure at connect or TLS carries
    that step's observation."""
    op, step = _operation(failure, tk, c) if failure else (None, ())
    parts = urlsplit(url)
    target = Target(service=c.service, probe="http", host=(parts.hostname or "").lower(),
                    port=parts.port, url=url)
    has_response = final is not None and final.response is not None
    observations: tuple[Observation, ...] = step if op == "resolve" and not has_response else (
        *step, _http_obs(c, url, final, tuple(r for r in redirects if r), failure))
    return c.measurement(target, seconds(final.t) if final is not None else 0.0, observations,
                         failure, op)


def fetches(c: Ctx, tk: CommonKeys) -> Iterator[Measurement]:
    """Each request its own fetch."""
    for r in tk.requests or []:
        if u := url_of(r):
            yield one_fetch(c, tk, u, r, (), failure_name(r.failure))


def measurements(c: Ctx, m: OONIMeasurement) -> list[Measurement]:
    return [*primitives(c, m.test_keys), *fetches(c, m.test_keys)]


TRANSFORM = Transform(OONIMeasurement, measurements)
