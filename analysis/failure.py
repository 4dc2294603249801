"""Failure rules: a measurement that failed at a step (resolve, connect, TLS handshake, HTTP
round trip), judged against what the controls did at the same step: the same address and port,
the same name, the same URL.

``FAILURE_RULES`` in order, the first that applies decides; the last always applies. A failure
at a bogon address that nothing else in the run reached is the DNS answer's fault: only the
DNS rules judge it, so the rules that compare with a control skip it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from blockwatch.analysis.evidence import Evidence, bogon, unconfirmed_silence
from blockwatch.analysis.rules import (
    CERT_FAILURES,
    INTERFERENCE,
    LAYER,
    SNI_FILTER_FAILURES,
    Finding,
    Rule,
)
from blockwatch.probes import failures as F
from blockwatch.probes.model import (
    DNSObservation,
    HTTPObservation,
    Measurement,
    TCPObservation,
    TLSObservation,
)


@dataclass(frozen=True, slots=True)
class FailureCase:
    m: Measurement
    failure: str
    layer: str  # dns, tcp, tls or http: the step that failed
    address: str | None
    port: int | None
    sni: str | None
    ev: Evidence
    control_sni: tuple[str, str | None] | None  # this vantage's harmless-name handshake there
    unvouched_bogon: bool  # a bogon address nothing else reached: the DNS answer's fault
    ok: bool  # a control succeeded at this step
    failed: bool  # a control failed at it
    what: str  # what the control was (connect, handshake, resolver, fetch)
    note: str = ""  # the harmless name failed too: said in the evidence
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.address}:{self.port}" if self.address else self.m.target.key

    @property
    def at(self) -> str:
        return f"{self.failure} at {self.m.failed_operation}"


def failed_step(m: Measurement) -> tuple[str, str | None, int | None, str | None]:
    """(layer, address, port, server name) of the step that failed."""
    layer = LAYER.get(m.failed_operation or "", "")
    host = urlsplit(m.target.url).hostname if m.target.url else None
    for o in reversed(m.observations):
        if (isinstance(o, TLSObservation) and layer == "tls" and o.failure is not None
                and not o.control):
            return layer, o.address, o.port, o.sni
        if (isinstance(o, TCPObservation) and layer == "tcp" and o.failure is not None
                and o.answer_of is None):  # a control resolver's address: only compared
            return layer, o.address, o.port, None
    port = m.target.port
    if m.target.url and port is None:
        parts = urlsplit(m.target.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    http = next((o for o in reversed(m.observations) if isinstance(o, HTTPObservation)),
                None)  # a fetch made again after a timeout: the second counts
    if http is not None:
        return layer, http.address, port, host
    return layer, None, port, host or m.target.sni or m.target.host


def _control_outcome(m: Measurement, ev: Evidence, layer: str, address: str | None,
                     port: int | None, sni: str | None) -> tuple[bool, bool, str]:
    """(the control succeeded at this step, the control failed at it, what the control was)."""
    ok = failed = False
    what = ""
    # a control through a SOCKS5 proxy connects by name (the proxy resolves it): its facts are
    # keyed by the host name instead of an address
    host = (urlsplit(m.target.url).hostname if m.target.url else m.target.host) or ""
    keys = [(a, port) for a in dict.fromkeys((address, host.lower()))
            if a and port is not None]
    if layer == "tcp":
        for failure in (f for k in keys for f in ev.tcp.get(k, [])):
            ok, failed, what = ok or failure is None, failed or failure is not None, "connect"
    if layer == "tls":
        for o in (o for k in keys for o in ev.tls.get(k, [])):
            if sni is None or o.sni is None or o.sni.lower() == sni.lower():
                ok, failed = ok or o.failure is None, failed or o.failure is not None
                what = "handshake"
    if layer == "dns" and m.probe == "dns":  # other probes may fail at a redirect's name
        for c in ev.dns.get(m.target.host.lower(), []):
            ok, failed = ok or bool(c.addresses), failed or c.failure is not None
            what = "resolver"
    tried = _tried(m, host, address)
    for h in ev.http.get(m.target.url or "", []) if m.target.url else []:
        if layer in ("tcp", "tls") and not _same_place(ev, host, tried, h.address):
            continue  # the control fetched the URL elsewhere: nothing about these addresses
        good = h.failure is None and h.status is not None
        ok, failed, what = ok or good, failed or not good, what or "fetch"
    return ok, failed, what


def _tried(m: Measurement, host: str, address: str | None) -> set[str]:
    """The addresses a failed connection or handshake was made to: the one recorded, or, for a
    fetch that recorded none and followed no redirect, every address its own lookup of the
    URL's name gave (it raced them all)."""
    if address is not None:
        return {address}
    http = next((o for o in reversed(m.observations) if isinstance(o, HTTPObservation)),
                None)  # a fetch made again after a timeout: the second counts
    if http is None or http.redirects:
        return set()
    name = host.lower().rstrip(".")
    return {a for o in m.observations if isinstance(o, DNSObservation)
            and o.qname.lower().rstrip(".") == name for a in o.addresses}


