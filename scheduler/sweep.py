"""Running a sweep: every target concurrently under global and per-host limits, stored as it goes.

Guarantees:
* the wall time approaches the slowest target, not the sum (asyncio, bounded by semaphores);
* measurements are written in batches while the sweep runs, so a killed process loses at most
  the batch in flight; verdicts are computed at the end (or on interruption) and stored apart;
* an exception in one probe is that measurement's ``unknown_failure`` (``probes.runner``);
* on cancellation (Ctrl-C, SIGTERM, a max-runtime) the probes in flight are cancelled, what is
  done is stored, and the run is marked ``interrupted``;
* if the baseline finds the network down, nothing is probed and the run is
  ``network_unavailable``;
* with a control path (``[analysis] control_proxy``: a SOCKS5 proxy whose exit is outside the
  censored network, such as Tor's), the TCP, TLS and HTTP targets are also probed through it,
  concurrently, as a run of their own under the control vantage's name; they are stored first,
  then serve as the control of this run's verdicts like any control vantage's measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from probes.context import ProbeContext
from probes.model import Endpoint, Measurement, Run, Service, Target, Verdict
from probes.registry import PROBES
from probes.runner import new_id, run_probe
from probes.verdicts import judge_run
from scheduler.baseline import Baseline, check_baseline

log = logging.getLogger("blockwatch.sweep")


class Store(Protocol):
    def start_run(self, run: Run) -> None: ...
    def finish_run(self, run_id: str, *, status: str, finished_at: dt.datetime,
                   summary: dict[str, Any]) -> None: ...
    def add_measurements(self, measurements: Sequence[Measurement],
                         verdicts: Sequence[Verdict] = ()) -> None: ...
    def add_verdicts(self, run_id: str, verdicts: Sequence[Verdict]) -> None: ...
    def control_measurements(self, vantages: Sequence[str], start: dt.datetime,
                             end: dt.datetime) -> list[Measurement]: ...


CONTROL_PROBES = frozenset({"tcp", "tls", "http"})  # what a SOCKS5 path can carry


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
    concurrency: int = 64
    per_host: int = 4
    control_resolvers: tuple[str, ...] = ()
    baseline_endpoints: tuple[Endpoint, ...] = ()
    baseline_timeout: float = 5.0
    batch_size: int = 200
    flush_interval_s: float = 1.0
    software_version: str = ""
    config_hash: str = ""
    fingerprints: Any = None  # a probes.fingerprints set; None = the built-in set
    control_vantages: tuple[str, ...] = ()
    control_max_age_s: float = 6 * 3600.0
    control_path: ControlPath | None = None
    # the scope's explicit prefixes (a lab, a LAN): bogon addresses there are real servers
    local_networks: tuple[str, ...] = ()


@dataclass(slots=True)
class SweepOutcome:
    run: Run
    measurements: list[Measurement] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    baseline: Baseline | None = None


ProgressFn = Callable[[int, int, Measurement], None]


class _Writer:
    """Batches measurements to the store from one task, the store's calls run in a thread."""

    def __init__(self, store: Store, batch_size: int, interval: float) -> None:
        self.store, self.batch_size, self.interval = store, batch_size, interval
        self.queue: asyncio.Queue[Measurement | None] = asyncio.Queue()
        self.task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        batch: list[Measurement] = []
        done = False
        while not done:
            try:
                item = await asyncio.wait_for(self.queue.get(), self.interval)
                if item is None:
                    done = True
                else:
                    batch.append(item)
            except TimeoutError:
                pass
            if batch and (done or len(batch) >= self.batch_size or self.queue.empty()):
                await asyncio.to_thread(self.store.add_measurements, batch)
                batch = []

    async def close(self) -> None:
        self.queue.put_nowait(None)
        await asyncio.shield(self.task)


async def _probe_all(targets: Sequence[Target], ctx: ProbeContext, settings: SweepSettings,
                     run_id: str, sink: Callable[[Measurement], None]) -> None:
    total = asyncio.Semaphore(settings.concurrency)
    hosts: dict[str, asyncio.Semaphore] = {}

    async def one(target: Target) -> None:
        host_sem = hosts.setdefault(target.host.lower(), asyncio.Semaphore(settings.per_host))
        async with total, host_sem:
            m = await run_probe(PROBES[target.probe], target, ctx, run_id=run_id,
                                vantage=settings.vantage)
        sink(m)

    async with asyncio.TaskGroup() as tg:
        for t in targets:
            tg.create_task(one(t))


