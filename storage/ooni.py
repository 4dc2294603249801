"""OONI measurements <-> blockwatch: reading OONI files, mapping records, writing OONI's format.

Reading (``read_records``): a ``.json`` file holds one measurement, a ``.jsonl`` file one per
line, either may be gzip-compressed (``.gz``); a directory is read file by file in name order.
Records are streamed: memory is bounded by the largest single record (``MAX_RECORD_BYTES``), and
a record that is not JSON, not an object, too large, or lacks what a measurement needs is
skipped and counted with its reason (``Skip``), never a traceback. A truncated gzip stream ends
its file with one counted skip.

Mapping (``from_ooni``): OONI's network primitives (``queries``, ``tcp_connect``,
``tls_handshakes``, ``requests``) become blockwatch DNS, TCP, TLS and HTTP measurements of one
run per OONI measurement, whatever the test (web_connectivity, whatsapp, telegram, signal,
openvpn, riseupvpn, ...). web_connectivity's test-helper answers (``test_keys.control``) become
measurements of the control vantage ``ooni-th``, and DoH/DoT queries are control resolvers, so
blockwatch's own rules judge the data. The vantage is OONI's (``probe_cc``, ``probe_asn``);
``probe_ip`` is never kept and is scrubbed from stored text. Pure functions, no I/O.

Writing (``write_ooni``): one OONI df-000 envelope per exported measurement, with blockwatch's
observations as OONI ``test_keys`` (df-002 queries, df-005 tcp_connect, df-006 tls_handshakes,
df-001 requests) and ``probe_ip`` "127.0.0.1" (OONI's own scrubbed value).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import gzip
import hashlib
import json
import re
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, TextIO, cast
from urllib.parse import urlsplit

from blockwatch.analysis import CERT_FAILURES, AnalysisInputs, judge_run
from blockwatch.analysis.fingerprints import FingerprintSet
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
    RunInputs,
    Service,
    Target,
    TCPObservation,
    TLSObservation,
    Verdict,
)

MAX_RECORD_BYTES = 64 * 1024 * 1024  # a web_connectivity record with bodies is < 2 MiB
CONTROL_VANTAGE = "ooni-th"
IMPORT_GROUP = "ooni-import"
SCRUBBED_IP = "127.0.0.1"  # what OONI itself publishes as probe_ip
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


class OONIError(ValueError):
    """A record is not an OONI measurement blockwatch can read; the message says why."""


# --- reading files ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Skip:
    """A record that was not imported: where it was and why."""

    where: str
    reason: str


def _open(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return cast(IO[bytes], gzip.GzipFile(path, "rb"))
    return path.open("rb")


def _lines(fh: IO[bytes], where: str) -> Iterator[tuple[str, bytes | Skip]]:
    """Lines of at most ``MAX_RECORD_BYTES``; a longer one is skipped without being held."""
    n = 0
    while True:
        n += 1
        line = fh.readline(MAX_RECORD_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
            while (rest := fh.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield f"{where}:{n}", Skip(f"{where}:{n}",
                                       f"record larger than {MAX_RECORD_BYTES} bytes")
            continue
        if line.strip():
            yield f"{where}:{n}", line


def _decode(raw: bytes, where: str) -> Record | Skip:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return Skip(where, f"not JSON ({str(exc)[:80]})")
    if not isinstance(data, dict):
        return Skip(where, f"not a measurement object ({type(data).__name__})")
    return where, data


Record = tuple[str, dict[str, Any]]  # where it was read (file[:line]), the record


def _read_file(path: Path) -> Iterator[Record | Skip]:
    where = str(path)
    name = path.name.removesuffix(".gz")
    try:
        with _open(path) as fh:
            if name.endswith(".jsonl"):
                for at, line in _lines(fh, where):
                    yield line if isinstance(line, Skip) else _decode(line, at)
                return
            raw = fh.read(MAX_RECORD_BYTES + 1)
            if len(raw) > MAX_RECORD_BYTES:
                yield Skip(where, f"a .json file holds one measurement of at most "
                                  f"{MAX_RECORD_BYTES} bytes; use JSON lines (.jsonl)")
                return
            yield _decode(raw, where)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        yield Skip(where, f"truncated or corrupt gzip ({exc})")
    except OSError as exc:
        yield Skip(where, f"cannot read: {exc.strerror or exc}")


def read_records(paths: Iterable[str | Path]) -> Iterator[Record | Skip]:
    """Every record of the files (directories: their .json/.jsonl[.gz] files, sorted)."""
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and re.search(
                r"\.jsonl?(\.gz)?$", f.name))
            if not files:
                yield Skip(str(p), "no .json or .jsonl file in this directory")
            for f in files:
                yield from _read_file(f)
        elif not p.exists():
            yield Skip(str(p), "no such file or directory")
        else:
            yield from _read_file(p)


# --- mapping one OONI measurement ----------------------------------------------------------------


@dataclass(slots=True)
class Imported:
    """One OONI measurement as a blockwatch run (what it is judged on in ``run.inputs``) and
    its measurements."""

    run: Run
    measurements: list[Measurement] = field(default_factory=list)
    ooni_blocking: Any = None


def _text(value: Any) -> str:
    """A string field of OONI data, where binary data is ``{"format": "base64", "data": ...}``."""
    if isinstance(value, dict) and value.get("format") == "base64":
        try:
            return base64.b64decode(str(value.get("data", ""))).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            return ""
    return "" if value is None else str(value)


def _failure(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = str(value)
    return _FAILURES.get(text, text)


def _start(record: Mapping[str, Any]) -> dt.datetime:
    text = record.get("measurement_start_time")
    if not isinstance(text, str):
        raise OONIError("no measurement_start_time")
    try:
        return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC)
    except ValueError:
        raise OONIError(f"measurement_start_time {text[:40]!r} is not 'YYYY-MM-DD HH:MM:SS'") \
            from None


def _asn(text: Any) -> int | None:
    match = re.fullmatch(r"AS(\d+)", str(text or ""))
    return int(match.group(1)) or None if match else None


def run_id_for(record: Mapping[str, Any], start: dt.datetime) -> str:
    """A UUIDv7-shaped id: time-ordered like blockwatch's, and the same for the same OONI
    measurement (its ``measurement_uid``, else its whole content), so importing a file twice
    finds the first import."""
    uid = record.get("measurement_uid")
    identity = str(uid) if uid else json.dumps(record, sort_keys=True, default=str)
    digest = hashlib.sha256(identity.encode()).digest()
    ms = int(start.timestamp() * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(digest[:10], "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 64) & 0xFFF) << 64 | (0b10 << 62) | (
        rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def _scrub(text: str, probe_ip: str | None) -> str:
    return text.replace(probe_ip, "[scrubbed]") if probe_ip and probe_ip != SCRUBBED_IP else text


@dataclass(slots=True)
class _Ctx:
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


def _t(entry: Mapping[str, Any]) -> float:
    value = entry.get("t", 0.0)
    return float(value) if isinstance(value, int | float) else 0.0


def _split(host_port: str) -> tuple[str, int | None]:
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


def _dns_obs(resolver: str, engine: str, host: str, qtype: str, addresses: list[str],
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


def _dns_measurements(c: _Ctx, queries: list[Any]) -> Iterator[Measurement]:
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for q in queries:
        if isinstance(q, dict) and q.get("hostname"):
            groups.setdefault((_resolver(q), str(q["hostname"]).lower()), []).append(q)
    for (resolver, host), qs in groups.items():
        obs: list[DNSObservation] = []
        for q in qs:
            addrs, failure = _answers(q), _failure(q.get("failure"))
            qtype = str(q.get("query_type") or "A")
            tid = q.get("transaction_id") if isinstance(q.get("transaction_id"), int) else 0
            for want in (("A", "AAAA") if qtype == "ANY" else (qtype,)):
                if want not in ("A", "AAAA"):
                    continue
                mine = [a for a in addrs if (":" in a) == (want == "AAAA")]
                if qtype == "ANY" and want == "AAAA" and not mine:
                    continue
                obs.append(_dns_obs(resolver, str(q.get("engine") or ""), host, want, mine,
                                    failure if (failure or qtype != "ANY") else None, _t(q),
                                    tid or 0))
        a = next((o for o in obs if o.qtype == "A"), None)
        failure = a.failure if a is not None else None
        if a is not None and failure and any(o.addresses for o in obs if o.qtype == "AAAA"):
            failure = None  # the name resolved over IPv6
        yield c.measurement(Target(service=c.service, probe="dns", host=host, resolver=resolver),
                            min(_t(q) for q in qs), tuple(obs), failure, "resolve")


def _tcp_measurements(c: _Ctx, entries: list[Any]) -> Iterator[Measurement]:
    for e in entries:
        if not isinstance(e, dict) or not e.get("ip") or not isinstance(e.get("port"), int):
            continue
        status = e.get("status")
        failure = _failure(status.get("failure") if isinstance(status, dict) else "unknown")
        obs = TCPObservation(address=str(e["ip"]), port=e["port"], t0=_t(e), t=_t(e),
                             failure=failure)
        yield c.measurement(Target(service=c.service, probe="tcp", host=obs.address,
                                   port=obs.port), _t(e), (obs,), failure, "connect")


def _certs(entry: Mapping[str, Any]) -> tuple[str, ...]:
    out = []
    for cert in entry.get("peer_certificates") or []:
        if isinstance(cert, dict) and cert.get("format") == "base64":
            try:
                out.append(hashlib.sha256(base64.b64decode(str(cert["data"]))).hexdigest())
            except (binascii.Error, KeyError, ValueError):
                continue
    return tuple(out)


def _tls_measurements(c: _Ctx, entries: list[Any]) -> Iterator[Measurement]:
    for e in entries:
        if not isinstance(e, dict) or not e.get("address"):
            continue
        address, port = _split(str(e["address"]))
        failure = _failure(e.get("failure"))
        cert_error = failure if failure in CERT_FAILURES else None
        obs = TLSObservation(
            address=address, port=port or 443, sni=e.get("server_name") or None, t0=_t(e),
            t=_t(e), version=e.get("tls_version") or None, cipher=e.get("cipher_suite") or None,
            alpn=e.get("negotiated_protocol") or None, peer_chain_sha256=_certs(e),
            verified=(failure is None and not e.get("no_tls_verify")) if failure is None
            else (False if cert_error else None),
            verify_error=cert_error, failure=failure)
        yield c.measurement(Target(service=c.service, probe="tls", host=address,
                                   port=port or 443, sni=obs.sni), _t(e), (obs,), failure,
                            "tls_handshake")


def _depth(entry: Mapping[str, Any]) -> int:
    for tag in entry.get("tags") or []:
        if isinstance(tag, str) and tag.startswith("depth="):
            return int(tag[6:]) if tag[6:].isdigit() else 0
    return 0


def _http_obs(c: _Ctx, url: str, final: Mapping[str, Any] | None, redirects: tuple[str, ...],
              failure: str | None) -> HTTPObservation:
    response = final.get("response") if final else None
    response = response if isinstance(response, dict) else {}
    body_value = response.get("body")
    body = _scrub(_text(body_value), c.probe_ip).encode() if body_value else b""
    headers: tuple[tuple[str, str], ...] = ()
    if isinstance(response.get("headers_list"), list):
        headers = tuple((_text(h[0]), _scrub(_text(h[1]), c.probe_ip))
                        for h in response["headers_list"] if isinstance(h, list) and len(h) == 2)
    elif isinstance(response.get("headers"), dict):
        headers = tuple((str(k), _scrub(_text(v), c.probe_ip))
                        for k, v in response["headers"].items())
    code = response.get("code")
    address = _split(str(final.get("address")))[0] if final and final.get("address") else None
    return HTTPObservation(
        url=url, t0=_t(final or {}), t=_t(final or {}),
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
               c: _Ctx) -> tuple[str, tuple[Observation, ...]]:
    """The step a fetch failed at, and that step's failed observation (TCP or TLS) if any."""
    if failure.startswith("dns_"):
        return "resolve", ()
    for e in tk.get("tcp_connect") or []:
        status = e.get("status") if isinstance(e, dict) else None
        if isinstance(status, dict) and _failure(status.get("failure")) == failure:
            return "connect", _step(_tcp_measurements(c, [e]))
    for e in tk.get("tls_handshakes") or []:
        if isinstance(e, dict) and _failure(e.get("failure")) == failure:
            return "tls_handshake", _step(_tls_measurements(c, [e]))
    return "http_round_trip", ()


