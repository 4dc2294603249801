"""Every censor method, end to end: the affected service's verdict, layer and failures from
the censored client are what analyzer v1 must say (``blockwatch.lab.scenario.METHODS``), the
control client sees it ``ok``, and every untouched service is ``ok`` from both."""

from __future__ import annotations

import pytest

from blockwatch.analysis.verdicts import ANALYZER_VERSION
from blockwatch.lab.scenario import ANALYZER, METHODS, expected, expected_for, load
from blockwatch.lab.services import lab_catalogue

CATALOGUE = lab_catalogue()
METHODS_SCENARIO = load("methods", CATALOGUE.services)
BY_METHOD = {ms[0]: svc for svc, ms in METHODS_SCENARIO.blocks.items()}


def test_the_methods_scenario_covers_every_method() -> None:
    assert set(BY_METHOD) == set(METHODS)


def test_expectations_match_the_analyzer_version() -> None:
    assert ANALYZER_VERSION == ANALYZER, (
        f"the lab's expected verdicts (blockwatch/lab/scenario.py) were checked against analyzer "
        f"v{ANALYZER}; the analyzer is now v{ANALYZER_VERSION}: re-check METHODS and expected()")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_seen_from_censored_client(sweeps, method: str) -> None:
    service = BY_METHOD[method]
    got = sweeps("methods", "censored")
    exp = expected((method,), CATALOGUE.services[service].exclusive_prefixes)
    v = got.services[service]
    assert (v.verdict, v.layer or None) == (exp.verdict, exp.layer), v
    rows = got.measurements(service)
    if exp.layer == "dns":
        # the tested resolver's answers carry the evidence (TCP/TLS/HTTP then meet the poisoned
        # address: a timeout, or out_of_scope for a bogon, which is never contacted)
        rows = [r for r in rows if r["probe"] == "dns" and r["verdict"] is not None]
        assert {r["verdict"] for r in rows} == {"dns_blocked"}, rows
    failures = {r["failure"] for r in rows if r["failure"]}
    assert failures == ({exp.failure} if exp.failure else set()), rows


@pytest.mark.parametrize("service", sorted(METHODS_SCENARIO.blocks))
def test_blocked_service_is_ok_from_control_client(sweeps, service: str) -> None:
    v = sweeps("methods", "control").services[service]
    assert v.verdict == "ok", v


def test_untouched_services_are_ok_from_censored_client(sweeps) -> None:
    got = sweeps("methods", "censored")
    untouched = set(CATALOGUE.services) - set(METHODS_SCENARIO.blocks)
    assert untouched  # the scenario leaves some alone on purpose
    assert {s: got.services[s].verdict for s in untouched} == dict.fromkeys(untouched, "ok")


def test_delay_slows_the_service_without_blocking_it(sweeps) -> None:
    service = BY_METHOD["delay"]
    delay_s = METHODS_SCENARIO.option("delay_ms") / 1000

    def connects(client: str) -> list[float]:
        """Durations of the successful TCP handshakes with the service's addresses."""
        rows = sweeps("methods", client).measurements(service)
        return [o["t"] - o["t0"] for r in rows if r["probe"] == "tcp"
                for o in r["observations"] if o["layer"] == "tcp" and o["failure"] is None]

    censored, control = connects("censored"), connects("control")
    assert censored and control
    # a TCP connect is one round trip: the SYN and the SYN-ACK each wait delay_ms
    assert min(censored) >= 2 * delay_s * 0.9, censored
    assert max(control) < delay_s, control


def test_dns_injection_recorded_two_responses(sweeps) -> None:
    got = sweeps("methods", "censored")
    rows = [r for r in got.measurements(BY_METHOD["dns_injection"])
            if r["probe"] == "dns" and r["verdict"] == "dns_blocked"]
    assert rows and all(r["rule_id"] == "dns.injection.multiple_responses" for r in rows)


@pytest.mark.parametrize("scenario", ["none", "cn-2014"])
def test_scenario_verdicts(sweeps, scenario: str) -> None:
    sc = load(scenario, CATALOGUE.services)
    got = sweeps(scenario, "censored")
    want = {s: (e.verdict, e.layer) for s, svc in CATALOGUE.services.items()
            for e in [expected_for(sc, s, svc.exclusive_prefixes)]}
    assert {s: (v.verdict, v.layer or None) for s, v in got.services.items()} == want


def test_control_client_sees_everything_ok(sweeps) -> None:
    got = sweeps("none", "control")
    assert {v.verdict for v in got.services.values()} == {"ok"}
    assert set(got.services) == set(CATALOGUE.services)




# 1194 has a real OpenVPN server on labvpn's address only: tests/lab/test_vpn.py covers it
@pytest.mark.parametrize("port", [51820])
def test_udp_drop_silences_vpn_ports_for_censored_client_only(lab, port: int) -> None:
    lab.use("methods")
    address = CATALOGUE.address[BY_METHOD["udp_drop"]]
    untouched = CATALOGUE.address["torproject"]

    assert lab.udp_echoes("client", address, port) == 0
    assert lab.udp_echoes("control", address, port) == 3
    assert lab.udp_echoes("client", untouched, port) == 3
