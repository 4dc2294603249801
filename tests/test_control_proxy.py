"""The SOCKS5 control path (``[analysis] control_proxy``): one sweep, two ways out. Loopback
only: the "censored" path reaches a closed port where the name's address should be, the proxy
(a real SOCKS5 server on loopback, resolving names itself) reaches the real server."""

from __future__ import annotations

from pathlib import Path

import pytest
from servers import LoopbackServer, SocksBehaviour, http, socks5

from blockwatch.config import ConfigError, parse_config
from blockwatch.probes.context import Lookup, ProbeContext, Timeouts
from blockwatch.probes.model import RunInputs, Service, Target
from blockwatch.probes.scope import Scope
from blockwatch.scheduler.sweep import ControlPath, SweepSettings, sweep
from blockwatch.storage import open_store

HOST = "example.test"
FAST = Timeouts(dns=0.5, tcp=0.5, tls=1.0, http=1.0)


def censored_context(address: str) -> ProbeContext:
    ctx = ProbeContext(scope=Scope.loopback(), timeouts=FAST)
    ctx.static_lookups[HOST] = Lookup((address,))
    return ctx


async def test_failure_here_and_success_through_the_proxy_is_blocking(tmp_path: Path) -> None:
    how = SocksBehaviour(names={HOST: "127.0.0.1"})
    async with LoopbackServer(http) as server, LoopbackServer(socks5(how)) as proxy:
        control = ControlPath(vantage="home-via-proxy", ctx=ProbeContext(
            scope=Scope.loopback(), timeouts=FAST, proxy=f"socks5://127.0.0.1:{proxy.port}"))
        # 127.0.0.2 has nothing on the server's port: refused, as a censor's RST would be
        targets = [Target(service="svc", probe="tcp", host=HOST, port=server.port),
                   Target(service="svc", probe="http", host=HOST,
                          url=f"http://{HOST}:{server.port}/"),
                   Target(service="svc", probe="dns", host=HOST, resolver="udp://127.0.0.1:9")]
        settings = SweepSettings(vantage="home", control_path=control, flush_interval_s=0.05,
                                 local_networks=("127.0.0.0/8",))
        with open_store(f"sqlite:///{tmp_path / 'bw.db'}") as store:
            outcome = await sweep(store, [Service(name="svc", title="Svc", category="t",
                                                  domains=(HOST,))],
                                  targets, censored_context("127.0.0.2"), settings)
            runs = {r.vantage: r for r in store.runs()}
            stored = store.verdicts(run_id=outcome.run.id)
            control_rows = store.control_measurements(
                ["home-via-proxy"], outcome.run.started_at.replace(year=2000),
                outcome.run.started_at.replace(year=2100))
    # the proxy resolved the name itself and carried TCP and HTTP, never DNS
    assert (1, HOST, server.port) not in how.asked and (3, HOST, server.port) in how.asked
    assert sorted(m.probe for m in control_rows) == ["http", "tcp"]
    assert all(m.failure is None for m in control_rows)
    assert runs["home-via-proxy"].status == "complete"
    assert runs["home-via-proxy"].control_for == outcome.run.id
    assert runs["home-via-proxy"].inputs == RunInputs()  # judged never: it has no controls
    recorded = runs["home"].inputs
    assert recorded is not None and recorded == outcome.run.inputs
    assert recorded.control_vantages == ("home-via-proxy",)
    assert recorded.local_networks == ("127.0.0.0/8",)
    assert recorded.controls_since is not None and recorded.controls_until is not None
    assert recorded.controls_since < outcome.run.started_at < recorded.controls_until
    by_probe = {m.probe: m for m in outcome.measurements}
    verdicts = {v.measurement_id: v for v in stored}
    tcp = verdicts[by_probe["tcp"].id]
    assert (tcp.verdict, tcp.rule_id) == ("tcp_blocked", "tcp.failure_vs_control")
    assert "control connect succeeded" in tcp.evidence
    assert verdicts[by_probe["http"].id].verdict == "tcp_blocked"  # refused at connect
    service = next(v for v in stored if v.measurement_id is None)
    assert (service.verdict, service.layer) == ("blocked", "tcp")