def _http_measurements(c: _Ctx, tk: Mapping[str, Any], url: str | None) -> Iterator[Measurement]:
    requests = [r for r in tk.get("requests") or [] if isinstance(r, dict)]
    if url is None:  # not web_connectivity: each request is its own fetch
        for r in requests:
            u = _url(r)
            if u:
                yield _one_fetch(c, tk, u, r, (), _failure(r.get("failure")))
        return
    failure = _failure(tk.get("http_experiment_failure"))
    if not requests and failure is None:
        return
    # the deepest request is where the fetch ended; the URLs past depth 0 are the redirects
    # followed (blockwatch's HTTPObservation.redirects), in order
    final = max(requests, key=_depth) if requests else None  # max keeps the first of a tie
    redirects = tuple(dict.fromkeys(
        u for r in sorted(requests, key=_depth) if _depth(r) > 0 and (u := _url(r))))
    failure = failure or (_failure(final.get("failure")) if final else None)
    yield _one_fetch(c, tk, url, final, redirects, failure)


def _url(r: Mapping[str, Any]) -> str:
    req = r.get("request")
    return str(req.get("url") or "") if isinstance(req, dict) else ""


def _one_fetch(c: _Ctx, tk: Mapping[str, Any], url: str, final: Mapping[str, Any] | None,
               redirects: tuple[str, ...], failure: str | None) -> Measurement:
    op, step = _operation(failure, tk, c) if failure else (None, ())
    parts = urlsplit(url)
    target = Target(service=c.service, probe="http", host=(parts.hostname or "").lower(),
                    port=parts.port, url=url)
    has_response = final is not None and isinstance(final.get("response"), dict)
    observations: tuple[Observation, ...] = step if op == "resolve" and not has_response else (
        *step, _http_obs(c, url, final, tuple(r for r in redirects if r), failure))
    return c.measurement(target, _t(final or {}), observations, failure, op)


