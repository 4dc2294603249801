"""Running a sweep: names concurrently under our limits, judged and stored as it goes.

Guarantees:

* the unit of work is a **name**: every target of one host name (its DNS queries, TCP, TLS,
  HTTP, VPN) runs together, and ``concurrency`` names are in flight at once. A name gives its
  slot to the next one as soon as what is left of it only listens (a DNS query's injection
  window), so the wall time approaches the slowest name, not the sum;
* our own limits (queries per resolver, connections per server address, sockets) are waited
  for outside every timeout (``probes.pacing``): a measurement never fails because of our queue;
* measurements are written in batches (by size and time) while the sweep runs, so a killed
  process loses at most the batch in flight. Without control vantages each service is judged
  as soon as its last measurement is in (the same verdicts as judging the whole run:
  ``probes.verdicts.Judge``) and its measurements are then dropped, so memory stays flat
  however long the list; with control vantages, services are judged at the end against the
  controls stored by then;
* an exception in one probe is that measurement's ``unknown_failure`` (``probes.runner``);
* on cancellation (Ctrl-C, SIGTERM, a max-runtime) the probes in flight are cancelled, what is
  done is stored (and judged), and the run is marked ``interrupted``;
* if the baseline finds the network down, nothing is probed and the run is
  ``network_unavailable``;
* with a control path (``[analysis] control_proxy``: a SOCKS5 proxy whose exit is outside the
  censored network, such as Tor's), the TCP, TLS and HTTP targets are also probed through it,
  concurrently, as a run of their own under the control vantage's name; they are stored first,
  then serve as the control of this run's verdicts like any control vantage's measurements.

Size: the engine's parts (``_probe_all``, the batch ``_Writer``, streaming ``_Judging``, the
control path's run and ``_finish``) share one sweep's state and one cancellation path, and the
guarantees above hold only for them together, so they are read in one module.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from blockwatch.analysis.verdicts import AnalysisInputs, Judge, judge_run
from blockwatch.probes import registry
from blockwatch.probes.context import ProbeContext
from blockwatch.probes.model import (
    Endpoint,
    Measurement,
    Run,
    RunInputs,
    Service,
    Target,
    Verdict,
)
from blockwatch.probes.registry import PROBES
from blockwatch.probes.runner import new_id, run_probe
from blockwatch.scheduler.baseline import Baseline, check_baseline
from blockwatch.scheduler.host import host_facts

log = logging.getLogger("blockwatch.sweep")


class Store(Protocol):
    def start_run(self, run: Run) -> None: ...
    def finish_run(self, run_id: str, *, status: str, finished_at: dt.datetime,
                   summary: dict[str, Any], inputs: RunInputs | None = None) -> None: ...
    def add_measurements(self, measurements: Sequence[Measurement],
                         verdicts: Sequence[Verdict] = (), *,
                         run_id: str | None = None) -> None: ...
    def add_verdicts(self, run_id: str, verdicts: Sequence[Verdict]) -> None: ...
    def control_measurements(self, vantages: Sequence[str], start: dt.datetime,
                             end: dt.datetime, services: Sequence[str] | None = None,
                             near: dt.datetime | None = None) -> list[Measurement]: ...


CONTROL_PROBES = registry.PROXIED  # what a SOCKS5 path can carry (the registry says)


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlPath:
    """A second way out for the same sweep: its own context (a SOCKS5 proxy) and vantage."""

    vantage: str
    ctx: ProbeContext


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepSettings:
    vantage: str = "default"
    country: str | None = None
    asn: int | None = None
    group: str | None = None
    concurrency: int = 256  # names in flight
    control_resolvers: tuple[str, ...] = ()
    baseline_endpoints: tuple[Endpoint, ...] = ()
    baseline_timeout: float = 5.0
    batch_size: int = 500
    flush_interval_s: float = 1.0
    software_version: str = ""
    config_hash: str = ""
    fingerprints: Any = None  # a probes.fingerprints set; None = the built-in set
    control_vantages: tuple[str, ...] = ()
    control_max_age_s: float = 6 * 3600.0
    control_path: ControlPath | None = None
    # the scope's explicit prefixes (a lab, a LAN): bogon addresses there are real servers
    local_networks: tuple[str, ...] = ()
    # what the config switches off without saying so (a baseline or control resolvers outside
    # the scope), stored in the run's summary
    warnings: tuple[str, ...] = ()
    # [dns] resolvers: the first one's address is recorded with each run, with the machine's
    # architecture and platform (scheduler.host, read when the sweep starts: a laptop's daemon
    # moves between networks), in its summary as "host"
    resolvers: tuple[str, ...] = ()


@dataclass(slots=True)
class SweepOutcome:
    """The run, its service verdicts, and how many measurements it stored. ``measurements``
    holds only what was judged at the end (with control vantages); read the rest from the
    store."""

    run: Run
    measurements: list[Measurement] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    baseline: Baseline | None = None
    count: int = 0


ProgressFn = Callable[[int, int, Measurement], None]


class _Writer:
    """Batches measurements and verdicts to the store from one task (the store's calls run in
    a thread): a batch goes when it holds ``batch_size`` measurements or its oldest item has
    waited ``interval`` seconds, one transaction each."""

    def __init__(self, store: Store, run_id: str, batch_size: int, interval: float) -> None:
        self.store, self.run_id = store, run_id
        self.batch_size, self.interval = batch_size, interval
        self.queue: asyncio.Queue[Measurement | list[Verdict] | None] = asyncio.Queue()
        self.task = asyncio.create_task(self._loop())
        self.transactions = 0

    def put(self, item: Measurement | list[Verdict]) -> None:
        self.queue.put_nowait(item)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        measurements: list[Measurement] = []
        verdicts: list[Verdict] = []
        due: float | None = None
        done = False
        while not done:
            item: Measurement | list[Verdict] | None
            if due is None:
                item = await self.queue.get()
            else:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    try:
                        item = await asyncio.wait_for(self.queue.get(), max(0.0, due - loop.time()))
                    except TimeoutError:  # the batch's time is up
                        await self._flush(measurements, verdicts)
                        measurements, verdicts, due = [], [], None
                        continue
            if item is None:
                done = True
            elif isinstance(item, Measurement):
                measurements.append(item)
            else:
                verdicts += item
            if due is None:
                due = loop.time() + self.interval
            if done or len(measurements) >= self.batch_size:
                await self._flush(measurements, verdicts)
                measurements, verdicts, due = [], [], None

    async def _flush(self, measurements: list[Measurement], verdicts: list[Verdict]) -> None:
        if measurements or verdicts:
            await asyncio.to_thread(self.store.add_measurements, measurements, verdicts,
                                    run_id=self.run_id)
            self.transactions += 1

    async def close(self) -> None:
        self.queue.put_nowait(None)
        await asyncio.shield(self.task)


class _Judging:
    """Each service judged as soon as its last measurement is in, unless it must wait for the
    end (controls from other vantages, or run facts not established yet)."""

    def __init__(self, targets: Sequence[Target], judge: Judge, streaming: bool,
                 writer: _Writer, outcome: SweepOutcome) -> None:
        self.pending = Counter(t.service for t in targets)
        self.judge, self.streaming = judge, streaming
        self.writer, self.outcome = writer, outcome
        self.open: dict[str, list[Measurement]] = defaultdict(list)
        self.deferred: dict[str, list[Measurement]] = {}

    def expect(self, target: Target) -> None:
        """One more measurement of ``target.service`` is coming (a follow-up)."""
        self.pending[target.service] += 1

    def add(self, m: Measurement) -> None:
        self.judge.observe(m)
        self.open[m.service].append(m)
        self.pending[m.service] -= 1
        if self.pending[m.service] > 0:
            return
        del self.pending[m.service]
        measured = self.open.pop(m.service)
        if self.streaming and self.judge.ready(measured):
            self._judged(self.judge.service(m.service, measured))
        else:
            self.deferred[m.service] = measured

    def _judged(self, verdicts: list[Verdict]) -> None:
        self.writer.put(verdicts)
        self.outcome.verdicts += [v for v in verdicts if v.measurement_id is None]

    def leftovers(self) -> dict[str, list[Measurement]]:
        """Every service not judged yet: deferred, or cut short by an interruption."""
        out = dict(self.deferred)
        for name, ms in self.open.items():
            out.setdefault(name, []).extend(ms)
        self.deferred, self.open = {}, defaultdict(list)
        return out


async def _probe_all(targets: Sequence[Target], ctx: ProbeContext, settings: SweepSettings,
                     run_id: str, sink: Callable[[Measurement], None],
                     follow: Callable[[Measurement], Target | None] | None = None,
                     expect: Callable[[Target], None] | None = None) -> None:
    """Every name's targets together, ``settings.concurrency`` names at once. ``follow`` may
    answer a finished measurement with one more target (a follow-up, ``registry.followers``):
    it is announced to ``expect`` before the measurement goes to ``sink`` (so its service is not
    judged without it) and runs at once in the same name's slot."""
    units: dict[str, list[Target]] = {}
    for t in targets:
        units.setdefault(t.host.lower(), []).append(t)
    names = asyncio.Semaphore(max(1, settings.concurrency))

    async def unit(host: str, group: list[Target]) -> None:
        active = len(group)
        tg: asyncio.TaskGroup

        def step() -> None:  # a measurement finished, or only listens now
            nonlocal active
            active -= 1
            if active == 0:
                names.release()

        async def one(target: Target) -> None:
            nonlocal active
            listening = False
            extra: Target | None = None

            def background() -> None:
                nonlocal listening
                listening = True
                step()

            try:
                m = await run_probe(PROBES[target.probe], target, ctx, run_id=run_id,
                                    vantage=settings.vantage, on_background=background)
                # a follow-up keeps the slot: only a measurement still holding it asks
                if follow is not None and not listening:
                    extra = follow(m)
                    if extra is not None:
                        active += 1
                        if expect is not None:
                            expect(extra)
            finally:
                if not listening:
                    step()
            sink(m)
            if extra is not None:
                tg.create_task(one(extra))

        try:
            async with asyncio.TaskGroup() as tg:
                for t in group:
                    tg.create_task(one(t))
        finally:
            ctx.resolutions.forget(host)

    async with asyncio.TaskGroup() as tg:
        for host, group in units.items():
            await names.acquire()
            tg.create_task(unit(host, group))


