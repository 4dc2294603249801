"""Issue #13 (6): raw-packet evidence by default, as a follow-up of failed TLS/HTTP exchanges.

Which failures are followed is checked on measurements; the engine's part (the follow-up runs,
its service is judged with it, the run's summary counts it) against real loopback servers, with
raw sockets where this process has them and in a subprocess whose bounding set lacks
CAP_NET_RAW otherwise.
"""

from __future__ import annotations

import datetime as dt
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from servers import LoopbackServer, blackhole_port, reset_on_data
from unprivileged import needs_raw, run_without_net_raw

from blockwatch.probes import failures as F
from blockwatch.probes.context import ProbeContext, Timeouts
from blockwatch.probes.model import Measurement, Service, Target
from blockwatch.probes.scope import Scope
from blockwatch.probes.trace_follow import Follower, TraceSettings, follow_up_target, follower
from blockwatch.scheduler.plan import plan_sweep
from blockwatch.scheduler.sweep import SweepSettings, sweep
from blockwatch.storage import open_store

REPO = Path(__file__).resolve().parent.parent




def measured(probe: str, failure: str | None, operation: str | None, *, host: str = "a.test",
             port: int | None = 443, url: str | None = None, service: str = "svc") -> Measurement:
    t = Target(service=service, probe=probe, host=host, port=None if url else port, url=url,
               sni=host if probe == "tls" else None)
    return Measurement(id="m", run_id="r", vantage="v", target=t, probe_version="1",
                       started_at=dt.datetime.now(dt.UTC), runtime_s=0.1, failure=failure,
                       failed_operation=operation)


@pytest.mark.parametrize(("m", "want"), [
    # a reset, an EOF or a silence after the TCP handshake: a trace reads those
    (measured("tls", F.CONNECTION_RESET, "tls_handshake"), ("a.test", 443, "a.test", "tls")),
    (measured("tls", F.GENERIC_TIMEOUT, "tls_handshake"), ("a.test", 443, "a.test", "tls")),
    (measured("http", F.EOF_ERROR, "tls_handshake", url="https://a.test/x"),
     ("a.test", 443, "a.test", "tls")),
    (measured("http", F.CONNECTION_RESET, "http_round_trip", url="http://a.test:8080/"),
     ("a.test", 8080, None, "http")),
    (measured("http", F.GENERIC_TIMEOUT, "http_round_trip", url="http://a.test/"),
     ("a.test", 80, None, "http")),
])
def test_failures_after_the_handshake_are_followed(m: Measurement, want: tuple[Any, ...]) -> None:
    t = follow_up_target(m)
    assert t is not None
    assert (t.host, t.port, t.sni, dict(t.options)["mode"]) == want
    assert (t.probe, t.service, dict(t.options)["follow_up"]) == ("trace", "svc", m.probe)


@pytest.mark.parametrize("m", [
    measured("tls", None, None),  # it worked
    measured("tcp", F.GENERIC_TIMEOUT, "connect"),  # no SYN-ACK: nothing to compare a trace with
    measured("tls", F.CONNECTION_REFUSED, "connect"),
    measured("tls", F.SSL_UNKNOWN_AUTHORITY, "tls_handshake"),  # a certificate, not a reset
    measured("http", F.CONNECTION_RESET, "http_round_trip", url="https://a.test/"),  # inside TLS
    measured("http", F.DNS_NXDOMAIN, "resolve", url="http://a.test/"),
    measured("dns", F.GENERIC_TIMEOUT, "dns_query", port=None),
    measured("http", F.CONNECTION_RESET, "http_round_trip", url="http://[::1/"),  # hostile URL
])
def test_other_outcomes_are_not_followed(m: Measurement) -> None:
    assert follow_up_target(m) is None


def test_each_endpoint_is_traced_once_within_the_limit_and_never_twice_by_config() -> None:
    f = Follower(enabled=True, reason=None, limit=2, planned={("svc", "planned.test", 443)})
    tls = measured("tls", F.CONNECTION_RESET, "tls_handshake")
    https = measured("http", F.CONNECTION_RESET, "tls_handshake", url="https://a.test/")
    assert f(tls) is not None
    assert f(https) is None  # the same endpoint and mode: traced once
    assert f(measured("tls", F.CONNECTION_RESET, "tls_handshake", host="planned.test")) is None
    assert f(measured("tls", F.CONNECTION_RESET, "tls_handshake", host="b.test")) is not None
    assert f(measured("tls", F.CONNECTION_RESET, "tls_handshake", host="c.test")) is None
    assert f.summary() == {"traced": 2, "untraced": 1,
                           "why": "over [probe.trace] max_follow_ups = 2"}


def test_a_sweep_without_a_way_to_trace_says_why() -> None:
    f = Follower(enabled=False, reason="no raw sockets (CAP_NET_RAW)", limit=64, planned=set())
    assert f(measured("tls", F.CONNECTION_RESET, "tls_handshake")) is None
    assert f.summary() == {"traced": 0, "untraced": 1, "why": "no raw sockets (CAP_NET_RAW)"}
    assert Follower(enabled=True, reason=None, limit=1, planned=set()).summary() is None


def test_switched_off_by_config_or_without_tls_and_http_targets() -> None:
    ctx = ProbeContext(scope=Scope.loopback(), settings={"trace": TraceSettings(follow_up=False)})
    web = [Target(service="s", probe="tls", host="a.test", port=443)]
    assert follower(web, ctx) is None
    dns = [Target(service="s", probe="dns", host="a.test", resolver="udp://127.0.0.1:53")]
    assert follower(dns, ProbeContext(scope=Scope.loopback())) is None
    proxied = follower(web, ProbeContext(scope=Scope.loopback(), proxy="socks5://127.0.0.1:1"))
    assert proxied is not None and not proxied.enabled and "SOCKS5" in (proxied.reason or "")