def _control(c: _Ctx, control: Mapping[str, Any], url: str, host: str) -> Iterator[Measurement]:
    """The web_connectivity test helper's view, as measurements of the control vantage."""
    th = CONTROL_VANTAGE
    dns = control.get("dns")
    if isinstance(dns, dict):
        addrs = [a for a in dns.get("addrs") or [] if isinstance(a, str)]
        failure = _failure(dns.get("failure"))
        obs = tuple(_dns_obs(th, "th", host, qt, [a for a in addrs if (":" in a) == (qt == "AAAA")],
                             failure, 0.0, 0) for qt in ("A", "AAAA"))
        yield c.measurement(Target(service=c.service, probe="dns", host=host, resolver=th), 0.0,
                            obs, obs[0].failure, "resolve", vantage=th)
    for key, value in _dict(control.get("tcp_connect")).items():
        if isinstance(value, dict):
            address, port = _split(key)
            failure = None if value.get("status") else _failure(value.get("failure")) or \
                "unknown_failure: control"
            o = TCPObservation(address=address, port=port or 0, t0=0, t=0, failure=failure)
            yield c.measurement(Target(service=c.service, probe="tcp", host=address, port=port),
                                0.0, (o,), failure, "connect", vantage=th)
    for key, value in _dict(control.get("tls_handshake")).items():
        if isinstance(value, dict):
            address, port = _split(key)
            failure = None if value.get("status") else _failure(value.get("failure")) or \
                "unknown_failure: control"
            t = TLSObservation(address=address, port=port or 443, sni=value.get("server_name"),
                               t0=0, t=0, verified=failure is None, failure=failure)
            yield c.measurement(Target(service=c.service, probe="tls", host=address,
                                       port=port or 443, sni=t.sni), 0.0, (t,), failure,
                                "tls_handshake", vantage=th)
    req = control.get("http_request")
    if isinstance(req, dict) and (req.get("failure") or req.get("status_code")):
        failure = _failure(req.get("failure"))
        status = req.get("status_code")
        headers = _dict(req.get("headers"))
        length = req.get("body_length")
        h = HTTPObservation(
            url=url, t0=0, t=0, status=status if isinstance(status, int) and status > 0 else None,
            headers=tuple((str(k), _text(v)) for k, v in headers.items()),
            body_length=length if isinstance(length, int) and length >= 0 else None,
            title=str(req.get("title") or "") or None, failure=failure)
        yield c.measurement(Target(service=c.service, probe="http",
                                   host=(urlsplit(url).hostname or "").lower(), url=url), 0.0,
                            (h,), failure, "http_round_trip", vantage=th)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def service_for(record: Mapping[str, Any], catalogue: Mapping[str, Service]) -> str:
    """The catalogue service an OONI measurement is about, else its host or test name."""
    test = str(record.get("test_name") or "")
    if test in catalogue:
        return test
    host = (urlsplit(str(record.get("input") or "")).hostname or "").lower()
    for name, svc in catalogue.items():
        hosts = {*svc.domains, *(urlsplit(u).hostname or "" for u in svc.urls)}
        if host and any(host == d or host.endswith("." + d) for d in hosts):
            return name
    return host or test or "ooni"