def _same_place(ev: Evidence, host: str, tried: set[str], control: str | None) -> bool:
    """Whether a control's fetch of the URL speaks for a connection or handshake that failed
    at the ``tried`` addresses. Not when this vantage's own lookup of the URL's name gave them
    and the control resolvers, asked the same name, gave none of them: the failure is at
    addresses the control never used (a forged DNS answer), which says nothing against the
    connection or TLS layer (issue #13); the DNS rules judge the answer. Otherwise (the same
    address, one the controls also give, or one met after a redirect) it does, as before."""
    if not tried or control in tried:
        return True
    name = host.lower().rstrip(".")
    controls = [c for c in ev.dns.get(name, []) if c.addresses]
    ours = tried <= ev.resolved.get(name, set())
    return not (ours and controls and not any(a in c.addresses for c in controls for a in tried))


def _control_sni(ev: Evidence, failure: str, address: str | None, port: int | None,
                 name: str | None) -> tuple[str, str | None] | None:
    """The control-SNI handshake at the failed address (or, without one, at the addresses of
    the failed name in this run): (control name, its failure or None)."""
    if port is None or failure not in SNI_FILTER_FAILURES:
        return None
    key = address or (name or "").lower()
    found = ev.control_sni.get((key, port), [])
    answered = [c for c in found if c[1] is None]
    return next(iter(answered or found), None)


def _unvouched_bogon(ev: Evidence, address: str | None, port: int | None) -> bool:
    """A bogon address that nothing else in the run reached: a control vantage's connection or
    handshake, or this vantage's control-SNI handshake, succeeding at the same address and port
    make it a real server (a lab's, a LAN's) rather than a DNS answer pointing nowhere; so does
    an address in a prefix the scope names explicitly (the user says servers live there)."""
    if not address or not bogon(address) or port is None:
        return False
    ip = ipaddress.ip_address(address)
    if any(ip.version == n.version and ip in n for n in ev.local):
        return False
    key = (address, port)
    return not (any(f is None for f in ev.tcp.get(key, ()))
                or any(o.failure is None for o in ev.tls.get(key, ()))
                or any(f is None for _, f in ev.control_sni.get(key, ())))


def case(m: Measurement, ev: Evidence) -> FailureCase | None:
    failure = m.failure or ""
    layer, address, port, sni = failed_step(m)
    if not layer:
        return None
    control_sni = _control_sni(ev, failure, address, port, sni) if layer == "tls" else None
    note, extra = "", {}
    if control_sni is not None and control_sni[1] is not None:  # the harmless name failed too
        note = (f"; the control SNI {control_sni[0]} failed too ({control_sni[1]}): not "
                "SNI filtering (the address, the port, the server, or residual blocking)")
        extra = {"sni_based": False, "control_sni": control_sni[0]}
    unvouched = layer in ("tcp", "tls") and _unvouched_bogon(ev, address, port)
    ok, failed, what = _control_outcome(m, ev, layer, address, port, sni)
    return FailureCase(m, failure, layer, address, port, sni, ev, control_sni, unvouched, ok,
                       failed, what, note, extra)


# --- conditions -------------------------------------------------------------------------------


def _sni_vs_control_sni(c: FailureCase) -> Finding | None:
    if c.control_sni is None or c.control_sni[1] is not None:
        return None
    same = "the same address" if c.address else f"{c.sni}'s addresses"
    return Finding(f"{c.at} naming {c.sni} ({c.where}); {same} completed a handshake for "
                   f"{c.control_sni[0]}",
                   {"address": c.address, "sni_based": True, "control_sni": c.control_sni[0]})