async def test_failure_on_both_paths_is_down(tmp_path: Path) -> None:
    how = SocksBehaviour(names={HOST: "127.0.0.3"})  # the proxy's view: refused as well
    async with LoopbackServer(http) as server, LoopbackServer(socks5(how)) as proxy:
        control = ControlPath(vantage="home-via-proxy", ctx=ProbeContext(
            scope=Scope.loopback(), timeouts=FAST, proxy=f"socks5://127.0.0.1:{proxy.port}"))
        targets = [Target(service="svc", probe="tcp", host=HOST, port=server.port)]
        settings = SweepSettings(vantage="home", control_path=control, flush_interval_s=0.05,
                                 local_networks=("127.0.0.0/8",))
        with open_store(f"sqlite:///{tmp_path / 'bw.db'}") as store:
            outcome = await sweep(store, [], targets, censored_context("127.0.0.2"), settings)
            stored = store.verdicts(run_id=outcome.run.id)
    tcp = next(v for v in stored if v.measurement_id is not None)
    assert (tcp.verdict, tcp.rule_id) == ("down", "failure.same_as_control")


def test_control_proxy_config() -> None:
    from blockwatch import app

    cfg = parse_config("[probes]\nscope = ['public']\n[analysis]\n"
                       "control_proxy = 'socks5://127.0.0.1:9050'\n")
    path = app.control_path(cfg, "home")
    assert path is not None and path.vantage == "home-via-proxy"
    assert path.ctx.proxy == "socks5://127.0.0.1:9050"
    assert path.ctx.scope.allows("127.0.0.1")  # the proxy the user named, and nothing else
    assert not path.ctx.scope.allows("127.0.0.2")
    assert app.control_path(parse_config(""), "home") is None
    with pytest.raises(ConfigError, match=r"analysis\.control_proxy"):
        parse_config("[analysis]\ncontrol_proxy = 'http://127.0.0.1:8080'\n", "my.toml")
    same = parse_config("[analysis]\ncontrol_proxy = 'socks5://127.0.0.1:9050'\n"
                        "control_proxy_vantage = 'default'\n")
    with pytest.raises(ConfigError, match="must differ"):
        app.control_path(same, "default")


def test_bogon_answers_are_judged_only_inside_the_scopes_own_prefixes() -> None:
    import datetime as dt

    from judging import judge_run

    from blockwatch.probes.model import Measurement, TCPObservation

    now = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
    target = Target(service="svc", probe="tcp", host=HOST, port=443)

    def m(mid: str, vantage: str, address: str, failure: str | None) -> Measurement:
        return Measurement(id=mid, run_id=mid, vantage=vantage, target=target,
                           probe_version="1", started_at=now, runtime_s=0.1,
                           observations=(TCPObservation(address=address, port=443, t0=0, t=0.1,
                                                        failure=failure),),
                           failure=failure, failed_operation="connect" if failure else None)

    tested = m("t", "home", "10.1.2.3", "connection_refused")
    control = m("c", "home-via-proxy", HOST, None)  # through the proxy: keyed by the name

    def rule(**kw: object) -> str:
        out = judge_run([tested, control], {}, (), control_vantages=["home-via-proxy"], **kw)  # type: ignore[arg-type]
        return next(v.rule_id for v in out if v.measurement_id == "t")

    # a private address from DNS where the proxy reached the name: the DNS answer's doing
    assert rule() == "failure.no_control"
    # the user's scope says servers live in 10/8 (a lab, a LAN): a real server, refused here
    assert rule(local_networks=["10.0.0.0/8"]) == "tcp.failure_vs_control"
