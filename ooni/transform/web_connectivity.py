"""web_connectivity (ts-017): one fetch of the input URL, and the test helper's control.

The DNS, TCP and TLS keys are read as every test's (``common``). Unlike other tests, the HTTP
requests are one fetch of the input URL that followed redirects: the deepest request (tag
``depth=N``) is where it ended, and ``http_experiment_failure`` is its failure. The test helper's
answers (``test_keys.control``: DNS, TCP connects and TLS handshakes keyed "ip:port", the HTTP
request) become measurements of the control vantage ``ooni-th``, so that blockwatch's own rules
compare the two. Without an input URL the record is read like any other test's.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

from blockwatch.ooni.models import Control, HTTPTransaction, WebConnectivity, WebConnectivityKeys
from blockwatch.ooni.transform.common import (
    CONTROL_VANTAGE,
    Ctx,
    Transform,
    dns_obs,
    failure_name,
    fetches,
    is_ip,
    one_fetch,
    primitives,
    split,
    text_of,
    url_of,
)
from blockwatch.probes.model import (
    HTTPObservation,
    Measurement,
    Target,
    TCPObservation,
    TLSObservation,
)


def measurements(c: Ctx, m: WebConnectivity) -> list[Measurement]:
    tk, url = m.test_keys, m.input or ""
    ms = [*primitives(c, tk), *(_fetch(c, tk, url) if url else fetches(c, tk))]
    if url and tk.control is not None:
        ms.extend(_control(c, tk.control, url, (urlsplit(url).hostname or "").lower()))
    return ms


def _depth(r: HTTPTransaction) -> int:
    for tag in r.tags or []:
        if tag.startswith("depth="):
            try:
                return int(tag[6:]) if tag[6:].isdigit() else 0
            except ValueError:  # digits int() does not take ("²"), or thousands of them
                return 0
    return 0


def _fetch(c: Ctx, tk: WebConnectivityKeys, url: str) -> Iterator[Measurement]:
    requests = tk.requests or []
    failure = failure_name(tk.http_experiment_failure)
    if not requests and failure is None:
        return
    # the deepest request is where the fetch ended; the URLs past depth 0 are the redirects
    # followed (blockwatch's HTTPObservation.redirects), in order
    final = max(requests, key=_depth) if requests else None  # max keeps the first of a tie
    redirects = tuple(dict.fromkeys(
        u for r in sorted(requests, key=_depth) if _depth(r) > 0 and (u := url_of(r))))
    failure = failure or (failure_name(final.failure) if final is not None else None)
    yield one_fetch(c, tk, url, final, redirects, failure)


def _control(c: Ctx, control: Control, url: str, host: str) -> Iterator[Measurement]:
    """The test helper's view, as measurements of the control vantage."""
    th = CONTROL_VANTAGE
    if control.dns is not None:
        addrs = [a for a in control.dns.addrs or [] if is_ip(a)]  # not the CNAMEs followed
        failure = failure_name(control.dns.failure)
        obs = tuple(dns_obs(th, "th", host, qt, [a for a in addrs if (":" in a) == (qt == "AAAA")],
                            failure, 0.0, 0) for qt in ("A", "AAAA"))
        yield c.measurement(Target(service=c.service, probe="dns", host=host, resolver=th), 0.0,
                            obs, obs[0].failure, "resolve", vantage=th)
    for key, tcp in (control.tcp_connect or {}).items():
        if tcp is None:
            continue
        address, port = split(key)
        failure = None if tcp.status else failure_name(tcp.failure) or "unknown_failure: control"
        o = TCPObservation(address=address, port=port or 0, t0=0, t=0, failure=failure)
        yield c.measurement(Target(service=c.service, probe="tcp", host=address, port=port),
                            0.0, (o,), failure, "connect", vantage=th)
    for key, tls in (control.tls_handshake or {}).items():
        if tls is None:
            continue
        address, port = split(key)
        failure = None if tls.status else failure_name(tls.failure) or "unknown_failure: control"
        t = TLSObservation(address=address, port=port or 443, sni=tls.server_name, t0=0, t=0,
                           verified=failure is None, failure=failure)
        yield c.measurement(Target(service=c.service, probe="tls", host=address,
                                   port=port or 443, sni=t.sni), 0.0, (t,), failure,
                            "tls_handshake", vantage=th)
    req = control.http_request
    if req is not None and (req.failure or req.status_code):
        status, length = req.status_code, req.body_length
        h = HTTPObservation(
            url=url, t0=0, t=0, status=status if status is not None and status > 0 else None,
            headers=tuple((k, text_of(v)) for k, v in (req.headers or {}).items()),
            body_length=length if length is not None and length >= 0 else None,
            title=req.title or None, failure=failure_name(req.failure))
        yield c.measurement(Target(service=c.service, probe="http",
                                   host=(urlsplit(url).hostname or "").lower(), url=url), 0.0,
                            (h,), h.failure, "http_round_trip", vantage=th)


TRANSFORM = Transform(WebConnectivity, measurements)
