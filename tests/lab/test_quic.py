"""The quic probe in the lab (issue #17): the lab's HTTP/3 server (``blockwatch.lab.h3server``)
answers on every service address, and scenario ``quic`` blocks QUIC two ways while TCP works:
``quic_drop`` (nftables drops UDP/443: instagram) and ``quic_sni`` (the censor's NFQUEUE filter
decrypts Initials and drops the ones naming youtube, GFW-style, with residual blocking).

* Scenario ``none``: every quic measurement of every service is ok (the default sweep).
* Scenario ``quic``, the censored client alone: both services are ``partial`` at layer quic
  ("reachable over TCP, blocked over QUIC"), by the one-vantage rules (``quic.udp_blocked``:
  nothing answers on UDP while TCP works and the server advertises h3; ``quic.sni_vs_control_sni``:
  the control SNI's handshake completed on the same address); every other service is ok.
* Then against the control client (same database, ``[analysis] control_vantages``): the same
  service verdicts. The SNI filter's residual blocking from the first sweep is still on (60 s):
  the second sweep's youtube measurements are judged against the control vantage.
"""

from __future__ import annotations

from typing import Any

from blockwatch.lab.scenario import QUIC, expected_for, load
from blockwatch.lab.services import lab_catalogue

from .conftest import Lab, Sweep
from .test_control_vantage import _against_the_control

CATALOGUE = lab_catalogue()
SCENARIO = load("quic", CATALOGUE.services)
BY_METHOD = {ms[0]: svc for svc, ms in SCENARIO.blocks.items()}


def quic_rows(sweep: Sweep, service: str | None = None) -> list[dict[str, Any]]:
    return [r for r in sweep.rows if r["probe"] == "quic"
            and (service is None or r["service"] == service)]


def test_every_service_answers_http3_without_a_censor(lab: Lab, sweeps: Any) -> None:
    sweep = sweeps("none", "censored")
    rows = quic_rows(sweep)
    assert {r["service"] for r in rows} >= {"youtube", "instagram", "google", "facebook"}
    bad = [(r["target"], r["failure"], r["verdict"]) for r in rows if r["verdict"] != "ok"]
    assert not bad, bad
    for r in rows:
        real = [o for o in r["observations"] if o["layer"] == "quic" and o["kind"] == "handshake"]
        assert all(o["http_status"] == 200 and o["verified"] for o in real), r["target"]
        assert any(o["kind"] == "quicping" and o["versions"] for o in r["observations"]
                   if o["layer"] == "quic")


def test_quic_blocking_is_judged_at_its_layer_alone_then_with_the_control(
        lab: Lab, sweeps: Any) -> None:
    sweep = sweeps("quic", "censored")
    rules = {BY_METHOD["quic_drop"]: "quic.udp_blocked",
             BY_METHOD["quic_sni"]: "quic.sni_vs_control_sni"}
    for service, rule in rules.items():
        rows = quic_rows(sweep, service)
        assert rows and all(r["verdict"] == "quic_blocked" for r in rows), [
            (r["target"], r["rule_id"], r["evidence"]) for r in rows]
        assert rule in {r["rule_id"] for r in rows}, [r["rule_id"] for r in rows]
        # the TCP side of the same service works
        assert all(r["verdict"] == "ok" for r in sweep.measurements(service)
                   if r["probe"] in ("tcp", "tls", "http"))
    for method, m in QUIC.items():
        v = sweep.services[BY_METHOD[method]]
        assert (v.verdict, v.layer, v.rule_id) == (m.verdict, m.layer, "service.quic_only"), v
        assert v.evidence.startswith("reachable over TCP, blocked over QUIC"), v.evidence
    others = {s: v.verdict for s, v in sweep.services.items() if s not in SCENARIO.blocks}
    assert others == dict.fromkeys(others, "ok")
    assert not [r for r in quic_rows(sweep) if r["service"] not in SCENARIO.blocks
                and r["verdict"] != "ok"]

    got = _against_the_control(lab, "quic")
    for method, m in QUIC.items():
        v = got[BY_METHOD[method]]
        assert (v.verdict, v.layer) == m.with_control, (method, v)
    assert {s: v.verdict for s, v in got.items() if s not in SCENARIO.blocks} == dict.fromkeys(
        others, "ok")
    assert expected_for(SCENARIO, "instagram", False).verdict == "partial"


def test_no_other_method_is_taken_for_quic_blocking(lab: Lab, sweeps: Any) -> None:
    """Scenario methods (DNS, TCP, TLS, HTTP and UDP methods): QUIC goes where the name
    resolves and works wherever UDP/443 is untouched; nothing is called QUIC blocking."""
    sweep = sweeps("methods", "censored")
    blocked = [(r["service"], r["rule_id"]) for r in quic_rows(sweep)
               if r["verdict"] == "quic_blocked"]
    assert not blocked, blocked
    assert not [s for s, v in sweep.services.items() if v.rule_id == "service.quic_only"]
