"""The transform shared by every OONI test: OONI's network primitives as blockwatch measurements.

OONI's df-002 ``queries``, df-005 ``tcp_connect``, df-006 ``tls_handshakes`` and df-001
``requests`` become blockwatch DNS, TCP, TLS and HTTP measurements, whatever the test. Tests
without a file of their own in ``blockwatch.ooni.transform`` (whatsapp, telegram, signal,
facebook_messenger, riseupvpn, openvpn, tor, ...) are read by this one: each HTTP request is its
own fetch. Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from blockwatch.analysis import CERT_FAILURES
from blockwatch.ooni.models import SCRUBBED_IP
from blockwatch.probes import failures as F
from blockwatch.probes.dns import is_bogon
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


def text_of(value: Any) -> str:
    """A string field of OONI data, where binary data is ``{"format": "base64", "data": ...}``."""
    if isinstance(value, dict) and value.get("format") == "base64":
        try:
            return base64.b64decode(str(value.get("data", ""))).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            return ""
    return "" if value is None else str(value)


def failure_name(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = str(value)
    return _FAILURES.get(text, text)


def _scrub(text: str, probe_ip: str | None) -> str:
    return text.replace(probe_ip, "[scrubbed]") if probe_ip and probe_ip != SCRUBBED_IP else text


@dataclass(slots=True)
class Ctx:
    record: Mapping[str, Any]
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


def t_of(entry: Mapping[str, Any]) -> float:
    value = entry.get("t", 0.0)
    return float(value) if isinstance(value, int | float) else 0.0


def split(host_port: str) -> tuple[str, int | None]:
    host, sep, port = host_port.rpartition(":")
    if not sep or not port.isdigit():
        return host_port.strip("[]"), None
    return host.strip("[]"), int(port)


def _resolver(q: Mapping[str, Any]) -> str:
    engine, address = str(q.get("engine") or ""), str(q.get("resolver_address") or "")
    if engine in ("getaddrinfo", "system", "android_dns_cache_no_data", "go") or not address:
        return "system"
    if engine == "doh" or address.startswith("https://"):
        return address
    if engine == "dot":
        return f"tls://{address}"
    return f"{'tcp' if engine == 'tcp' else 'udp'}://{address}"


def dns_obs(resolver: str, engine: str, host: str, qtype: str, addresses: list[str],
             failure: str | None, t: float, tid: int) -> DNSObservation:
    if failure is None and addresses and all(_is_bogon(a) for a in addresses):
        failure = F.DNS_BOGON
    if failure is None and not addresses:
        failure = F.DNS_NO_ANSWER
    rcode = "NOERROR" if failure in (None, F.DNS_BOGON) else _RCODE.get(failure or "")
    answers = tuple(DNSAnswer(rtype="AAAA" if ":" in a else "A", value=a, ttl=0)
                    for a in addresses)
    responses = () if rcode is None else (DNSResponse(t=t, source=resolver, id=tid, flags=0,
                                                      rcode=rcode, answers=answers),)
    return DNSObservation(resolver=resolver, transport=engine or "udp", qname=host, qtype=qtype,
                          t0=t, responses=responses, failure=failure)


def _is_bogon(address: str) -> bool:
    try:
        return is_bogon(address)
    except ValueError:
        return False


def _answers(q: Mapping[str, Any]) -> list[str]:
    out = []
    for a in q.get("answers") or []:
        if isinstance(a, dict):
            value = a.get("ipv4") or a.get("ipv6")
            if isinstance(value, str):
                out.append(value)
    return out


def dns_measurements(c: Ctx, queries: list[Any]) -> Iterator[Measurement]:
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for q in queries:
        if isinstance(q, dict) and q.get("hostname"):
            groups.setdefault((_resolver(q), str(q["hostname"]).lower()), []).append(q)
    for (resolver, host), qs in groups.items():
        obs: list[DNSObservation] = []
        for q in qs:
            addrs, failure = _answers(q), failure_name(q.get("failure"))
            qtype = str(q.get("query_type") or "A")
            tid = q.get("transaction_id") if isinstance(q.get("transaction_id"), int) else 0
            for want in (("A", "AAAA") if qtype == "ANY" else (qtype,)):
                if want not in ("A", "AAAA"):
                    continue
                mine = [a for a in addrs if (":" in a) == (want == "AAAA")]
                if qtype == "ANY" and want == "AAAA" and not mine:
                    continue
                obs.append(dns_obs(resolver, str(q.get("engine") or ""), host, want, mine,
                                    failure if (failure or qtype != "ANY") else None, t_of(q),
                                    tid or 0))
        a = next((o for o in obs if o.qtype == "A"), None)
        failure = a.failure if a is not None else None
        if a is not None and failure and any(o.addresses for o in obs if o.qtype == "AAAA"):
            failure = None  # the name resolved over IPv6
        yield c.measurement(Target(service=c.service, probe="dns", host=host, resolver=resolver),
                            min(t_of(q) for q in qs), tuple(obs), failure, "resolve")


def tcp_measurements(c: Ctx, entries: list[Any]) -> Iterator[Measurement]:
    for e in entries:
        if not isinstance(e, dict) or not e.get("ip") or not isinstance(e.get("port"), int):
            continue
        status = e.get("status")
        failure = failure_name(status.get("failure") if isinstance(status, dict) else "unknown")
        obs = TCPObservation(address=str(e["ip"]), port=e["port"], t0=t_of(e), t=t_of(e),
                             failure=failure)
        yield c.measurement(Target(service=c.service, probe="tcp", host=obs.address,
                                   port=obs.port), t_of(e), (obs,), failure, "connect")


def _certs(entry: Mapping[str, Any]) -> tuple[str, ...]:
    out = []
    for cert in entry.get("peer_certificates") or []:
        if isinstance(cert, dict) and cert.get("format") == "base64":
            try:
                out.append(hashlib.sha256(base64.b64decode(str(cert["data"]))).hexdigest())
            except (binascii.Error, KeyError, ValueError):
                continue
    return tuple(out)


def tls_measurements(c: Ctx, entries: list[Any]) -> Iterator[Measurement]:
    for e in entries:
        if not isinstance(e, dict) or not e.get("address"):
            continue
        address, port = split(str(e["address"]))
        failure = failure_name(e.get("failure"))
        cert_error = failure if failure in CERT_FAILURES else None
        obs = TLSObservation(
            address=address, port=port or 443, sni=e.get("server_name") or None, t0=t_of(e),
            t=t_of(e), version=e.get("tls_version") or None, cipher=e.get("cipher_suite") or None,
            alpn=e.get("negotiated_protocol") or None, peer_chain_sha256=_certs(e),
            verified=(failure is None and not e.get("no_tls_verify")) if failure is None
            else (False if cert_error else None),
            verify_error=cert_error, failure=failure)
        yield c.measurement(Target(service=c.service, probe="tls", host=address,
                                   port=port or 443, sni=obs.sni), t_of(e), (obs,), failure,
                            "tls_handshake")


def depth(entry: Mapping[str, Any]) -> int:
    for tag in entry.get("tags") or []:
        if isinstance(tag, str) and tag.startswith("depth="):
            return int(tag[6:]) if tag[6:].isdigit() else 0
    return 0


def http_obs(c: Ctx, url: str, final: Mapping[str, Any] | None, redirects: tuple[str, ...],
              failure: str | None) -> HTTPObservation:
    response = final.get("response") if final else None
    response = response if isinstance(response, dict) else {}
    body_value = response.get("body")
    body = _scrub(text_of(body_value), c.probe_ip).encode() if body_value else b""
    headers: tuple[tuple[str, str], ...] = ()
    if isinstance(response.get("headers_list"), list):
        headers = tuple((text_of(h[0]), _scrub(text_of(h[1]), c.probe_ip))
                        for h in response["headers_list"] if isinstance(h, list) and len(h) == 2)
    elif isinstance(response.get("headers"), dict):
        headers = tuple((str(k), _scrub(text_of(v), c.probe_ip))
                        for k, v in response["headers"].items())
    code = response.get("code")
    address = split(str(final.get("address")))[0] if final and final.get("address") else None
    return HTTPObservation(
        url=url, t0=t_of(final or {}), t=t_of(final or {}),
        status=code if isinstance(code, int) and code > 0 else None, redirects=redirects,
        headers=headers, body_length=len(body) if body_value is not None and response else None,
        body_sha256=hashlib.sha256(body).hexdigest() if response else None,
        body_truncated=bool(response.get("body_is_truncated")),
        title=extract_title(body) if body else None, address=address, failure=failure,
        body_sample=body_sample(body) if body else None)


def _step(found: Iterator[Measurement]) -> tuple[Observation, ...]:
    m = next(found, None)
    return m.observations if m is not None else ()


def _operation(failure: str, tk: Mapping[str, Any],
               c: Ctx) -> tuple[str, tuple[Observation, ...]]:
    """The step a fetch failed at, and that step's failed observation (TCP or TLS) if any."""
    if failure.startswith("dns_"):
        return "resolve", ()
    for e in tk.get("tcp_connect") or []:
        status = e.get("status") if isinstance(e, dict) else None
        if isinstance(status, dict) and failure_name(status.get("failure")) == failure:
            return "connect", _step(tcp_measurements(c, [e]))
    for e in tk.get("tls_handshakes") or []:
        if isinstance(e, dict) and failure_name(e.get("failure")) == failure:
            return "tls_handshake", _step(tls_measurements(c, [e]))
    return "http_round_trip", ()