async def sweep(store: Store, services: Sequence[Service], targets: Sequence[Target],
                ctx: ProbeContext, settings: SweepSettings,
                progress: ProgressFn | None = None) -> SweepOutcome:
    ctx = ctx.for_sweep()
    host = await asyncio.to_thread(host_facts, settings.resolvers)
    run = Run(id=new_id(), vantage=settings.vantage, country=settings.country,
              asn=settings.asn, group=settings.group, started_at=dt.datetime.now(dt.UTC),
              software_version=settings.software_version, config_hash=settings.config_hash,
              summary={"host": host})
    baseline = await check_baseline(settings.baseline_endpoints, ctx.scope,
                                    settings.baseline_timeout, source_address=ctx.source_address)
    run = _replace(run, baseline=baseline.to_dict())
    await asyncio.to_thread(store.start_run, run)
    outcome = SweepOutcome(run=run, baseline=baseline)
    catalogue = {s.name: s for s in services}
    if not baseline.network_ok:
        log.warning("network unavailable: no baseline endpoint answered; nothing probed")
        return await _finish(store, outcome, catalogue, settings, "network_unavailable", None,
                             None)

    writer = _Writer(store, run.id, settings.batch_size, settings.flush_interval_s)
    vantages = _control_vantages(settings)
    judge = Judge(catalogue, _inputs(settings), fingerprints=settings.fingerprints)
    judging = _Judging(targets, judge, not vantages, writer, outcome)
    followers = registry.followers(targets, ctx)
    total = len(targets)

    def follow(m: Measurement) -> Target | None:
        return next((t for f in followers if (t := f(m)) is not None), None)

    def expect(t: Target) -> None:
        nonlocal total
        total += 1
        judging.expect(t)

    def sink(m: Measurement) -> None:
        outcome.count += 1
        writer.put(m)
        judging.add(m)
        if progress is not None:
            progress(outcome.count, total, m)

    control = None
    if settings.control_path is not None:
        control = asyncio.create_task(_control_run(store, targets, settings, run))
    status = "complete"
    try:
        await _probe_all(targets, ctx, settings, run.id, sink,
                         follow if followers else None, expect)
        if control is not None:
            await control
    except asyncio.CancelledError:
        status = "interrupted"
        raise
    finally:
        if control is not None and not control.done():
            control.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await control
        await asyncio.shield(ctx.aclose())
        await _finish(store, outcome, catalogue, settings, status, judging, writer,
                      {f.key: s for f in followers if (s := f.summary())})
    return outcome


