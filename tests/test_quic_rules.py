"""The quic rules (analysis/quic.py) and the service verdict "reachable over TCP, blocked over
QUIC", on hand-built runs: each rule reached, and what must never be called blocked (a server
without QUIC, an outage, DNS poisoning, residual blocking of our own making)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable

import pytest
from judging import judge_run

from blockwatch.probes import failures as F
from blockwatch.probes.model import (
    HTTPObservation,
    Measurement,
    Service,
    Target,
    TCPObservation,
    TLSObservation,
    Verdict,
)
from blockwatch.probes.quic import CONTROL, HANDSHAKE, PING, PROXY_UNSUPPORTED, QUICObservation
from blockwatch.probes.runner import new_id

HOST, ADDRESS = "site.test", "192.0.2.10"
SITE = Service(name="site", title="Site", category="NEWS", domains=(HOST,),
               urls=(f"https://{HOST}/",))
NOW = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
TIMEOUT = F.GENERIC_TIMEOUT


def q(kind: str, failure: str | None = None, *, address: str = ADDRESS,
      after: float | None = None, attempt: int = 1) -> QUICObservation:
    sni = {HANDSHAKE: HOST, CONTROL: "example.com", PING: None}[kind]
    return QUICObservation(kind=kind, address=address, port=443, t0=0, t=1.0, sni=sni,
                           attempt=attempt, failure=failure, answered=failure is None,
                           after_failure_s=after, versions=("1",) if kind == PING and
                           failure is None else (), http_status=200 if kind == HANDSHAKE
                           and failure is None else None)


def quic_m(*obs: QUICObservation, vantage: str = "home") -> Measurement:
    handshakes = [o for o in obs if o.kind == HANDSHAKE]
    failure = None if any(o.failure is None for o in handshakes) else handshakes[-1].failure
    return Measurement(id=new_id(), run_id="r", vantage=vantage, probe_version="1",
                       started_at=NOW, runtime_s=1.0,
                       target=Target(service="site", probe="quic", host=HOST, port=443,
                                     sni=HOST, transport="udp"),
                       observations=obs, failure=failure,
                       failed_operation="quic_handshake" if failure else None)



def tcp_side(ok: bool = True, alt_svc: bool = True, vantage: str = "home") -> list[Measurement]:
    """The TCP, TLS and HTTP probes' measurements of the same site from ``vantage``."""
    failure = None if ok else TIMEOUT
    op = None if ok else "connect"
    headers = (("alt-svc", 'h3=":443"; ma=86400'),) if alt_svc else ()

    def m(probe: str, *obs: object, url: str | None = None) -> Measurement:
        return Measurement(id=new_id(), run_id="r", vantage=vantage, probe_version="1",
                           started_at=NOW, runtime_s=0.1,
                           target=Target(service="site", probe=probe, host=HOST,
                                         port=None if url else 443, url=url,
                                         sni=HOST if probe == "tls" else None),
                           observations=obs, failure=failure,  # type: ignore[arg-type]
                           failed_operation=op)

    tcp = TCPObservation(address=ADDRESS, port=443, t0=0, t=0.1, failure=failure)
    tls = TLSObservation(address=ADDRESS, port=443, sni=HOST, t0=0, t=0.1, verified=ok)
    page = HTTPObservation(url=f"https://{HOST}/", t0=0, t=0.1, status=200 if ok else None,
                           headers=headers, failure=failure)
    return [m("tcp", tcp), m("tls", tcp, *((tls,) if ok else ())),
            m("http", page, url=f"https://{HOST}/")]


def judged(*ms: Measurement, controls: bool = False) -> tuple[Verdict, Verdict]:
    """(the home vantage's quic verdict, the site's service verdict)."""
    out = judge_run(list(ms), {"site": SITE}, [],
                    control_vantages=["vps"] if controls else [])
    [quic] = [v for v in out if v.measurement_id == next(
        m.id for m in ms if m.probe == "quic" and m.vantage == "home")]
    [service] = [v for v in out if v.measurement_id is None]
    return quic, service


def _sni() -> tuple[Verdict, Verdict]:
    return judged(quic_m(q(PING), q(CONTROL), q(HANDSHAKE, TIMEOUT),
                         q(HANDSHAKE, TIMEOUT, attempt=2)), *tcp_side())


def _udp() -> tuple[Verdict, Verdict]:
    return judged(quic_m(q(PING, TIMEOUT), q(CONTROL, TIMEOUT), q(HANDSHAKE, TIMEOUT)),
                  *tcp_side())


def _vs_control() -> tuple[Verdict, Verdict]:
    return judged(quic_m(q(HANDSHAKE, F.CONNECTION_REFUSED)), *tcp_side(),
                  quic_m(q(HANDSHAKE), vantage="vps"), controls=True)


