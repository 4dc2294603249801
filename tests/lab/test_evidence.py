"""Issue #4's verdicts, end to end through the real ``blockwatch run`` and the stored results.

Scenario ``evidence`` (``blockwatch.lab.scenario.EVIDENCE`` and ``dns_poison_known``): a
national block page over HTTP recognised by a shipped fingerprint, a known forged DNS address
recognised by a shipped fingerprint (and never contacted), a server down for everybody; and a
dead local network, made by taking the censored client's link down, called
``network_unavailable``. Sweeps name only the scenario's services, so this module adds seconds.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from blockwatch.analysis.verdicts import BLOCKED, builtin_fingerprints
from blockwatch.lab.censor import KNOWN_FORGED
from blockwatch.lab.runner import service_verdicts
from blockwatch.lab.scenario import ALL_METHODS, EVIDENCE, expected, expected_control, load, shipped
from blockwatch.lab.services import NATIONAL_BLOCK_PAGE, lab_catalogue, opt_in_toml
from blockwatch.lab.topology import LAB_NET, LAB_NET6

from .conftest import BLOCKWATCH, Lab, Sweep

CATALOGUE = lab_catalogue()
KNOWN = CATALOGUE.known()
SCENARIO = load("evidence", KNOWN)
BY_METHOD = {ms[0]: svc for svc, ms in SCENARIO.blocks.items()}
SERVICES = sorted(SCENARIO.blocks)
OPT_IN = opt_in_toml([s for s in SERVICES if s in CATALOGUE.opt_in])
CONTROL_VANTAGE = '\n[analysis]\ncontrol_vantages = ["lab-control"]\n'


def _want(service: str) -> tuple[str, str | None]:
    e = expected(SCENARIO.blocks[service], KNOWN[service].exclusive_prefixes)
    return e.verdict, e.layer


# --- the scenario is what it claims to be -----------------------------------------------------


def test_the_evidence_scenario_covers_every_evidence_method() -> None:
    assert set(EVIDENCE) | {"dns_poison_known"} == set(BY_METHOD)
    assert all(len(ms) == 1 for ms in SCENARIO.blocks.values())


def test_evidence_services_are_touched_by_no_other_method() -> None:
    for name in shipped():
        other = load(name, KNOWN)
        for service, methods in SCENARIO.blocks.items():
            assert set(other.blocks.get(service, ())) <= set(methods), (name, service)
            assert service not in other.expect, (name, service)


def test_the_lab_copies_are_recognised_by_shipped_fingerprints_only() -> None:
    fps = builtin_fingerprints()  # what a sweep uses: the lab's configs add no fingerprints
    dns = fps.match_dns(KNOWN_FORGED)
    assert dns is not None and dns.strong, dns
    http = [m for m in fps.match_http(NATIONAL_BLOCK_PAGE, ()) if m.fingerprint.strong]
    assert [m.fingerprint.name for m in http] == ["bw.http.ir_peyvandha_iframe"]
    assert not KNOWN[BY_METHOD["dns_poison_known"]].exclusive_prefixes


# --- sweeps ---------------------------------------------------------------------------------


def _blockwatch_run(lab: Lab, role: str, cfg: Path) -> tuple[int, str]:
    done = subprocess.run(["ip", "netns", "exec", lab.ns(role), BLOCKWATCH, "run", "--config",
                           str(cfg), "--json"], capture_output=True, text=True, timeout=300,
                          check=False)
    return done.returncode, done.stdout + done.stderr


def _run_of(db: Path) -> Any:
    from blockwatch.storage import open_store

    with open_store(f"sqlite:///{db}") as store:
        return store.runs(limit=1)[0]


OUTSIDE = "bwtest_outside"


def _count_outside(lab: Lab, role: str) -> None:
    """A counter of every packet the client sends anywhere but the lab (nothing may). The
    kernel's own IPv6 neighbour discovery and MLD on the lab's links stay on the link
    (link-local and multicast destinations) and are not counted."""
    subprocess.run(["ip", "netns", "exec", lab.ns(role), "nft", "-f", "-"], check=True, text=True,
                   input=f"""table inet {OUTSIDE} {{
  chain out {{
    type filter hook output priority 0; policy accept;
    oifname != "lo" ip daddr != {LAB_NET} counter
    oifname != "lo" ip6 daddr != {{ fe80::/10, ff00::/8, {LAB_NET6} }} counter
  }}
}}
""")


def _packets_outside(lab: Lab, role: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", lab.ns(role), "nft", "-j", "list", "table",
                          "inet", OUTSIDE], capture_output=True, text=True, check=True).stdout
    return sum(e["rule"]["expr"][-1]["counter"]["packets"] for e in json.loads(out)["nftables"]
               if "rule" in e)


@dataclass
class Evidence:
    alone: Sweep  # the censored client, one run, no control
    control: Sweep  # the control client's own run
    with_control: dict[str, Any]  # the censored client's service verdicts against the control
    shared: list[dict[str, Any]]  # that run's measurements (export rows), with their verdicts
    outside: dict[str, int]  # packets each client sent outside the lab during its sweeps


@pytest.fixture(scope="module")
def evidence(lab: Lab) -> Iterator[Evidence]:
    kw = {"services": SERVICES, "extra": OPT_IN}
    for role in ("client", "control"):
        _count_outside(lab, role)
    try:
        alone = lab.sweep("censored", "evidence", label="-alone", **kw)
        control = lab.sweep("control", "evidence", label="-shared", **kw)
        db = lab.tmp / "evidence-shared-control.db"  # the control's sweep went there
        cfg = lab.config("censored", db, services=SERVICES, extra=OPT_IN + CONTROL_VANTAGE)
        code, said = _blockwatch_run(lab, "client", cfg)
        assert code == 0, said
        run_id = _run_of(db).id
        with_control = service_verdicts(db, run_id)
        exported = subprocess.run([BLOCKWATCH, "export", "--config", str(cfg), "--format",
                                   "jsonl"], capture_output=True, text=True, check=True).stdout
        shared = [r for r in map(json.loads, exported.splitlines()) if r["run_id"] == run_id]
        outside = {role: _packets_outside(lab, role) for role in ("client", "control")}
    finally:
        for role in ("client", "control"):
            subprocess.run(["ip", "netns", "exec", lab.ns(role), "nft", "delete", "table", "inet",
                            OUTSIDE], check=False, capture_output=True)
    yield Evidence(alone, control, with_control, shared, outside)


def test_nothing_left_the_lab(evidence: Evidence) -> None:
    # the forged answer is a public address: the scope allow-list refuses it before any packet
    assert evidence.outside == {"client": 0, "control": 0}


@pytest.mark.parametrize("service", SERVICES)
def test_one_run_of_the_censored_client(evidence: Evidence, service: str) -> None:
    v = evidence.alone.services[service]
    assert (v.verdict, v.layer or None) == _want(service), v


@pytest.mark.parametrize("service", SERVICES)
def test_the_control_clients_own_run(evidence: Evidence, service: str) -> None:
    v = evidence.control.services[service]
    assert v.verdict == expected_control(SCENARIO, service).verdict, v


@pytest.mark.parametrize("service", SERVICES)
def test_against_the_control_vantage(evidence: Evidence, service: str) -> None:
    v = evidence.with_control[service]
    assert (v.verdict, v.layer or None) == ALL_METHODS[SCENARIO.blocks[service][0]].with_control, v


def test_national_block_page_by_its_shipped_fingerprint(evidence: Evidence) -> None:
    service = BY_METHOD["http_blockpage_national"]
    assert evidence.alone.services[service].details["rules"] == ["http.blockpage_fingerprint"]
    fetched = [r for r in evidence.alone.measurements(service) if r["probe"] == "http"]
    assert fetched and all(r["rule_id"] == "http.blockpage_fingerprint" for r in fetched), fetched
    pages = [o for r in fetched for o in r["observations"] if o["layer"] == "http"]
    assert {(o["status"], o["failure"]) for o in pages} == {(403, None)}, pages
    # the control client fetches the lab's real page at the same URL
    real = [o for r in evidence.control.measurements(service) if r["probe"] == "http"
            for o in r["observations"] if o["layer"] == "http"]
    assert real and {o["status"] for o in real} == {200}, real


def test_known_forged_address_by_its_shipped_fingerprint(evidence: Evidence) -> None:
    service = BY_METHOD["dns_poison_known"]
    assert evidence.alone.services[service].details["rules"] == ["dns.fingerprint"]
    rows = evidence.alone.measurements(service)
    tested = [r for r in rows if r["probe"] == "dns" and r["verdict"] is not None]
    assert tested and {r["rule_id"] for r in tested} == {"dns.fingerprint"}, tested
    # every connection the answer led to was refused by the scope allow-list, before a packet
    others = [r for r in rows if r["probe"] != "dns"]
    assert others and {(r["failure"], r["rule_id"]) for r in others} == {
        ("out_of_scope", "scope.refused")}, others
    addresses = {o.get("address") for r in others for o in r["observations"]
                 if o["layer"] == "tcp"}
    assert addresses == {KNOWN_FORGED}, addresses


def test_server_down_fails_alike_for_both_clients(evidence: Evidence) -> None:
    service = BY_METHOD["server_down"]
    for sweep in (evidence.alone, evidence.control):
        failed = {r["failure"] for r in sweep.measurements(service) if r["probe"] != "dns"}
        assert failed == {ALL_METHODS["server_down"].failure}, failed
    # each connection, handshake and fetch failed at the control too: "down", never blocked
    judged = [r for r in evidence.shared if r["service"] == service]
    assert judged and not [r for r in judged if r["verdict"] in BLOCKED], judged
    failed = [r for r in judged if r["probe"] != "dns"]
    rules = {(r["verdict"], r["rule_id"]) for r in failed}
    # the quic probe's own rule says it of QUIC (analysis/quic.py)
    assert failed and ("down", "failure.same_as_control") in rules and rules <= {
        ("down", "failure.same_as_control"), ("down", "quic.same_as_control")}, failed
    assert evidence.with_control[service].verdict != "blocked"


def test_a_server_down_everywhere_is_called_down(evidence: Evidence) -> None:
    v = evidence.with_control[BY_METHOD["server_down"]]
    assert (v.verdict, v.rule_id) == ("down", "service.down"), v


# --- a dead local network --------------------------------------------------------------------


def test_dead_local_network_is_network_unavailable(lab: Lab) -> None:
    lab.use("evidence")
    client = lab.ns("client")
    db = lab.tmp / "dead-network.db"
    cfg = lab.config("censored", db, extra=OPT_IN)  # every service: none is probed
    with lab.link_down():
        routes = subprocess.run(["ip", "-n", client, "route"], capture_output=True, text=True,
                                check=True).stdout
        assert routes.strip() == "", routes  # no way out: the link and its routes are gone
        code, said = _blockwatch_run(lab, "client", cfg)
        assert code == 4, said
        assert "network unavailable" in said
        run = _run_of(db)
        assert run.status == "network_unavailable"
        got = service_verdicts(db, run.id)
        assert set(got) == set(CATALOGUE.services) | set(CATALOGUE.opt_in)
        assert {(v.verdict, v.rule_id) for v in got.values()} == {
            ("network_unavailable", "service.network_unavailable")}
        assert not [s for s, v in got.items() if v.verdict == "blocked"]
    # the network is back: a normal sweep works and sees the censor again
    again = lab.sweep("censored", "evidence", label="-after-outage", services=SERVICES,
                      extra=OPT_IN)
    assert _run_of(lab.tmp / "evidence-after-outage-censored.db").status == "complete"
    assert {s: (v.verdict, v.layer or None) for s, v in again.services.items()} == {
        s: _want(s) for s in SERVICES}
