"""The verdict rules on raw-packet evidence (probes/trace.py observations): a forged RST or
interference that begins before the server's distance is blocking without a control; anything
else is a located fact, and a trace that could not run takes nothing away from a service."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from judging import judge_run

from blockwatch.analysis.verdicts import RULES
from blockwatch.probes.model import Measurement, RawObservation, Target, TCPObservation

NOW = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
SYNACK = {"ttl": 52, "ipid": 0, "df": True, "window": 65160}


def raw(**kw: Any) -> RawObservation:
    base: dict[str, Any] = {"address": "203.0.113.5", "port": 443, "mode": "tls",
                            "sni": "blocked.example", "t0": 0.0, "t": 1.0, "capture": True,
                            "synack": SYNACK, "reply": "data"}
    return RawObservation(**{**base, **kw})


def trace(obs: RawObservation, mid: str = "t1", failure: str | None = None) -> Measurement:
    return Measurement(id=mid, run_id="r", vantage="v", probe_version="1", started_at=NOW,
                       runtime_s=1.0, observations=(obs,), failure=failure,
                       failed_operation="raw_capture" if failure else None,
                       target=Target(service="svc", probe="trace", host="blocked.example",
                                     port=obs.port, sni=obs.sni,
                                     options=(("mode", obs.mode),)))


def tcp_ok(mid: str = "c1") -> Measurement:
    return Measurement(id=mid, run_id="r", vantage="v", probe_version="1", started_at=NOW,
                       runtime_s=0.1, target=Target(service="svc", probe="tcp",
                                                    host="blocked.example", port=443),
                       observations=(TCPObservation(address="203.0.113.5", port=443, t0=0,
                                                    t=0.1),))


def judged(*ms: Measurement) -> dict[str | None, Any]:
    return {v.measurement_id: v for v in judge_run(list(ms), {}, ())}


FORGED = {"ttl": 64, "ipid": 31337, "df": False, "window": 0, "flags": "R", "after": "data",
          "t": 0.2}
DISTANCE = 13  # SYNACK's IP TTL 52 from an initial 64: twelve routers, the server at TTL 13


def path(routers: int, *ends: str) -> tuple[dict[str, Any], ...]:
    """A TTL-limited search's facts: time-exceeded from 198.51.100.<ttl> for the first
    ``routers`` TTLs, then ``ends`` (rst, silent, ...) at the next ones."""
    hops = [{"ttl": t, "result": "time_exceeded", "from": f"198.51.100.{t}"}
            for t in range(1, routers + 1)]
    hops += [{"ttl": routers + i, "result": e, "from": "203.0.113.5" if e == "rst" else None}
             for i, e in enumerate(ends, 1)]
    return tuple(hops)


@pytest.mark.parametrize(("mode", "verdict"), [("tls", "tls_blocked"), ("http", "http_blocked"),
                                               ("syn", "tcp_blocked")])
def test_forged_rst_is_blocking_at_the_modes_layer(mode: str, verdict: str) -> None:
    obs = raw(mode=mode, reply="rst", resets=(FORGED,), hops=path(6, "rst"))
    v = judged(trace(obs))["t1"]
    assert (v.verdict, v.rule_id) == (verdict, f"raw.forged_rst.{_layer(mode)}")
    assert "ttl 64 vs syn-ack 52" in v.evidence and "after hop 198.51.100.6" in v.evidence
    assert v.details["interference_ttl"] == 7


def _layer(mode: str) -> str:
    return {"syn": "tcp"}.get(mode, mode)


SERVERS_RST = {**FORGED, "ttl": 52, "ipid": 0, "df": True}  # agrees with the SYN-ACK


def test_a_reset_to_a_packet_that_could_not_reach_the_server_is_blocking() -> None:
    # the RST agrees with the SYN-ACK (a careful injector), but it answered a ClientHello
    # whose TTL ran out at hop 5, eight hops short of the server
    obs = raw(reply="rst", resets=(SERVERS_RST,), hops=path(4, "rst"))
    v = judged(trace(obs))["t1"]
    assert (v.verdict, v.rule_id) == ("tls_blocked", "raw.before_server.tls")
    assert "rst begins at TTL 5, after hop 198.51.100.4" in v.evidence
    assert f"the server is {DISTANCE} by its SYN-ACK" in v.evidence
    assert v.details["server_distance"] == DISTANCE


def test_silence_at_ttls_that_reach_the_server_is_blocking() -> None:
    # the handshake worked; the ClientHello, sent with TTLs 13..15, was never even acknowledged
    obs = raw(reply="timeout", hops=path(DISTANCE - 1, "silent", "silent", "silent"))
    v = judged(trace(obs))["t1"]
    assert (v.verdict, v.rule_id) == ("tls_blocked", "raw.before_server.tls")
    assert f"drop begins at TTL {DISTANCE}, after hop 198.51.100.{DISTANCE - 1}" in v.evidence


@pytest.mark.parametrize("hops", [
    path(DISTANCE - 2, "silent", "silent", "silent"),  # silent up to DISTANCE + 1: the margin
    path(DISTANCE - 3, "rst"),  # a reset within PATH_MARGIN of the server's distance
    path(DISTANCE - 1, "rst"),  # the reset begins where the server is: it may be the server's
])
def test_interference_near_the_servers_distance_is_only_located(
        hops: tuple[dict[str, Any], ...]) -> None:
    """The way back may be longer or shorter than the way there: within PATH_MARGIN hops of the
    SYN-ACK's distance, nothing says the packet did not reach the server."""
    obs = raw(reply="rst" if hops[-1]["result"] == "rst" else "timeout",
              resets=(SERVERS_RST,) if hops[-1]["result"] == "rst" else (), hops=hops)
    v = judged(trace(obs))["t1"]
    assert (v.verdict, v.rule_id) == ("inconclusive", "raw.interference")
    assert f"begins at TTL {hops[-1]['ttl'] if hops[-1]['result'] == 'rst' else DISTANCE - 1}" \
        in v.evidence


