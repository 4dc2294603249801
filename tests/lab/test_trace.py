"""The trace probe end to end in the lab, through the real CLI inside the clients' namespaces.

The censor is the router between the censored client (10.201.1.2) and the server: a packet with
IP TTL 1 expires there (time exceeded from 10.201.1.1), TTL 2 meets the censor's rules and the
server. The server's SYN-ACK crosses the router (TTL 63 at the client); a RST the router makes
itself leaves with TTL 64. The control client reaches the server over its own link.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from blockwatch.analysis.trace import read
from blockwatch.probes.model import observation_from_dict

ROUTER = "10.201.1.1"
PROBES = ["tcp", "tls", "trace"]


def raw_observations(sweep: Any, service: str) -> list[dict[str, Any]]:
    """The stored facts of each IPv4 trace, with the analysis's reading of them beside."""
    rows = [r for r in sweep.measurements(service) if r["probe"] == "trace"]
    assert rows, f"no trace measurement of {service}"
    # the evidence is a finding, not a failure of the probe
    assert {r["failure"] for r in rows} == {None}, rows
    raw = [o for r in rows for o in r["observations"] if o["layer"] == "raw"]
    # the lab is dual-stack and the trace probe is IPv4 only: it says so for the IPv6 addresses
    six = [o for o in raw if ":" in o["address"]]
    assert six and {(o["capture"], o["failure"]) for o in six} == {
        (False, "ipv6_not_supported")}, six
    found = [o for o in raw if ":" not in o["address"]]
    assert found and all(o["capture"] for o in found), found
    readings = [dataclasses.asdict(read(observation_from_dict(o))) for o in found]
    assert not any(k in o for o in found for k in readings[0]), found  # facts only, stored
    return [{**o, **r} for o, r in zip(found, readings, strict=True)]


@pytest.fixture(scope="module")
def censored(sweeps: Any) -> Any:
    return sweeps("methods", "censored", label="trace", probes=PROBES,
                  services=["google", "signal", "line", "facebook"])


@pytest.fixture(scope="module")
def control(sweeps: Any) -> Any:
    return sweeps("methods", "control", label="trace", probes=PROBES,
                  services=["google", "facebook"])


@pytest.mark.parametrize("service", ["google", "signal"])  # SNI RST (iptables), RST on data
def test_reset_after_data_is_forged_and_located(censored: Any, service: str) -> None:
    for o in raw_observations(censored, service):
        assert o["mode"] == "tls" and o["reply"] == "rst", o
        assert o["synack"]["ttl"] == 63, o  # the server, one router away
        assert o["resets"] and {r["after"] for r in o["resets"]} == {"data"}, o
        assert {r["ttl"] for r in o["resets"]} == {64}, o  # made by the router itself
        assert o["forged_rst"] is not None and o["forged_rst"].startswith("ttl 64 vs syn-ack 63")
        assert o["rst_fingerprint"] is None  # the lab's censor is none of the GFW's types
        assert o["hops"][0] == {"ttl": 1, "result": "time_exceeded", "from": ROUTER}, o
        assert o["hops"][1]["result"] == "rst", o
        assert (o["interference_ttl"], o["interference"], o["last_hop"]) == (2, "rst", ROUTER)
        assert o["server_ttl"] is None


def test_syn_drop_is_located_after_the_router(censored: Any) -> None:
    for o in raw_observations(censored, "line"):
        assert o["reply"] == "timeout" and o["synack"] is None and o["resets"] == [], o
        results = [h["result"] for h in o["hops"]]
        assert results == ["time_exceeded", "silent", "silent", "silent"], o
        assert o["hops"][0]["from"] == ROUTER
        assert (o["interference_ttl"], o["interference"], o["last_hop"]) == (2, "drop", ROUTER)
        assert o["forged_rst"] is None


def test_untouched_service_shows_no_interference(censored: Any) -> None:
    for o in raw_observations(censored, "facebook"):
        assert o["reply"] == "data" and o["synack"]["ttl"] == 63, o
        assert o["resets"] == [] and o["hops"] == [] and o["forged_rst"] is None, o
        assert o["interference_ttl"] is None and o["interference"] is None, o


@pytest.mark.parametrize("service", ["google", "facebook"])
def test_control_client_sees_no_interference(control: Any, service: str) -> None:
    for o in raw_observations(control, service):
        assert o["reply"] == "data" and o["synack"]["ttl"] == 64, o  # no router in between
        assert o["resets"] == [] and o["hops"] == [] and o["forged_rst"] is None, o
        assert o["interference"] is None, o
