"""web_connectivity (ts-017): one fetch of the input URL, and the test helper's control.

The common transform reads the test's DNS, TCP and TLS keys; here the HTTP requests are one fetch
that followed redirects (the deepest request is where it ended), and the test helper's answers
(``test_keys.control``) become measurements of the control vantage ``ooni-th``, so that
blockwatch's own rules compare the two. Without an input URL it is read like any other test.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from blockwatch.ooni.transform.common import (
    CONTROL_VANTAGE,
    Ctx,
    depth,
    dns_measurements,
    dns_obs,
    failure_name,
    fetches,
    one_fetch,
    split,
    tcp_measurements,
    text_of,
    tls_measurements,
    url_of,
)
from blockwatch.probes.model import (
    HTTPObservation,
    Measurement,
    Target,
    TCPObservation,
    TLSObservation,
)


def measurements(c: Ctx, record: Mapping[str, Any]) -> list[Measurement]:
    tk = record["test_keys"]
    url = str(record.get("input") or "")
    ms = [*dns_measurements(c, tk.get("queries") or []),
          *tcp_measurements(c, tk.get("tcp_connect") or []),
          *tls_measurements(c, tk.get("tls_handshakes") or []),
          *(_fetch(c, tk, url) if url else fetches(c, tk))]
    if url and isinstance(tk.get("control"), dict):
        ms.extend(_control(c, tk["control"], url, (urlsplit(url).hostname or "").lower()))
    return ms


def _fetch(c: Ctx, tk: Mapping[str, Any], url: str) -> Iterator[Measurement]:
    requests = [r for r in tk.get("requests") or [] if isinstance(r, dict)]
    failure = failure_name(tk.get("http_experiment_failure"))
    if not requests and failure is None:
        return
    # the deepest request is where the fetch ended; the URLs past depth 0 are the redirects
    # followed (blockwatch's HTTPObservation.redirects), in order
    final = max(requests, key=depth) if requests else None  # max keeps the first of a tie
    redirects = tuple(dict.fromkeys(
        u for r in sorted(requests, key=depth) if depth(r) > 0 and (u := url_of(r))))
    failure = failure or (failure_name(final.get("failure")) if final else None)
    yield one_fetch(c, tk, url, final, redirects, failure)


def _control(c: Ctx, control: Mapping[str, Any], url: str, host: str) -> Iterator[Measurement]:
    """The web_connectivity test helper's view, as measurements of the control vantage."""
    th = CONTROL_VANTAGE
    dns = control.get("dns")
    if isinstance(dns, dict):
        addrs = [a for a in dns.get("addrs") or [] if isinstance(a, str)]
        failure = failure_name(dns.get("failure"))
        obs = tuple(dns_obs(th, "th", host, qt, [a for a in addrs if (":" in a) == (qt == "AAAA")],
                             failure, 0.0, 0) for qt in ("A", "AAAA"))
        yield c.measurement(Target(service=c.service, probe="dns", host=host, resolver=th), 0.0,
                            obs, obs[0].failure, "resolve", vantage=th)
    for key, value in as_dict(control.get("tcp_connect")).items():
        if isinstance(value, dict):
            address, port = split(key)
            failure = None if value.get("status") else failure_name(value.get("failure")) or \
                "unknown_failure: control"
            o = TCPObservation(address=address, port=port or 0, t0=0, t=0, failure=failure)
            yield c.measurement(Target(service=c.service, probe="tcp", host=address, port=port),
                                0.0, (o,), failure, "connect", vantage=th)
    for key, value in as_dict(control.get("tls_handshake")).items():
        if isinstance(value, dict):
            address, port = split(key)
            failure = None if value.get("status") else failure_name(value.get("failure")) or \
                "unknown_failure: control"
            t = TLSObservation(address=address, port=port or 443, sni=value.get("server_name"),
                               t0=0, t=0, verified=failure is None, failure=failure)
            yield c.measurement(Target(service=c.service, probe="tls", host=address,
                                       port=port or 443, sni=t.sni), 0.0, (t,), failure,
                                "tls_handshake", vantage=th)
    req = control.get("http_request")
    if isinstance(req, dict) and (req.get("failure") or req.get("status_code")):
        failure = failure_name(req.get("failure"))
        status = req.get("status_code")
        headers = as_dict(req.get("headers"))
        length = req.get("body_length")
        h = HTTPObservation(
            url=url, t0=0, t=0, status=status if isinstance(status, int) and status > 0 else None,
            headers=tuple((str(k), text_of(v)) for k, v in headers.items()),
            body_length=length if isinstance(length, int) and length >= 0 else None,
            title=str(req.get("title") or "") or None, failure=failure)
        yield c.measurement(Target(service=c.service, probe="http",
                                   host=(urlsplit(url).hostname or "").lower(), url=url), 0.0,
                            (h,), failure, "http_round_trip", vantage=th)




def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
