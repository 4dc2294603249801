"""A control vantage in the same database turns failures into verdicts: the control client
sweeps first, then the censored client sweeps with ``[analysis] control_vantages``, so every
failure the censor causes meets a control that succeeded at the same address, name or URL."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from blockwatch.lab.runner import service_verdicts
from blockwatch.lab.scenario import METHODS, load
from blockwatch.lab.services import lab_catalogue

from .conftest import BLOCKWATCH, Lab

CATALOGUE = lab_catalogue()
METHODS_SCENARIO = load("methods", CATALOGUE.services)
BY_METHOD = {ms[0]: svc for svc, ms in METHODS_SCENARIO.blocks.items()}


def _run(lab: Lab, role: str, cfg: object) -> str:
    done = subprocess.run(["ip", "netns", "exec", lab.ns(role), BLOCKWATCH, "run", "--config",
                           str(cfg), "--json"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout.splitlines()[0])["run_id"])


def _against_the_control(lab: Lab, scenario: str) -> dict[str, Any]:
    """The control client sweeps, then the censored client with it as a control vantage, in
    one database: the censored client's service verdicts."""
    lab.use(scenario)
    db = lab.tmp / f"{scenario}-shared.db"
    control = lab.config("control", db)
    censored = lab.config("censored", db)
    censored.write_text(censored.read_text()
                        + '\n[analysis]\ncontrol_vantages = ["lab-control"]\n')
    _run(lab, "control", control)
    return service_verdicts(db, _run(lab, "client", censored))


def test_control_vantage_verdicts(lab: Lab) -> None:
    got = _against_the_control(lab, "methods")
    for method, m in METHODS.items():
        v = got[BY_METHOD[method]]
        if method == "packet_loss":
            # random loss: a connection it happened to break is interference the control did
            # not see, so "partial" is as right as "ok"; never the whole service blocked
            assert v.verdict in ("ok", "partial"), (method, v)
            continue
        assert (v.verdict, v.layer or None) == m.with_control, (method, v)
        if method == "ech_block":  # the control's ECH hellos were answered: high confidence
            assert v.details["rules"] == ["ech.blocked_vs_control"], v
    untouched = set(CATALOGUE.services) - set(METHODS_SCENARIO.blocks)
    assert {s: got[s].verdict for s in untouched} == dict.fromkeys(untouched, "ok")


def test_poisoned_names_are_blocked_at_dns_only_against_the_control(lab: Lab) -> None:
    """Issue #13 (2, 3), scenario cn-2014: poisoned and injected names, of services with and
    without catalogued prefixes, are blocked at layer dns against the control vantage: the
    control connected to the control resolver's addresses (DNS corroborated), and the failures
    at the forged addresses, which the control never used, claim no tcp layer."""
    got = _against_the_control(lab, "cn-2014")
    poisoned = ["facebook", "instagram", "twitter", "youtube", "google", "kakaotalk", "line"]
    assert {s: (got[s].verdict, got[s].layer) for s in poisoned} == dict.fromkeys(
        poisoned, ("blocked", "dns"))
    assert not [s for s, v in got.items() if "tcp" in (v.layer or "").split(",")]