def from_ooni(record: Mapping[str, Any], catalogue: Mapping[str, Service]) -> Imported:
    """One OONI measurement as a blockwatch run; ``OONIError`` if it is not one."""
    tk = record.get("test_keys")
    if not isinstance(tk, dict):
        raise OONIError("no test_keys object")
    start = _start(record)
    cc = record.get("probe_cc") if isinstance(record.get("probe_cc"), str) else None
    asn = _asn(record.get("probe_asn"))
    run_id = run_id_for(record, start)
    test = str(record.get("test_name") or "unknown")
    vantage = f"ooni-{cc or 'ZZ'}-AS{asn or 0}"
    probe_ip = record.get("probe_ip") if isinstance(record.get("probe_ip"), str) else None
    c = _Ctx(record, run_id, vantage, service_for(record, catalogue), start, probe_ip)
    url = str(record.get("input") or "") if test == "web_connectivity" else None
    ms = [*_dns_measurements(c, tk.get("queries") or []),
          *_tcp_measurements(c, tk.get("tcp_connect") or []),
          *_tls_measurements(c, tk.get("tls_handshakes") or []),
          *_http_measurements(c, tk, url or None)]
    if url and isinstance(tk.get("control"), dict):
        ms.extend(_control(c, tk["control"], url, (urlsplit(url).hostname or "").lower()))
    resolvers = sorted({m.target.resolver for m in ms if m.probe == "dns" and m.target.resolver
                        and m.target.resolver.startswith(("https://", "tls://"))} | {
        CONTROL_VANTAGE})
    summary = {"source": "ooni", "test_name": test, "input": record.get("input"),
               "report_id": record.get("report_id"),
               "ooni": {k: tk.get(k) for k in ("blocking", "accessible") if k in tk}}
    software = f"{record.get('software_name', 'ooniprobe')} {record.get('software_version', '')}"
    run = Run(id=run_id, vantage=vantage, started_at=start, country=cc, asn=asn,
              finished_at=start + dt.timedelta(seconds=_runtime(record)), status="complete",
              software_version=software.strip(), config_hash="ooni", group=IMPORT_GROUP,
              summary=summary, inputs=RunInputs(control_resolvers=tuple(resolvers),
                                                control_vantages=(CONTROL_VANTAGE,)))
    return Imported(run, ms, tk.get("blocking"))


