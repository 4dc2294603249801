"""The ech probe in the lab: the lab's nginx answers every hello (plain, GREASE, and the real
config that torproject's names publish in their HTTPS record at the lab's DNS), and the censor's
``ech_block`` (an NFQUEUE filter that reads each ClientHello with scapy and resets those
carrying ECH) is judged at layer ech from one vantage. The sweeps are the ones tests/lab/
test_methods.py makes (memoised), so this file adds no sweep of its own; the verdict against a
control vantage is checked in tests/lab/test_control_vantage.py with every method."""

from __future__ import annotations

from typing import Any

from blockwatch.lab.scenario import load
from blockwatch.lab.services import ECH_SERVICES, LAB_ECH, lab_catalogue

CATALOGUE = lab_catalogue()
METHODS_SCENARIO = load("methods", CATALOGUE.services)
BLOCKED = METHODS_SCENARIO.services_with("ech_block")


def ech_rows(sweep: Any, service: str | None = None) -> list[dict[str, Any]]:
    return [r for r in sweep.rows if r["probe"] == "ech"
            and (service is None or r["service"] == service)]


def hellos(row: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in row["observations"] if o["layer"] == "ech" and o["kind"] == "hello"]


def test_without_censorship_every_hello_is_answered(sweeps) -> None:
    got = sweeps("none", "censored")
    rows = ech_rows(got)
    assert {r["service"] for r in rows} >= set(CATALOGUE.services) - {"labvpn"}
    assert {(r["failure"], r["verdict"]) for r in rows} == {(None, "ok")}, [
        (r["target"], r["failure"]) for r in rows if r["failure"]]
    assert {o["outcome"] for r in rows for o in hellos(r)} == {"server_hello"}
    # the real-config path: the HTTPS record's config is sent, with its public name
    for service in ECH_SERVICES:
        for r in ech_rows(got, service):
            if not r["target"].endswith(":443"):
                continue
            records = [o for o in r["observations"] if o["layer"] == "ech"
                       and o["kind"] == "https_record"]
            assert records and records[0]["ech_config_ids"] == [LAB_ECH.config_id], r
            real = [o for o in hellos(r) if o["variant"] == "real"]
            assert real and {o["sni"] for o in real} == {LAB_ECH.public_name}, r
    assert {r["service"] for r in rows if any(o["variant"] == "real" for o in hellos(r))} \
        == set(ECH_SERVICES)


def test_ech_block_is_ech_blocking_from_one_vantage(sweeps) -> None:
    got = sweeps("methods", "censored")
    (service,) = BLOCKED
    rows = [r for r in ech_rows(got, service) if r["target"].endswith(":443")]
    assert rows
    for r in rows:
        assert (r["verdict"], r["rule_id"], r["failure"]) == (
            "ech_blocked", "ech.plain_only", "connection_reset"), r
        by = {(o["address"], o["variant"]): o["outcome"] for o in hellos(r)}
        assert {v for (_, variant), v in by.items() if variant == "plain"} == {"server_hello"}
        assert {v for (_, variant), v in by.items() if variant != "plain"} == {"reset"}
        assert {variant for (_, variant) in by} == {"plain", "grease", "real"}
    v = got.services[service]
    assert (v.verdict, v.layer) == ("partial", "ech"), v
    # nothing else is ECH blocking: the SNI reset and the data reset hit every hello alike
    others = [r for r in ech_rows(got) if r["service"] not in BLOCKED]
    assert not [r for r in others if r["verdict"] == "ech_blocked"]