def _valid_at_control_address(ev: Evidence, address: str | None, sni: str | None) -> bool:
    """This vantage got a valid certificate for the name at an address a control resolver
    gave, and ``address`` is not one of the control's (else: the server's own misconfiguration)."""
    if not sni:
        return False
    control = set().union(*(c.addresses for c in ev.dns.get(sni.lower(), [])))
    return address not in control and bool(ev.verified.get(sni.lower(), set()) & control)


def _invalid_cert_vs_control(c: FailureCase) -> Finding | None:
    if (c.unvouched_bogon or c.layer != "tls" or c.failure not in CERT_FAILURES
            or not (c.ok or _valid_at_control_address(c.ev, c.address, c.sni))):
        return None
    return Finding(f"{c.failure} at {c.where}; the control's certificate for {c.sni} is valid",
                   {"address": c.address})


def _timeout_unconfirmed(c: FailureCase) -> Finding | None:
    if c.layer != "dns" or c.failure != F.GENERIC_TIMEOUT or not c.ok:
        return None
    why = unconfirmed_silence(c.m, c.ev.facts)
    return Finding(f"{c.at}: {why}") if why is not None else None


def _failure_vs_control(layer: str) -> Any:
    def condition(c: FailureCase) -> Finding | None:
        if c.layer != layer or c.unvouched_bogon or not c.ok or c.failure not in INTERFERENCE:
            return None
        return Finding(f"{c.at} ({c.where}); control {c.what} succeeded{c.note}",
                       {"address": c.address, **c.extra})
    return condition


def _same_as_control(c: FailureCase) -> Finding | None:
    if c.unvouched_bogon or not c.failed or c.ok:
        return None
    return Finding(f"{c.at}; control {c.what} failed too{c.note}", dict(c.extra), c.layer)


def _no_control(c: FailureCase) -> Finding:
    if c.note:
        return Finding(f"{c.at} ({c.where}){c.note}", dict(c.extra), c.layer)
    return Finding(f"{c.m.failure} at {c.m.failed_operation}", {}, c.layer)


SAME_AS_CONTROL: Rule[Any] = Rule("failure.same_as_control", "down",
                            "the control fails at the same step: an outage, not blocking")
NO_CONTROL: Rule[Any] = Rule("failure.no_control", "inconclusive",
                       "a failure without a control cannot tell blocking from an outage")

FAILURE_RULES: tuple[Rule[FailureCase], ...] = (
    Rule("tls.sni_vs_control_sni", "tls_blocked",
         "the handshake naming the service failed (reset, EOF, timeout) while, right after, the "
         "same address completed a handshake for a harmless control name: the name is filtered "
         "(SNI blocking), the address and the server work", _sni_vs_control_sni, "tls"),
    Rule("tls.invalid_cert_vs_control", "tls_blocked",
         "the certificate is invalid for the name while the control's handshake for the same "
         "name is valid: interception or a block page", _invalid_cert_vs_control, "tls"),
    Rule("dns.timeout.unconfirmed", "inconclusive",
         "resolving timed out, but the silence was not repeated for the name, or the resolver "
         "answered no other name in this run: packet loss or a broken resolver, not evidence "
         "of blocking", _timeout_unconfirmed, "dns"),
    Rule("dns.failure_vs_control", "dns_blocked",
         "resolving failed while the control resolved the name or fetched the URL",
         _failure_vs_control("dns"), "dns"),
    Rule("tcp.failure_vs_control", "tcp_blocked",
         "the connection failed while the control connected to the same address or fetched "
         "the URL", _failure_vs_control("tcp"), "tcp"),
    Rule("tls.failure_vs_control", "tls_blocked",
         "the TLS handshake failed while the control completed it or fetched the URL",
         _failure_vs_control("tls"), "tls"),
    Rule("http.failure_vs_control", "http_blocked",
         "the HTTP exchange failed while the control fetched the URL",
         _failure_vs_control("http"), "http"),
    Rule(SAME_AS_CONTROL.id, SAME_AS_CONTROL.verdict, SAME_AS_CONTROL.why, _same_as_control),
    Rule(NO_CONTROL.id, NO_CONTROL.verdict, NO_CONTROL.why, _no_control),
)
