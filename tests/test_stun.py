"""The stun probe against a real STUN server (coturn's turnserver, --stun-only, on loopback),
hostile replies from a loopback socket, its planner, its rules and its storage shape."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from judging import judge_run

from blockwatch.probes import failures as F
from blockwatch.probes import registry
from blockwatch.probes.context import ProbeContext, ProbeResult, Timeouts
from blockwatch.probes.model import (
    Endpoint,
    Measurement,
    Service,
    Target,
    observation_from_dict,
    observation_to_dict,
)
from blockwatch.probes.openvpn import udp_send_times
from blockwatch.probes.scope import Scope
from blockwatch.probes.stun import (
    MAGIC_COOKIE,
    MALFORMED,
    STUNObservation,
    STUNProbe,
    parse_binding_reply,
)
from blockwatch.scheduler.plan import plan_service

TURNSERVER = shutil.which("turnserver") or (
    "/usr/bin/turnserver" if Path("/usr/bin/turnserver").exists() else None)
needs_turnserver = pytest.mark.skipif(
    TURNSERVER is None and not os.environ.get("BLOCKWATCH_REQUIRE_LAB"),
    reason="Debian package coturn not installed (bash scripts/install-lab-deps.sh)")


def free_udp_port() -> int:  # for a closed port: nothing listens there
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _port_for_server() -> int:
    """A port below the ephemeral range (so no client socket of another test takes it between
    our check and the server's bind), free for UDP and TCP (coturn listens on both)."""
    while True:
        port = random.randrange(20000, 30000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
            try:
                u.bind(("127.0.0.1", port))
                t.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def _answers(port: int, wait: float) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(wait)
        s.sendto(struct.pack(">HHI", 1, 0, MAGIC_COOKIE) + b"r" * 12, ("127.0.0.1", port))
        try:
            s.recv(2048)
        except OSError:
            return False
        return True


@contextmanager
def stun_server(tmp_path: Path) -> Iterator[int]:
    """coturn as a plain STUN server on a free loopback port, its files in ``tmp_path``; a
    start that does not answer within 5 s is retried on another port (twice)."""
    assert TURNSERVER is not None, "coturn is not installed"
    for attempt in range(3):
        port = _port_for_server()
        log = tmp_path / f"turnserver-{attempt}.log"
        argv = [TURNSERVER, "--stun-only", "--listening-ip", "127.0.0.1", "--listening-port",
                str(port), "--no-tls", "--no-dtls", "--no-cli", "--simple-log",
                "--log-file", str(log), "--pidfile", str(tmp_path / "turnserver.pid"),
                "--userdb", str(tmp_path / "turndb"), "--no-stdout-log"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 5
            while proc.poll() is None and time.monotonic() < deadline:
                if _answers(port, 0.2):
                    yield port
                    return
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    told = "\n".join(p.read_text(errors="replace")[-800:] for p in tmp_path.glob("turnserver*"))
    raise AssertionError(f"turnserver never answered (3 starts); its logs:\n{told}")


def ctx(tcp: float = 1.5) -> ProbeContext:
    return ProbeContext(scope=Scope.loopback(), timeouts=Timeouts(dns=1, tcp=tcp, tls=1, http=1))


def target(port: int, host: str = "127.0.0.1") -> Target:
    return Target(service="calls", probe="stun", host=host, port=port, transport="udp")


def only(result: ProbeResult) -> STUNObservation:
    [o] = [o for o in result.observations if isinstance(o, STUNObservation)]
    return o


@needs_turnserver
async def test_a_real_stun_server_answers_and_our_address_is_not_kept(tmp_path: Path) -> None:
    with stun_server(tmp_path) as port:
        result = await STUNProbe().observe(target(port), ctx())
    o = only(result)
    assert (result.failure, o.result, o.address, o.port) == (None, "binding_success",
                                                             "127.0.0.1", port)
    assert "XOR-MAPPED-ADDRESS" in o.attributes  # what coturn answers with
    assert o.software and "Coturn" in o.software
    # the mapped address (the vantage's own, here 127.0.0.1) is not among the stored facts:
    stored = json.dumps(observation_to_dict(o))
    assert stored.count("127.0.0.1") == 1  # the server's address only


async def test_silence_is_no_reply_after_resends() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        result = await STUNProbe().observe(target(s.getsockname()[1]), ctx(tcp=1.0))
        s.setblocking(False)
        got = []
        while True:
            try:
                got.append(s.recv(2048))
            except BlockingIOError:
                break
    o = only(result)
    assert (o.result, result.failure, result.operation) == (
        "no_reply", F.GENERIC_TIMEOUT, "stun_binding")
    assert len(got) == len(udp_send_times(1.0))  # one lost datagram is not a silent server
    assert len({g[8:20] for g in got}) == 1  # the same transaction, resent


async def test_closed_port_is_icmp_unreachable() -> None:
    port = free_udp_port()
    result = await STUNProbe().observe(target(port), ctx())
    assert (only(result).result, result.failure) == ("icmp_unreachable", F.CONNECTION_REFUSED)


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 400 Bad Request\r\n\r\n",  # not STUN
    b"\x01\x01\x00\x00" + struct.pack(">I", MAGIC_COOKIE) + b"x" * 12,  # another transaction
    b"\x01\x01",  # short
])
async def test_a_reply_that_is_not_ours_is_malformed(reply: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)

        async def answer() -> None:
            loop = asyncio.get_running_loop()
            _, addr = await loop.sock_recvfrom(s, 2048)
            await loop.sock_sendto(s, reply, addr)

        task = asyncio.create_task(answer())
        result = await STUNProbe().observe(target(s.getsockname()[1]), ctx())
        await task
    assert (only(result).result, result.failure) == ("malformed", MALFORMED)


def test_parse_rejects_hostile_lengths_and_keeps_software_short() -> None:
    tx = b"t" * 12
    head = struct.pack(">HHI", 0x0101, 8, MAGIC_COOKIE) + tx
    with pytest.raises(ValueError, match="runs past"):
        parse_binding_reply(head + struct.pack(">HH", 0x8022, 400) + b"abcd", transaction_id=tx)
    with pytest.raises(ValueError, match="length field"):
        parse_binding_reply(head, transaction_id=tx)
    software = b"\x1b[31m" + b"A" * 200  # a terminal escape and too much of it: data, cut
    pad = -len(software) % 4
    body = struct.pack(">HH", 0x8022, len(software)) + software + b"\0" * pad
    error = struct.pack(">HH", 0x0009, 4) + bytes([0, 0, 4, 20])  # 420 Unknown Attribute
    msg = struct.pack(">HHI", 0x0111, len(body) + len(error), MAGIC_COOKIE) + tx + body + error
    reply = parse_binding_reply(msg, transaction_id=tx)
    assert reply.error_code == 420 and reply.attributes == ("SOFTWARE", "ERROR-CODE")
    assert reply.software is not None and len(reply.software) == 80


def test_out_of_scope_sends_nothing() -> None:
    c = ProbeContext(scope=Scope.from_entries(["10.0.0.0/8"]), timeouts=Timeouts(tcp=0.5))
    result = asyncio.run(STUNProbe().observe(target(3478), c))
    assert (only(result).result, result.failure) == ("not_sent", F.OUT_OF_SCOPE)


# --- planning, rules and storage, all from the registry line ------------------------------------

CALLS = Service(name="calls", title="Calls", category="messaging",
                endpoints=(Endpoint(host="stun.calls.test", port=3478, transport="udp"),
                           Endpoint(host="media.calls.test", port=3479, transport="udp"),
                           Endpoint(host="stun.calls.test", port=443)))


def test_planned_from_udp_endpoints_on_stun_ports_only_when_selected() -> None:
    assert not [t for t in plan_service(CALLS, probes=registry.DEFAULT_SELECTION,
                                        resolvers=["system"]) if t.probe == "stun"]
    [t] = plan_service(CALLS, probes=["stun"], resolvers=["system"])
    assert (t.probe, t.host, t.port, t.key) == ("stun", "stun.calls.test", 3478,
                                                "udp://stun.calls.test:3478")


NOW = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)