CASES: dict[str, tuple[Callable[[], tuple[Verdict, Verdict]], str, str]] = {
    # rule: (run, measurement verdict, service verdict)
    "quic.sni_vs_control_sni": (_sni, "quic_blocked", "partial"),
    "quic.udp_blocked": (_udp, "quic_blocked", "partial"),
    "quic.failure_vs_control": (_vs_control, "quic_blocked", "partial"),
    "quic.handshake_vs_quicping": (lambda: judged(
        quic_m(q(PING), q(CONTROL, TIMEOUT), q(HANDSHAKE, TIMEOUT)), *tcp_side()),
        "quic_blocked", "partial"),
    # silence soon after our own failed handshake there: maybe residual blocking we caused
    "quic.residual": (lambda: judged(
        quic_m(q(PING, TIMEOUT, after=5.0), q(CONTROL, TIMEOUT, after=5.0),
               q(HANDSHAKE, TIMEOUT, after=5.0)), *tcp_side()), "inconclusive", "ok"),
    # the control vantage fails too: a server without QUIC; the service is still ok over TCP
    "quic.same_as_control": (lambda: judged(
        quic_m(q(PING, TIMEOUT), q(HANDSHAKE, TIMEOUT)), *tcp_side(),
        quic_m(q(HANDSHAKE, TIMEOUT), vantage="vps"), controls=True), "down", "ok"),
    # TCP fails as well: the TCP rules judge the address (no control: inconclusive)
    "quic.tcp_fails_too": (lambda: judged(
        quic_m(q(PING, TIMEOUT), q(HANDSHAKE, TIMEOUT)), *tcp_side(ok=False)),
        "inconclusive", "inconclusive"),
    # a SOCKS5 proxy: nothing sent, nothing said, whatever the control vantage saw (it was
    # quic.same_as_control, "down", when the control's handshake failed)
    "quic.not_sent": (lambda: judged(
        quic_m(q(HANDSHAKE, PROXY_UNSUPPORTED)), *tcp_side(),
        quic_m(q(HANDSHAKE, TIMEOUT), vantage="vps"), controls=True), "error", "ok"),
    # no Alt-Svc h3: maybe the server has no QUIC at all; never blocked, and the service ok
    "quic.no_control": (lambda: judged(
        quic_m(q(PING, TIMEOUT), q(CONTROL, TIMEOUT), q(HANDSHAKE, TIMEOUT)),
        *tcp_side(alt_svc=False)), "inconclusive", "ok"),
}
EXAMPLES: dict[str, Callable[[], list[Verdict]]] = {
    rule: (lambda run=run: list(run())) for rule, (run, _, _) in CASES.items()}
EXAMPLES["service.quic_only"] = lambda: list(_sni())


@pytest.mark.parametrize("rule", sorted(CASES))
def test_each_rule_and_the_service_verdict(rule: str) -> None:
    run, verdict, service_verdict = CASES[rule]
    quic, service = run()
    assert (quic.rule_id, quic.verdict, quic.layer) == (rule, verdict, "quic"), quic
    assert service.verdict == service_verdict, service


def test_the_service_says_reachable_over_tcp_blocked_over_quic() -> None:
    _, service = _sni()
    assert service.rule_id == "service.quic_only"
    assert service.evidence.startswith("reachable over TCP, blocked over QUIC (HTTP/3): ")
    assert (service.layer, service.details["quic"], service.details["tcp"]) == (
        "quic", "blocked", "ok")


def test_a_quic_block_beside_a_tcp_block_is_no_quic_only_verdict() -> None:
    tcp = tcp_side(ok=False)
    # the TCP connect is dropped too, against a control vantage that connects
    ctrl = tcp_side(vantage="vps")
    quic, service = judged(quic_m(q(PING), q(CONTROL), q(HANDSHAKE, TIMEOUT)), *tcp, *ctrl,
                           controls=True)
    assert quic.verdict == "quic_blocked"
    assert service.rule_id != "service.quic_only" and service.verdict == "blocked", service


def test_a_working_quic_measurement_is_ok_and_counts_for_nothing_more() -> None:
    quic, service = judged(quic_m(q(PING), q(CONTROL), q(HANDSHAKE)), *tcp_side())
    assert (quic.verdict, quic.rule_id) == ("ok", "ok.no_failure")
    assert service.verdict == "ok"


def test_dns_poisoning_is_not_quic_blocking_against_a_control_elsewhere() -> None:
    """Our lookup gave a forged address; the control's QUIC worked at the real one: the
    control says nothing about the address we used."""
    forged = "198.51.100.9"
    ours = quic_m(q(PING, TIMEOUT, address=forged), q(HANDSHAKE, TIMEOUT, address=forged))
    quic, _ = judged(ours, quic_m(q(HANDSHAKE), vantage="vps"), controls=True)
    assert quic.verdict != "quic_blocked", quic


def test_a_certificate_error_is_not_silence() -> None:
    o = dataclasses.replace(q(HANDSHAKE, F.SSL_INVALID_HOSTNAME), answered=True)
    quic, _ = judged(quic_m(q(PING), q(CONTROL), o), *tcp_side())
    assert quic.verdict == "inconclusive", quic


def test_an_address_outside_the_scope_is_the_generic_rules_matter() -> None:
    quic, service = judged(quic_m(q(HANDSHAKE, F.OUT_OF_SCOPE)), *tcp_side())
    assert (quic.rule_id, quic.verdict) == ("scope.refused", "error")
    assert service.verdict == "ok"  # the quic probe only adds blocking
