"""blockwatch's observations as OONI's network primitives (the test keys of an export).

df-002 ``queries``, df-005 ``tcp_connect``, df-006 ``tls_handshakes`` and df-001 ``requests``,
as ooni/spec writes them:

- times (``t0`` when a step began, ``t`` when it ended) are seconds since the measurement
  started, for every primitive. blockwatch's DNS and VPN observations keep an absolute ``t0``
  (epoch seconds, so that a sweep's shared lookups can be placed in time); it is made relative
  to the measurement's start here (negative: a lookup the sweep made, and shared, before this
  measurement began);
- ``resolver_address`` is ``host:port`` (``[v6]:port``) without a scheme, a DoH resolver's
  URL, or "" for the system resolver (and one blockwatch names otherwise, as an OONI import's
  test helper: ``x_resolver`` keeps blockwatch's name); ``engine`` is OONI's (``udp``, ``tcp``,
  ``dot``, ``doh``, ``system``); a name among A/AAAA answers is a CNAME answer; a query carries
  the response's ``rcode`` and ``transaction_id``;
- an IPv6 endpoint is written ``[addr]:port``;
- a name where an IP address is expected (a connection made through a SOCKS5 proxy, which
  resolved it) is kept, marked ``x_proxied``; a cipher suite is named as IANA names it (records
  of TLS probe versions before 4 stored OpenSSL's names);
- ``peer_certificates`` is the chain the TLS probe kept (version 5 on: base64 DER, leaf first,
  its first certificates within ``probes.tls`` bounds), as df-006's ``{"format": "base64",
  "data": ...}``; null for a handshake recorded without it (an older probe version, or none
  sent). ``x_peer_chain_sha256`` keeps the SHA-256 of every certificate sent, beyond the bounds
  too;
- each HTTP fetch is one request entry per hop, newest first (as OONI's clients write them):
  the redirects blockwatch followed (their URLs, and the final response's status, headers and
  body sample); a request carries the headers the HTTP probe always sends (``Accept``,
  ``Accept-Encoding``, ``Connection``) and ``Host``, and an empty body. The User-Agent is the
  vantage's setting, not recorded with the measurement, so it is not claimed.

What blockwatch adds beyond OONI's fields goes under ``x_`` names (df-000's rule for
extensions). Pure functions.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from blockwatch.probes.cipher_suites import iana_name
from blockwatch.probes.http import _HEADERS as HTTP_HEADERS

EPOCH_T0 = 1e9  # a t0 above this is epoch seconds (2001 on), not seconds since the start
ENGINES = {"udp": "udp", "tcp": "tcp", "tls": "dot", "https": "doh", "system": "system"}


def endpoint(address: str | None, port: int | None) -> str:
    """``host:port``; an IPv6 address bracketed (df-005, df-006)."""
    host = address or ""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}" if port is not None else host


def _is_ip(value: Any) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def relative(t0: float | None, start: dt.datetime) -> float | None:
    if t0 is None:
        return None
    return round(t0 - start.timestamp(), 6) if t0 > EPOCH_T0 else t0


def resolver_of(resolver: str | None) -> tuple[str, str]:
    """(OONI's engine, resolver_address) of a blockwatch resolver (``udp://1.2.3.4:53``,
    ``tls://...``, ``https://.../dns-query``, ``system``)."""
    text = resolver or "system"
    scheme, sep, rest = text.partition("://")
    if not sep:  # the system's, or one named otherwise (an OONI import's test helper)
        return "system", ""
    if scheme == "https":
        return "doh", text
    parts = urlsplit(text)
    host, port = parts.hostname or rest, parts.port
    default = 853 if scheme == "tls" else 53
    return ENGINES.get(scheme, scheme), endpoint(host, port if port is not None else default)


def query(o: Mapping[str, Any], start: dt.datetime) -> dict[str, Any]:
    engine, address = resolver_of(o.get("resolver"))
    responses = o.get("responses") or []
    first = next((r for r in responses if not r.get("malformed")), None)
    answers = []
    for a in (first or {}).get("answers") or []:
        kind, value = a.get("rtype"), a.get("value")
        if kind in ("A", "AAAA") and not _is_ip(value):
            kind = "CNAME"  # a name among addresses (OONI's test helper lists its CNAMEs)
        key = {"A": "ipv4", "AAAA": "ipv6"}.get(kind or "", "hostname")
        answers.append({"answer_type": kind, key: value, "ttl": a.get("ttl")})
    t0 = relative(o.get("t0"), start)
    t = None if t0 is None else round(t0 + (first.get("t") or 0.0 if first else 0.0), 6)
    return {"hostname": o.get("qname"), "query_type": o.get("qtype"), "engine": engine,
            "resolver_address": address, "resolver_hostname": None, "resolver_port": None,
            "failure": o.get("failure"), "answers": answers or None,
            "rcode": _rcode(first), "transaction_id": first.get("id") if first else None,
            "t0": t0, "t": t, "x_resolver": o.get("resolver"), "x_responses": len(responses),
            "x_transmissions": o.get("transmissions"), "x_attempt": o.get("attempt")}


_RCODES = {"NOERROR": 0, "FORMERR": 1, "SERVFAIL": 2, "NXDOMAIN": 3, "NOTIMP": 4, "REFUSED": 5}


def _rcode(response: Mapping[str, Any] | None) -> int | None:
    """The numeric RCODE (OONI's ``rcode`` is the wire value)."""
    if response is None:
        return None
    return _RCODES.get(str(response.get("rcode")))


def tcp(o: Mapping[str, Any]) -> dict[str, Any]:
    entry = {"ip": o.get("address"), "port": o.get("port"),
             "status": {"success": o.get("failure") is None, "failure": o.get("failure"),
                        "blocked": None},
             "t0": o.get("t0"), "t": o.get("t"), "x_answer_of": o.get("answer_of")}
    if not _is_ip(o.get("address")):
        entry["x_proxied"] = True  # a name: connected through a SOCKS5 proxy, which resolved it
    return entry


def tls(o: Mapping[str, Any]) -> dict[str, Any]:
    return {"network": "tcp", "address": endpoint(o.get("address"), o.get("port")),
            "server_name": o.get("sni"), "failure": o.get("failure"),
            "tls_version": o.get("version"), "cipher_suite": iana_name(o.get("cipher")),
            "negotiated_protocol": o.get("alpn"),
            "no_tls_verify": bool(o.get("control")) or o.get("verified") is False,
            "peer_certificates": [{"format": "base64", "data": d}
                                  for d in o.get("peer_chain_der") or []] or None,
            "t0": o.get("t0"), "t": o.get("t"),
            "x_peer_chain_sha256": o.get("peer_chain_sha256"),
            "x_verified": o.get("verified"), "x_verify_error": o.get("verify_error"),
            "x_control_sni": bool(o.get("control"))}


def _request(url: str) -> dict[str, Any]:
    host = urlsplit(url).netloc
    headers = [*(list(h) for h in HTTP_HEADERS), ["Host", host]]
    return {"url": url, "method": "GET", "headers_list": headers,
            "headers": {k: v for k, v in headers}, "body": "", "body_is_truncated": False,
            "tor": {"exit_ip": None, "exit_name": None, "is_tor": False},
            "x_transport": "tcp"}


def requests(o: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One fetch as OONI's request entries, newest first: the final one with its response,
    then each hop that redirected (its URL and where it led)."""
    hops = [str(o.get("url")), *map(str, o.get("redirects") or [])]
    headers = [list(h) for h in o.get("headers") or []]
    sample = o.get("body_sample")
    final = {
        "request": _request(hops[-1]), "failure": o.get("failure"), "t0": o.get("t0"),
        "t": o.get("t"), "address": o.get("address"),
        "response": {"code": o.get("status") or 0, "headers_list": headers,
                     "headers": dict(_first_values(headers)), "body": sample,
                     "body_is_truncated": bool(o.get("body_truncated"))
                     or (o.get("body_length") or 0) > len(sample or ""),
                     "x_body_length": o.get("body_length"),
                     "x_body_sha256": o.get("body_sha256"), "x_title": o.get("title"),
                     "x_http_version": o.get("http_version")}}
    earlier: list[dict[str, Any]] = [
        {"request": _request(url), "failure": None, "t0": None, "t": None,
         "response": {"code": None, "headers_list": [], "headers": {}, "body": None,
                      "body_is_truncated": False, "x_redirected_to": hops[i + 1]}}
        for i, url in enumerate(hops[:-1])]
    return [final, *reversed(earlier)]


def _first_values(headers: Iterable[list[str]]) -> Iterable[tuple[str, str]]:
    seen: set[str] = set()
    for name, value in headers:
        if name.lower() not in seen:
            seen.add(name.lower())
            yield name, value


def primitives(observations: Iterable[Mapping[str, Any]], start: dt.datetime
               ) -> dict[str, Any]:
    """The four primitive lists (always present, maybe empty) and, per other layer, its
    observations as blockwatch records them under ``x_<layer>`` (times made relative)."""
    tk: dict[str, Any] = {"queries": [], "tcp_connect": [], "tls_handshakes": [],
                          "requests": []}
    for o in observations:
        layer = o.get("layer")
        if layer == "dns":
            tk["queries"].append(query(o, start))
        elif layer == "tcp":
            tk["tcp_connect"].append(tcp(o))
        elif layer == "tls":
            tk["tls_handshakes"].append(tls(o))
        elif layer == "http":
            tk["requests"][:0] = requests(o)  # newest first, the last fetch first
        else:
            extra = dict(o)
            if "t0" in extra:
                extra["t0"] = relative(extra["t0"], start)
            tk.setdefault(f"x_{layer}", []).append(extra)
    return tk