def _inputs(settings: SweepSettings, since: dt.datetime | None = None,
            until: dt.datetime | None = None) -> RunInputs:
    """What this sweep's verdicts are judged on, as recorded with its run."""
    return RunInputs(control_resolvers=tuple(settings.control_resolvers),
                     control_vantages=tuple(_control_vantages(settings)),
                     local_networks=tuple(settings.local_networks),
                     controls_since=since, controls_until=until)


def _control_vantages(settings: SweepSettings) -> list[str]:
    vantages = [v for v in settings.control_vantages if v != settings.vantage]
    if settings.control_path is not None and settings.control_path.vantage not in vantages:
        vantages.append(settings.control_path.vantage)
    return vantages


async def _control_run(store: Store, targets: Sequence[Target], settings: SweepSettings,
                       main: Run) -> None:
    """The control path's run: the TCP/TLS/HTTP targets through the proxy, stored as the
    control vantage's own run (its measurements are evidence, judged only as controls)."""
    path = settings.control_path
    assert path is not None
    run = Run(id=new_id(), vantage=path.vantage, group=settings.group,
              started_at=dt.datetime.now(dt.UTC), software_version=settings.software_version,
              config_hash=settings.config_hash, control_for=main.id, summary=_host(main))
    await asyncio.to_thread(store.start_run, run)
    writer = _Writer(store, run.id, settings.batch_size, settings.flush_interval_s)
    done = 0
    ctx = path.ctx.for_sweep()

    def sink(m: Measurement) -> None:
        nonlocal done
        done += 1
        writer.put(m)

    status = "complete"
    wanted = [t for t in targets if t.probe in CONTROL_PROBES]
    try:
        await _probe_all(wanted, ctx, dataclasses.replace(settings, vantage=path.vantage),
                         run.id, sink)
    except asyncio.CancelledError:
        status = "interrupted"
        raise
    finally:
        await asyncio.shield(ctx.aclose())
        await writer.close()
        await asyncio.shield(asyncio.to_thread(
            store.finish_run, run.id, status=status, finished_at=dt.datetime.now(dt.UTC),
            summary={**summarize([], done), **_host(main)}, inputs=RunInputs()))