def test_without_a_syn_ack_no_distance_and_no_claim() -> None:
    # the SYN itself is dropped (the lab's tcp_syn_drop): the server's distance is unknown
    obs = raw(mode="syn", reply="timeout", synack=None, hops=path(1, "silent", "silent",
                                                                    "silent"))
    v = judged(trace(obs))["t1"]
    assert (v.verdict, v.rule_id) == ("inconclusive", "raw.interference")
    assert "drop begins at TTL 2, after hop 198.51.100.1" in v.evidence


def test_clean_trace_is_ok_and_unavailable_trace_is_inconclusive() -> None:
    assert judged(trace(raw()))["t1"].rule_id == "raw.clean"
    blind = raw(capture=False, synack=None, reply=None, failure="raw_socket_unavailable")
    v = judged(trace(blind, failure="raw_socket_unavailable"))["t1"]
    assert (v.verdict, v.rule_id) == ("inconclusive", "raw.unavailable")


def test_trace_refused_by_scope_is_not_called_a_missing_capability() -> None:
    refused = raw(capture=False, synack=None, reply=None, failure="out_of_scope")
    m = dataclasses.replace(trace(refused, failure="out_of_scope"), failed_operation="connect")
    assert judged(m)["t1"].rule_id == "scope.refused"


def test_service_verdict_ignores_traces_that_prove_nothing() -> None:
    blind = raw(capture=False, synack=None, reply=None, failure="raw_socket_unavailable")
    out = judged(tcp_ok(), trace(blind, failure="raw_socket_unavailable"))
    assert out[None].rule_id == "service.ok"  # no CAP_NET_RAW does not make it inconclusive
    forged = raw(reply="rst", resets=(FORGED,))
    out = judged(tcp_ok(), trace(forged))
    assert (out[None].verdict, out[None].layer) == ("blocked", "tls")  # tcp below tls works


def test_every_trace_rule_is_documented_data() -> None:
    ids = {r for r in RULES if r.startswith("raw.")}
    assert ids == {*(f"raw.{k}.{layer}" for k in ("forged_rst", "before_server")
                     for layer in ("tcp", "tls", "http")),
                   "raw.interference", "raw.clean", "raw.unavailable"}


def test_raw_observation_survives_storage_shape() -> None:
    from blockwatch.probes.model import observation_from_dict, observation_to_dict

    obs = raw(resets=(FORGED,), hops=({"ttl": 1, "result": "time_exceeded", "from": "a"},))
    back = observation_from_dict(observation_to_dict(obs))
    assert dataclasses.asdict(back) == dataclasses.asdict(obs)