def _runtime(record: Mapping[str, Any]) -> float:
    value = record.get("test_runtime")
    return float(value) if isinstance(value, int | float) and value >= 0 else 0.0


# --- writing OONI's format ---------------------------------------------------------------------


def _ooni_time(text: str | None) -> str | None:
    return text[:19].replace("T", " ") if text else None


def _queries(o: Mapping[str, Any]) -> list[dict[str, Any]]:
    answers = []
    for r in o.get("responses") or []:
        for a in r.get("answers") or []:
            kind = a.get("rtype")
            key = {"A": "ipv4", "AAAA": "ipv6"}.get(kind or "", "hostname")
            answers.append({"answer_type": kind, key: a.get("value"), "ttl": a.get("ttl")})
        break  # the first response is what a stub resolver used; the rest are in x_responses
    return [{"hostname": o.get("qname"), "query_type": o.get("qtype"),
             "engine": o.get("transport"), "resolver_address": o.get("resolver"),
             "failure": o.get("failure"), "answers": answers or None, "t": o.get("t0"),
             "x_responses": len(o.get("responses") or [])}]


def _test_keys(row: Mapping[str, Any]) -> dict[str, Any]:
    tk: dict[str, Any] = {"queries": [], "tcp_connect": [], "tls_handshakes": [], "requests": []}
    for o in row.get("observations") or []:
        layer = o.get("layer")
        if layer == "dns":
            tk["queries"].extend(_queries(o))
        elif layer == "tcp":
            tk["tcp_connect"].append({"ip": o.get("address"), "port": o.get("port"),
                                      "status": {"success": o.get("failure") is None,
                                                 "failure": o.get("failure")}, "t": o.get("t")})
        elif layer == "tls":
            tk["tls_handshakes"].append({
                "address": f"{o.get('address')}:{o.get('port')}", "server_name": o.get("sni"),
                "failure": o.get("failure"), "tls_version": o.get("version"),
                "cipher_suite": o.get("cipher"), "negotiated_protocol": o.get("alpn"),
                "no_tls_verify": bool(o.get("control")), "t": o.get("t"),
                "x_peer_chain_sha256": o.get("peer_chain_sha256"),
                "x_control_sni": bool(o.get("control"))})
        elif layer == "http":
            tk["requests"].append({
                "request": {"url": o.get("url"), "method": "GET"}, "failure": o.get("failure"),
                "response": {"code": o.get("status"), "headers_list": o.get("headers") or [],
                             "body": o.get("body_sample"),
                             "body_is_truncated": bool(o.get("body_truncated"))
                             or (o.get("body_length") or 0) > len(o.get("body_sample") or ""),
                             "x_body_length": o.get("body_length"),
                             "x_body_sha256": o.get("body_sha256")},
                "x_redirects": o.get("redirects") or [], "t": o.get("t")})
        else:
            tk.setdefault(f"x_{layer}", []).append(o)
    tk["failure"] = row.get("failure")
    tk["x_failed_operation"] = row.get("failed_operation")
    tk["x_blockwatch"] = {k: row.get(k) for k in ("verdict", "rule_id", "analyzer_version",
                                                  "evidence")}
    return tk