def _host(run: Run) -> dict[str, Any]:
    """The run summary's record of the machine, kept from its start to its end."""
    return {"host": run.summary["host"]} if "host" in run.summary else {}


def _replace(run: Run, **changes: Any) -> Run:
    return dataclasses.replace(run, **changes)


async def _finish(store: Store, outcome: SweepOutcome, catalogue: dict[str, Service],
                  settings: SweepSettings, status: str, judging: _Judging | None,
                  writer: _Writer | None,
                  follow_ups: dict[str, Any] | None = None) -> SweepOutcome:
    """Judge what is left (deferred services, with the controls stored by now), store the
    last verdicts and the run's summary."""
    vantages = _control_vantages(settings)
    inputs = _inputs(settings)
    if judging is None or writer is None:  # the network was down: nothing was measured
        verdicts = judge_run(AnalysisInputs(measurements=(), services=catalogue, run=inputs,
                                            network_ok=False))
        outcome.verdicts = verdicts
        await asyncio.shield(asyncio.to_thread(store.add_verdicts, outcome.run.id, verdicts))
        controls: list[Measurement] = []
    else:
        leftovers = judging.leftovers()
        controls = []
        if vantages:
            since = outcome.run.started_at - dt.timedelta(seconds=settings.control_max_age_s)
            until = dt.datetime.now(dt.UTC)
            inputs = _inputs(settings, since, until)
            if leftovers:
                controls = await asyncio.shield(asyncio.to_thread(
                    store.control_measurements, vantages, since, until, sorted(leftovers),
                    outcome.run.started_at))
        by_service: dict[str, list[Measurement]] = defaultdict(list)
        for m in controls:
            by_service[m.service].append(m)
        for name in sorted(leftovers):
            measured = leftovers[name]
            outcome.measurements += measured
            judging._judged(judging.judge.service(name, [*measured, *by_service.get(name, [])]))
        await writer.close()
    summary = {**summarize(outcome.verdicts, outcome.count), **_host(outcome.run)}
    if vantages:
        summary["control_measurements"] = len(controls)
    if settings.warnings:
        summary["warnings"] = list(settings.warnings)
    # the follow-ups, by their key (the traces': how many, and why a failure was not traced)
    summary.update(follow_ups or {})
    finished = dt.datetime.now(dt.UTC)
    # re-analysis judges the run on what it was judged on here (blockwatch reanalyze)
    await asyncio.shield(asyncio.to_thread(
        store.finish_run, outcome.run.id, status=status, finished_at=finished, summary=summary,
        inputs=inputs))
    outcome.run = _replace(outcome.run, status=status, finished_at=finished, summary=summary,
                           inputs=inputs)
    return outcome


def summarize(verdicts: Sequence[Verdict], n_measurements: int) -> dict[str, Any]:
    """The one-line summary stored with the run: service verdict counts."""
    counts: dict[str, int] = {}
    for v in verdicts:
        if v.measurement_id is None:
            counts[v.verdict] = counts.get(v.verdict, 0) + 1
    blocked = sorted(v.service for v in verdicts
                     if v.measurement_id is None and v.verdict in ("blocked", "partial"))
    out: dict[str, Any] = {"measurements": n_measurements, "services": counts,
                           "blocked": blocked}
    # services left inconclusive only because no control saw the same step: what a control
    # vantage or a control path would settle (issue #13)
    wanting = sorted(v.service for v in verdicts if v.measurement_id is None
                     and v.verdict == "inconclusive"
                     and any(str(r).endswith("no_control") for r in v.details.get("rules", ())))
    if wanting:
        out["needs_control"] = wanting
    return out