async def sweep(store: Store, services: Sequence[Service], targets: Sequence[Target],
                ctx: ProbeContext, settings: SweepSettings,
                progress: ProgressFn | None = None) -> SweepOutcome:
    run = Run(id=new_id(), vantage=settings.vantage, country=settings.country,
              asn=settings.asn, group=settings.group, started_at=dt.datetime.now(dt.UTC),
              software_version=settings.software_version, config_hash=settings.config_hash)
    baseline = await check_baseline(settings.baseline_endpoints, ctx.scope,
                                    settings.baseline_timeout)
    run = _replace(run, baseline=baseline.to_dict())
    await asyncio.to_thread(store.start_run, run)
    outcome = SweepOutcome(run=run, baseline=baseline)
    catalogue = {s.name: s for s in services}
    if not baseline.network_ok:
        log.warning("network unavailable: no baseline endpoint answered; nothing probed")
        return await _finish(store, outcome, catalogue, settings, "network_unavailable")

    writer = _Writer(store, settings.batch_size, settings.flush_interval_s)

    def sink(m: Measurement) -> None:
        outcome.measurements.append(m)
        writer.queue.put_nowait(m)
        if progress is not None:
            progress(len(outcome.measurements), len(targets), m)

    control = None
    if settings.control_path is not None:
        control = asyncio.create_task(_control_run(store, targets, settings, run))
    status = "complete"
    try:
        await _probe_all(targets, ctx, settings, run.id, sink)
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
        await writer.close()
        await _finish(store, outcome, catalogue, settings, status)
    return outcome


async def _control_run(store: Store, targets: Sequence[Target], settings: SweepSettings,
                       main: Run) -> None:
    """The control path's run: the TCP/TLS/HTTP targets through the proxy, stored as the
    control vantage's own run (its measurements are evidence, judged only as controls)."""
    path = settings.control_path
    assert path is not None
    run = Run(id=new_id(), vantage=path.vantage, group=settings.group,
              started_at=dt.datetime.now(dt.UTC), software_version=settings.software_version,
              config_hash=settings.config_hash)
    await asyncio.to_thread(store.start_run, run)
    writer = _Writer(store, settings.batch_size, settings.flush_interval_s)
    done: list[Measurement] = []

    def sink(m: Measurement) -> None:
        done.append(m)
        writer.queue.put_nowait(m)

    status = "complete"
    wanted = [t for t in targets if t.probe in CONTROL_PROBES]
    try:
        await _probe_all(wanted, path.ctx, dataclasses.replace(settings, vantage=path.vantage),
                         run.id, sink)
    except asyncio.CancelledError:
        status = "interrupted"
        raise
    finally:
        await writer.close()
        summary = {**summarize([], len(done)), "control_for": main.id,
                   "controls": {"resolvers": [], "vantages": []}}
        await asyncio.shield(asyncio.to_thread(
            store.finish_run, run.id, status=status, finished_at=dt.datetime.now(dt.UTC),
            summary=summary))


def _replace(run: Run, **changes: Any) -> Run:
    return dataclasses.replace(run, **changes)


async def _finish(store: Store, outcome: SweepOutcome, catalogue: dict[str, Service],
                  settings: SweepSettings, status: str) -> SweepOutcome:
    network_ok = status != "network_unavailable"
    controls: list[Measurement] = []
    vantages = [v for v in settings.control_vantages if v != settings.vantage]
    if settings.control_path is not None and settings.control_path.vantage not in vantages:
        vantages.append(settings.control_path.vantage)
    if network_ok and vantages:
        window = dt.timedelta(seconds=settings.control_max_age_s)
        controls = await asyncio.shield(asyncio.to_thread(
            store.control_measurements, vantages, outcome.run.started_at - window,
            dt.datetime.now(dt.UTC)))
    verdicts = judge_run([*outcome.measurements, *controls], catalogue,
                         settings.control_resolvers, network_ok=network_ok,
                         control_vantages=vantages, fingerprints=settings.fingerprints,
                         local_networks=settings.local_networks)
    outcome.verdicts = verdicts
    summary = summarize(verdicts, len(outcome.measurements))
    # re-analysis needs to know which measurements were controls when the run was made
    summary["controls"] = {"resolvers": list(settings.control_resolvers), "vantages": vantages,
                           "control_measurements": len(controls),
                           "local_networks": list(settings.local_networks)}
    finished = dt.datetime.now(dt.UTC)
    await asyncio.shield(asyncio.to_thread(store.add_verdicts, outcome.run.id, verdicts))
    await asyncio.shield(asyncio.to_thread(
        store.finish_run, outcome.run.id, status=status, finished_at=finished, summary=summary))
    outcome.run = _replace(outcome.run, status=status, finished_at=finished, summary=summary)
    return outcome


def summarize(verdicts: Sequence[Verdict], n_measurements: int) -> dict[str, Any]:
    """The one-line summary stored with the run: service verdict counts."""
    counts: dict[str, int] = {}
    for v in verdicts:
        if v.measurement_id is None:
            counts[v.verdict] = counts.get(v.verdict, 0) + 1
    blocked = sorted(v.service for v in verdicts
                     if v.measurement_id is None and v.verdict in ("blocked", "partial"))
    return {"measurements": n_measurements, "services": counts, "blocked": blocked}