def ooni_envelope(row: Mapping[str, Any], software_version: str = "") -> dict[str, Any]:
    """One exported measurement (``Store.export_rows``) as an OONI df-000 measurement."""
    start = _ooni_time(row.get("started_at"))
    return {
        "data_format_version": "0.2.0",
        "measurement_start_time": start, "test_start_time": start,
        "probe_cc": row.get("country") or "ZZ", "probe_asn": f"AS{row.get('asn') or 0}",
        "probe_ip": SCRUBBED_IP, "probe_network_name": None,
        "report_id": row.get("run_id"), "input": row.get("target"),
        "software_name": "blockwatch", "software_version": software_version,
        "test_name": f"blockwatch_{row.get('probe')}", "test_version": row.get("probe_version"),
        "test_runtime": row.get("runtime_s"),
        "annotations": {"measurement_id": row.get("measurement_id"),
                        "vantage": row.get("vantage"), "service": row.get("service")},
        "test_keys": _test_keys(row),
    }


def write_ooni(rows: Iterable[Mapping[str, Any]], fh: TextIO) -> int:
    """OONI JSON lines: one df-000 envelope per measurement, streamed."""
    count = 0
    for row in rows:
        fh.write(json.dumps(ooni_envelope(row), ensure_ascii=False, separators=(",", ":")))
        fh.write("\n")
        count += 1
    return count


