"""Issue #13: no blocking verdict where there is no censorship, over repeated runs.

Scenarios without a censor, each swept ``REPEAT`` times by the control client and then the
censored client with it as a control vantage (one database per round): ``none``, ``outages``
(a server down for everybody, a slow path, a broken IPv6 address) and ``loss`` (10 % of the
censored client's packets lost each way). Every run is judged twice: as stored (against the
control vantage) and again in this process without the control (from one vantage alone). A
dead local network is swept ``REPEAT`` times too. Never ``blocked`` nor ``partial``; the
counts are printed (``pytest -s``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from blockwatch.analysis.verdicts import judge_run
from blockwatch.judging import run_inputs, stored_inputs
from blockwatch.lab.runner import service_verdicts
from blockwatch.lab.services import lab_catalogue
from blockwatch.storage import open_store

from .conftest import BLOCKWATCH, Lab
from .test_control_vantage import _run

REPEAT = 3
CATALOGUE = lab_catalogue()
BLOCKING = ("blocked", "partial")
# what each scenario's services may be, alone and against the control (anything else is ok)
ALLOWED = {"none": ({}, {}),
           "outages": ({"whatsapp": "inconclusive"}, {"whatsapp": "down"}),
           # random loss breaks a connection now and then: inconclusive, never blocking
           "loss": ({"*": "inconclusive"}, {"*": "inconclusive"})}


def _alone(db: Path, run_id: str) -> dict[str, str]:
    """The run judged again without its control vantage: what one vantage says."""
    with open_store(f"sqlite:///{db}") as store:
        run = next(r for r in store.runs(limit=100) if r.id == run_id)
        inputs = run_inputs(run, control_resolvers=(), control_vantages=(), local_networks=(),
                            max_age=dt.timedelta(hours=6))
        inputs = dataclasses.replace(inputs, control_vantages=(), controls_since=None,
                                     controls_until=None)
        judged = judge_run(stored_inputs(store, run, inputs, CATALOGUE.services, None))
    return {v.service: v.verdict for v in judged if v.measurement_id is None}


def _check(got: dict[str, str], allowed: dict[str, str]) -> list[tuple[str, str]]:
    """The services whose verdict is neither ok nor what the scenario allows them."""
    return [(s, v) for s, v in got.items()
            if v != "ok" and v != allowed.get(s, allowed.get("*"))]


@pytest.mark.parametrize("scenario", sorted(ALLOWED))
def test_no_censorship_is_never_blocking(lab: Lab, scenario: str) -> None:
    lab.use(scenario)
    alone_ok, with_ok = ALLOWED[scenario]
    counts: Counter[tuple[str, str]] = Counter()
    wrong = []
    for i in range(REPEAT):
        db = lab.tmp / f"quiet-{scenario}-{i}.db"
        control = lab.config("control", db)
        censored = lab.config("censored", db, timeouts=None)  # blockwatch's default settings
        censored.write_text(censored.read_text()
                            + '\n[analysis]\ncontrol_vantages = ["lab-control"]\n')
        _run(lab, "control", control)
        run_id = _run(lab, "client", censored)
        with_control = {s: v.verdict for s, v in service_verdicts(db, run_id).items()}
        alone = _alone(db, run_id)
        assert set(with_control) == set(alone) == set(CATALOGUE.services)
        counts.update(("with control", v) for v in with_control.values())
        counts.update(("alone", v) for v in alone.values())
        wrong += [(i, "with control", *x) for x in _check(with_control, with_ok)]
        wrong += [(i, "alone", *x) for x in _check(alone, alone_ok)]
    print(f"\n{scenario}: {REPEAT} rounds x {len(CATALOGUE.services)} services: "
          f"{dict(sorted(counts.items()))}")
    assert not [w for w in wrong if w[3] in BLOCKING], wrong
    assert wrong == [], wrong


def test_a_dead_local_network_is_never_blocking(lab: Lab) -> None:
    lab.use("methods")  # a censor is there, but nothing gets out to meet it
    client = lab.ns("client")
    verdicts: Counter[str] = Counter()
    with lab.link_down():
        for i in range(REPEAT):
            db = lab.tmp / f"offline-{i}.db"
            done = subprocess.run(["ip", "netns", "exec", client, BLOCKWATCH, "run",
                                   "--config", str(lab.config("censored", db)), "--quiet"],
                                  capture_output=True, text=True, timeout=300, check=False)
            assert done.returncode == 4, done.stderr  # network unavailable
            with open_store(f"sqlite:///{db}") as store:
                [run] = store.runs(limit=10)
                assert run.status == "network_unavailable"
                verdicts.update(v.verdict for v in store.verdicts(run_id=run.id)
                                if v.measurement_id is None)
    print(f"\noffline: {REPEAT} runs: {dict(verdicts)}")
    assert set(verdicts) == {"network_unavailable"}, verdicts