def url_of(r: Mapping[str, Any]) -> str:
    req = r.get("request")
    return str(req.get("url") or "") if isinstance(req, dict) else ""


def one_fetch(c: Ctx, tk: Mapping[str, Any], url: str, final: Mapping[str, Any] | None,
               redirects: tuple[str, ...], failure: str | None) -> Measurement:
    op, step = _operation(failure, tk, c) if failure else (None, ())
    parts = urlsplit(url)
    target = Target(service=c.service, probe="http", host=(parts.hostname or "").lower(),
                    port=parts.port, url=url)
    has_response = final is not None and isinstance(final.get("response"), dict)
    observations: tuple[Observation, ...] = step if op == "resolve" and not has_response else (
        *step, http_obs(c, url, final, tuple(r for r in redirects if r), failure))
    return c.measurement(target, t_of(final or {}), observations, failure, op)


def fetches(c: Ctx, tk: Mapping[str, Any]) -> Iterator[Measurement]:
    """Each request its own fetch (tests other than web_connectivity)."""
    for r in tk.get("requests") or []:
        if isinstance(r, dict):
            u = url_of(r)
            if u:
                yield one_fetch(c, tk, u, r, (), failure_name(r.get("failure")))


def measurements(c: Ctx, record: Mapping[str, Any]) -> list[Measurement]:
    """A test's DNS, TCP, TLS and HTTP measurements, in that order."""
    tk = record["test_keys"]
    return [*dns_measurements(c, tk.get("queries") or []),
            *tcp_measurements(c, tk.get("tcp_connect") or []),
            *tls_measurements(c, tk.get("tls_handshakes") or []),
            *fetches(c, tk)]
