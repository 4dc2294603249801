"""The sweep engine against real loopback servers: our own limits never fail a measurement.

The same targets are swept one name at a time and with every name at once under tight limits
(4 DNS queries in flight, 2 connections per server address, 48 sockets), so that most of the
concurrent run's time is spent queueing for our own slots: the failures must be the same.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from dns_server import Behaviour, DNSServer
from judging import judge_run
from servers import LoopbackServer, blackhole_port, http

from blockwatch.probes import failures as F
from blockwatch.probes.context import ProbeContext, Timeouts
from blockwatch.probes.model import Measurement, Run, Service, Verdict
from blockwatch.probes.pacing import Limits
from blockwatch.probes.resolvers import parse_resolver
from blockwatch.probes.scope import Scope
from blockwatch.scheduler.plan import plan_sweep
from blockwatch.scheduler.sweep import SweepSettings, _Writer, sweep
from blockwatch.storage import open_store

LIVE, DROPPED, MISSING = 160, 12, 12


def _services(port: int, hole: int) -> tuple[list[Service], dict[str, Behaviour]]:
    names: dict[str, Behaviour] = {}
    services = []
    for i in range(LIVE + DROPPED + MISSING):
        host = f"n{i}.test"
        kind = "live" if i < LIVE else "dropped" if i < LIVE + DROPPED else "missing"
        if kind != "missing":
            names[host] = Behaviour(addresses=("127.0.0.1",))
        url = f"http://{host}:{hole if kind == 'dropped' else port}/"
        services.append(Service(name=url, title=host, category=kind, urls=(url,)))
    return services, names


def _context(resolver: str) -> ProbeContext:
    return ProbeContext(scope=Scope.loopback(), timeouts=Timeouts(dns=1.0, tcp=0.5, tls=1.0,
                                                                  http=2.0),
                        lookup_resolver=parse_resolver(resolver),
                        limits=Limits(per_resolver=4, per_host=2, sockets=48))


async def _sweep(tmp: Path, services: Sequence[Service], resolver: str, concurrency: int,
                 controls: Sequence[str] = ()) -> tuple[list[Measurement], list[Verdict], Run]:
    targets = plan_sweep(services, probes=("dns", "tcp", "http"), resolvers=[resolver],
                         controls=controls)
    settings = SweepSettings(vantage="v", concurrency=concurrency, flush_interval_s=0.05,
                             control_resolvers=tuple(controls),
                             local_networks=("127.0.0.0/8",))
    with open_store(f"sqlite:///{tmp / f'c{concurrency}.db'}") as store:
        outcome = await sweep(store, services, targets, _context(resolver), settings)
        measurements = list(store.measurements(run_id=outcome.run.id))
        verdicts = store.verdicts(run_id=outcome.run.id)
    return measurements, verdicts, outcome.run


def _failures(measurements: list[Measurement]) -> Counter[tuple[str, str, Any, Any]]:
    return Counter((m.probe, m.target.key, m.failure, m.failed_operation) for m in measurements)


@pytest.mark.slow
async def test_failures_are_the_same_one_by_one_and_all_at_once(tmp_path: Path) -> None:
    async with LoopbackServer(http) as server:
        with blackhole_port() as hole:
            services, names = _services(server.port, hole)
            with DNSServer(names) as dns:
                one = await _sweep(tmp_path, services, dns.udp, 1)
                every = await _sweep(tmp_path, services, dns.udp, 5000)
    for measurements, _, run in (one, every):
        assert run.status == "complete"
        assert len(measurements) == 3 * len(services)
        by_kind = Counter((m.target.category, m.probe, m.failure) for m in measurements)
        assert by_kind == Counter({
            ("live", "dns", None): LIVE, ("live", "tcp", None): LIVE,
            ("live", "http", None): LIVE,
            ("dropped", "dns", None): DROPPED,
            ("dropped", "tcp", F.GENERIC_TIMEOUT): DROPPED,
            ("dropped", "http", F.GENERIC_TIMEOUT): DROPPED,
            ("missing", "dns", F.DNS_NXDOMAIN): MISSING,
            ("missing", "tcp", F.DNS_NXDOMAIN): MISSING,
            ("missing", "http", F.DNS_NXDOMAIN): MISSING})
    assert _failures(one[0]) == _failures(every[0])
    # all at once, measurements queued for our limits far longer than any timeout (0.5 s
    # connect): had the queue counted, they would have failed
    queued = sorted(m.queued_s for m in every[0])
    assert queued[-1] > 2.0
    assert sum(q > 0.5 for q in queued) > LIVE // 2


async def test_stored_verdicts_are_what_judging_the_whole_run_gives(tmp_path: Path) -> None:
    async with LoopbackServer(http) as server:
        with blackhole_port() as hole:
            services, names = _services(server.port, hole)
            services = services[::8]  # a few of each kind
            everything = {n: Behaviour(addresses=("127.0.0.1",)) for n in
                          [s.title for s in services]}
            with DNSServer(names) as dns, DNSServer(everything) as control:
                measurements, stored, _ = await _sweep(tmp_path, services, dns.udp, 64,
                                                       controls=[control.udp])
    again = judge_run(measurements, {s.name: s for s in services}, [control.udp],
                      local_networks=["127.0.0.0/8"])

    def key(v: Verdict) -> tuple[Any, ...]:
        return (v.service, v.measurement_id or "", v.rule_id, v.verdict, v.layer)

    assert sorted(map(key, stored)) == sorted(map(key, again))
    rules = Counter(v.rule_id for v in stored if v.measurement_id is None)
    assert rules["service.ok"] and rules["service.blocked"]  # NXDOMAIN vs the control


async def test_a_name_gives_its_slot_to_the_next_while_its_dns_listens(tmp_path: Path) -> None:
    # one name at a time, each DNS query listening 1 s for late answers: the listening
    # overlaps, so 6 names take about one window, not six
    names = {f"w{i}.test": Behaviour(addresses=("127.0.0.1",)) for i in range(6)}
    services = [Service(name=n, title=n, category="t", domains=(n,)) for n in names]
    with DNSServer(names) as dns:
        targets = plan_sweep(services, probes=("dns",), resolvers=[dns.udp])
        ctx = _context(dns.udp)
        ctx.timeouts = Timeouts(dns=5.0)
        with open_store(f"sqlite:///{tmp_path / 'w.db'}") as store:
            started = time.monotonic()
            outcome = await sweep(store, services, targets, ctx,
                                  SweepSettings(concurrency=1, flush_interval_s=0.05))
            took = time.monotonic() - started
    assert outcome.count == 6
    assert 1.0 <= took < 3.0


class _CountingStore:
    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []

    def add_measurements(self, measurements: Sequence[Measurement],
                         verdicts: Sequence[Verdict] = (), *, run_id: str | None = None) -> None:
        self.batches.append((len(measurements), len(verdicts)))


def _m(i: int) -> Measurement:
    from blockwatch.probes.model import Target

    return Measurement(id=f"m{i}", run_id="r", vantage="v",
                       target=Target(service="s", probe="dns", host="h"), probe_version="2",
                       started_at=dt.datetime.now(dt.UTC), runtime_s=0.0)


async def test_the_writer_commits_by_size_and_by_time() -> None:
    store = _CountingStore()
    writer = _Writer(store, "r", batch_size=100, interval=0.2)  # type: ignore[arg-type]
    for i in range(250):  # a burst: two full batches at once, the rest when its time is up
        writer.put(_m(i))
    await asyncio.sleep(0.05)
    assert store.batches == [(100, 0), (100, 0)]
    await asyncio.sleep(0.3)
    assert store.batches[2] == (50, 0)
    for i in range(5):  # a trickle: one transaction per interval, not one per item
        writer.put(_m(1000 + i))
        writer.put([Verdict(verdict="ok", rule_id="ok.no_failure", analyzer_version="5",
                            service="s", measurement_id=f"m{1000 + i}")])
        await asyncio.sleep(0.02)
    await writer.close()
    assert store.batches[3:] == [(5, 5)]
    assert writer.transactions == 4
