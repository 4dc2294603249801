"""Issue #13 (8), scenario ``apps``: messaging apps partly blocked, judged part by part, from
the censored client alone and against the control client, with a real censor."""

from __future__ import annotations

from typing import Any

import pytest

from blockwatch.lab.scenario import expected_for, load
from blockwatch.lab.services import lab_catalogue

from .conftest import Lab
from .test_control_vantage import _against_the_control

CATALOGUE = lab_catalogue()
APPS = load("apps", CATALOGUE.services)
DROPPED = ["149.154.175.50", "149.154.167.51"]


@pytest.fixture(scope="module")
def alone(sweeps: Any) -> Any:
    return sweeps("apps", "censored")


def test_every_service_as_the_scenario_expects_from_one_vantage(alone: Any) -> None:
    want = {s: (e.verdict, e.layer) for s, svc in CATALOGUE.services.items()
            for e in [expected_for(APPS, s, svc.exclusive_prefixes)]}
    assert {s: (v.verdict, v.layer or None) for s, v in alone.services.items()} == want


def test_the_parts_are_named(alone: Any) -> None:
    tg = alone.services["telegram"]
    assert tg.rule_id == "service.app_degraded" and tg.evidence == "data centres ok; web blocked"
    fbm = alone.services["messenger"]
    assert fbm.rule_id == "service.app_blocked", fbm
    assert fbm.details["parts"]["endpoints"] == {"state": "blocked",
                                                 "blocked_hosts": ["edge-mqtt.facebook.com"]}
    sig = alone.services["signal"]
    assert sig.rule_id == "service.app_blocked", sig
    assert sig.evidence.startswith("backend blocked at storage.signal.org")


def test_nothing_but_the_listed_hosts_is_touched(alone: Any) -> None:
    """[only] limits each method: the other data centres and Messenger hosts connect."""
    tcp = [r for r in alone.measurements("telegram") if r["probe"] == "tcp"]
    failed = {r["target"].rpartition(":")[0] for r in tcp if r["failure"]}
    assert failed == set(DROPPED), tcp
    fbm = [r for r in alone.measurements("messenger") if r["probe"] in ("tcp", "tls")]
    bad = {r["target"].rpartition(":")[0] for r in fbm if r["failure"]}
    assert bad == {"edge-mqtt.facebook.com"}, fbm


def test_dropped_data_centres_are_named_against_the_control(lab: Lab) -> None:
    tg = _against_the_control(lab, "apps")["telegram"]
    assert (tg.verdict, tg.rule_id, tg.layer) == ("partial", "service.app_degraded", "tcp,tls")
    assert tg.evidence == ("data centres blocked at 2 of 6 hosts (149.154.175.50, "
                           "149.154.167.51); web blocked"), tg.evidence