# --- importing into a store --------------------------------------------------------------------


class _Store(Protocol):
    def get_run(self, run_id: str) -> Run | None: ...
    def start_run(self, run: Run) -> None: ...
    def add_measurements(self, measurements: Sequence[Measurement],
                         verdicts: Sequence[Verdict] = ()) -> None: ...


@dataclass(slots=True)
class ImportReport:
    """What an import did: counts, and the reasons records were skipped (first examples kept)."""

    runs: int = 0
    measurements: int = 0
    already_imported: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: list[Skip] = field(default_factory=list)

    def skip(self, s: Skip) -> None:
        self.skipped[s.reason.split(" (")[0]] += 1
        if len(self.examples) < 10:
            self.examples.append(s)


def _summarize(summary: dict[str, Any], verdicts: Sequence[Verdict]) -> dict[str, Any]:
    services = [v for v in verdicts if v.measurement_id is None]
    counts = Counter(v.verdict for v in services)
    blocked = sorted(v.service for v in services if v.verdict in ("blocked", "partial"))
    return {**summary, "services": dict(counts), "blocked": blocked}


def import_ooni(store: _Store, paths: Iterable[str | Path], catalogue: Mapping[str, Service],
                fingerprints: FingerprintSet | None = None,
                on_run: Callable[[Imported, list[Verdict]], None] | None = None) -> ImportReport:
    """Read, map, judge with blockwatch's rules and store every OONI measurement of ``paths``.

    A measurement already imported (same run id) is counted, not stored twice.
    """
    report = ImportReport()
    services = dict(catalogue)
    for item in read_records(paths):
        if isinstance(item, Skip):
            report.skip(item)
            continue
        where, record = item
        try:
            imp = from_ooni(record, services)
        except OONIError as exc:
            report.skip(Skip(where, str(exc)))
            continue
        if not imp.measurements:
            report.skip(Skip(where, f"no DNS/TCP/TLS/HTTP observations blockwatch can read "
                                    f"(test {imp.run.summary.get('test_name')})"))
            continue
        if store.get_run(imp.run.id) is not None:
            report.already_imported += 1
            continue
        assert imp.run.inputs is not None
        verdicts = judge_run(AnalysisInputs(measurements=imp.measurements, services=services,
                                            run=imp.run.inputs, fingerprints=fingerprints))
        imp.run = dataclasses.replace(imp.run, summary=_summarize(imp.run.summary, verdicts))
        store.start_run(imp.run)
        store.add_measurements(imp.measurements, verdicts)
        report.runs += 1
        report.measurements += len(imp.measurements)
        if on_run is not None:
            on_run(imp, verdicts)
    return report