def measured(vantage: str, result: str, failure: str | None) -> Measurement:
    o = STUNObservation(address="192.0.2.7", port=3478, t0=0, t=1.0, result=result,
                        failure=failure)
    return Measurement(id=f"{vantage}-1", run_id="r", vantage=vantage, probe_version="1",
                       started_at=NOW, runtime_s=1.0, target=target(3478, "stun.calls.test"),
                       observations=(o,), failure=failure,
                       failed_operation="stun_binding" if failure else None)


@pytest.mark.parametrize(("control", "verdict", "rule"), [
    ("binding_success", "stun_blocked", "stun.failure_vs_control"),
    ("no_reply", "down", "stun.same_as_control"),
    (None, "inconclusive", "stun.no_control"),
])
def test_silence_is_blocking_only_against_an_answering_control(
        control: str | None, verdict: str, rule: str) -> None:
    ms = [measured("home", "no_reply", F.GENERIC_TIMEOUT)]
    if control is not None:
        ms.append(measured("vps", control, None if control == "binding_success"
                           else F.GENERIC_TIMEOUT))
    out = {v.measurement_id: v for v in judge_run(ms, {"calls": CALLS}, [],
                                                   control_vantages=["vps"])}
    assert (out["home-1"].verdict, out["home-1"].rule_id) == (verdict, rule)
    service = out[None]
    assert service.verdict == {"stun_blocked": "blocked"}.get(verdict, verdict)
    if verdict == "stun_blocked":
        assert service.layer == "stun"