def test_the_config_table_is_checked() -> None:
    from blockwatch.config import ConfigError, parse_config

    cfg = parse_config("[probe.trace]\nfollow_up = false\nmax_follow_ups = 5\n", "bw.toml")
    assert cfg.probe_settings()["trace"] == TraceSettings(follow_up=False, max_follow_ups=5)
    with pytest.raises(ConfigError, match=r"probe\.trace\.max_follow_ups"):
        parse_config("[probe.trace]\nmax_follow_ups = -1\n", "bw.toml")
    with pytest.raises(ConfigError, match=r"probe\.trace"):
        parse_config("[probe.trace]\nfollow = true\n", "bw.toml")


# --- the engine -------------------------------------------------------------------------------


async def sweep_of(tmp: Path, services: list[Service], probes: tuple[str, ...],
                   **settings: Any) -> tuple[Any, list[Measurement], list[Any]]:
    targets = plan_sweep(services, probes=probes, resolvers=["udp://127.0.0.1:9"])
    ctx = ProbeContext(scope=Scope.loopback(), timeouts=Timeouts(dns=1, tcp=1, tls=1, http=1),
                       **settings)
    with open_store(f"sqlite:///{tmp / 'bw.db'}") as store:
        outcome = await sweep(store, services, targets, ctx,
                              SweepSettings(vantage="v", flush_interval_s=0.05))
        ms = list(store.measurements(run_id=outcome.run.id))
        verdicts = store.verdicts(run_id=outcome.run.id)
    return outcome, ms, verdicts


@needs_raw
async def test_a_reset_handshake_is_traced_and_judged_with_its_service(tmp_path: Path) -> None:
    """The server itself resets the ClientHello: one follow-up trace for the endpoint, stored
    and judged with the service before its verdict, and it finds the server's own reset (the
    same TTL as its SYN-ACK), so nothing is called blocked from one vantage."""
    async with LoopbackServer(reset_on_data) as server:
        with blackhole_port() as hole:
            services = [
                Service(name="resets", title="r", category="x",
                        urls=(f"https://127.0.0.1:{server.port}/",)),
                # a dropped SYN is not followed: a trace could not settle it
                Service(name="drops", title="d", category="x",
                        urls=(f"https://127.0.0.1:{hole}/",)),
            ]
            outcome, ms, verdicts = await sweep_of(tmp_path, services, ("tcp", "tls", "http"))
    traces = [m for m in ms if m.probe == "trace"]
    # one trace of the endpoint, after whichever of the TLS and HTTPS failures came first
    assert [(m.service, m.target.port, dict(m.target.options)["mode"]) for m in traces] == [
        ("resets", server.port, "tls")]
    assert dict(traces[0].target.options)["follow_up"] in ("tls", "http")
    [raw] = [o for o in traces[0].observations if o.layer == "raw"]
    assert raw.capture and raw.reply == "rst" and raw.synack is not None  # type: ignore[attr-defined]
    assert outcome.run.summary["raw_evidence"] == {"traced": 1}
    assert outcome.run.summary["measurements"] == len(ms) == 7
    # the trace measurement has its own verdict, given with the service's
    assert any(v.measurement_id == traces[0].id for v in verdicts)
    service = {v.service: v for v in verdicts if v.measurement_id is None}
    assert service["resets"].verdict == "inconclusive"  # the server's own reset, not forged
    assert service["drops"].verdict == "inconclusive"


NO_RAW_SCRIPT = textwrap.dedent("""
    import asyncio, json, socket, sys, tempfile
    from pathlib import Path
    sys.path.insert(0, "tests")
    from servers import LoopbackServer, reset_on_data
    from blockwatch.probes.context import ProbeContext, Timeouts
    from blockwatch.probes.model import Service
    from blockwatch.probes.scope import Scope
    from blockwatch.scheduler.plan import plan_sweep
    from blockwatch.scheduler.sweep import SweepSettings, sweep
    from blockwatch.storage import open_store

    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP).close()
        raise SystemExit("this process can still open raw sockets")
    except PermissionError:
        pass

    async def main():
        async with LoopbackServer(reset_on_data) as server:
            services = [Service(name="resets", title="r", category="x",
                                urls=(f"https://127.0.0.1:{server.port}/",))]
            targets = plan_sweep(services, probes=("tcp", "tls"), resolvers=[])
            ctx = ProbeContext(scope=Scope.loopback(), timeouts=Timeouts(tcp=1, tls=1, http=1))
            with tempfile.TemporaryDirectory() as tmp, \\
                    open_store(f"sqlite:///{tmp}/bw.db") as store:
                out = await sweep(store, services, targets, ctx, SweepSettings(vantage="v"))
                probes = sorted(m.probe for m in store.measurements(run_id=out.run.id))
        print(json.dumps({"summary": out.run.summary, "probes": probes}))

    asyncio.run(main())
""")


def test_without_cap_net_raw_the_summary_says_what_was_not_traced() -> None:
    done = run_without_net_raw(NO_RAW_SCRIPT, REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["probes"] == ["tcp", "tls"]  # nothing traced, nothing sent raw
    evidence = out["summary"]["raw_evidence"]
    assert (evidence["traced"], evidence["untraced"]) == (0, 1)
    assert "CAP_NET_RAW" in evidence["why"]