def test_an_answer_is_ok() -> None:
    out = judge_run([measured("home", "binding_success", None)], {"calls": CALLS}, [])
    assert {(v.measurement_id, v.verdict) for v in out} == {("home-1", "ok"), (None, "ok")}


def test_its_observation_is_stored_and_loaded_through_the_registry() -> None:
    o = STUNObservation(address="192.0.2.7", port=3478, t0=0.5, t=1.0, result="binding_error",
                        attributes=("ERROR-CODE",), error_code=400, software="x")
    stored = json.loads(json.dumps(observation_to_dict(o)))
    assert stored["layer"] == "stun"
    assert observation_from_dict(stored) == o
    assert dataclasses.asdict(observation_from_dict(stored)) == dataclasses.asdict(o)


def test_its_own_knobs_come_from_a_probe_table_of_the_config(tmp_path: Path) -> None:
    """[probe.stun] is checked by the model the registry line names (STUNSettings) and reaches
    the planner; no config, planner or context code names the probe."""
    from blockwatch.app import plan
    from blockwatch.config import ConfigError, parse_config
    from blockwatch.probes.stun import STUNSettings

    base = ('[probes]\nprobes = ["stun"]\nservices = []\n[[services]]\nname = "calls"\n'
            'endpoints = ["udp://stun.calls.test:3478", "udp://media.calls.test:3479"]\n')
    cfg = parse_config(base, str(tmp_path / "bw.toml"))
    assert cfg.probe_settings()["stun"] == STUNSettings()
    calls = cfg.catalogue()["calls"]
    assert [t.port for t in plan(cfg, [calls])] == [3478]
    cfg = parse_config(base + "[probe.stun]\nports = [3479]\n", str(tmp_path / "bw.toml"))
    assert [t.port for t in plan(cfg, [calls])] == [3479]
    for bad, says in [("[probe.stun]\nports = [70000]\n", "probe.stun.ports.0"),
                      ("[probe.stun]\nport = 1\n", "probe.stun.port"),
                      ("[probe.smtp]\nx = 1\n", "no probe 'smtp' with settings")]:
        with pytest.raises(ConfigError, match=re.escape(says)):
            parse_config(base + bad, str(tmp_path / "bw.toml"))
