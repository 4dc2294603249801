"""The scheduling daemon: one APScheduler 3 job per schedule group, until told to stop.

Guarantees:
* never two sweeps of one group at once: ``max_instances=1`` in this process, and the group's
  run lock (``scheduler.lock``) against cron, timers and other daemons; a firing that finds
  the group busy is skipped and logged (``run.skipped``), never queued;
* missed firings (the machine slept, the process was stopped) coalesce into one run if the
  newest is less than the misfire grace time late, else they are skipped to the next;
* each group's next run time and last outcome are in the database (``schedule_state``), so
  ``blockwatch schedule --status`` works from another shell;
* SIGTERM/SIGINT: no new sweep starts, sweeps in flight are cancelled, which stores what they
  measured and marks their runs ``interrupted`` (``scheduler.sweep``), then the daemon exits;
* SIGHUP: the caller's ``reload`` builds the groups anew; if it raises (a broken config), the
  error is logged and the old schedule stays untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from apscheduler.events import (
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobEvent,
    JobSubmissionEvent,
)
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from blockwatch.scheduler.groups import GroupSpec
from blockwatch.scheduler.lock import LockBusy, acquire_run_lock
from blockwatch.scheduler.logfmt import fields
from blockwatch.scheduler.sweep import SweepSettings, sweep
from blockwatch.storage.errors import StorageError
from blockwatch.storage.store import ScheduleState, Store

log = logging.getLogger("blockwatch.daemon")

MAX_GRACE_S = 3600.0


def misfire_grace(spec: GroupSpec) -> int:
    """How late a firing may still run: one interval (at most an hour, at least a second)."""
    return int(max(1.0, min(spec.every_s or MAX_GRACE_S, MAX_GRACE_S)))


class Daemon:
    """Runs ``groups`` on their schedules against ``store``; ``await run()`` until stopped.

    Make it inside the running event loop that will run it.
    """

    def __init__(self, store: Store, groups: Sequence[GroupSpec], *, lock_url: str,
                 state_dir: Path, reload: Callable[[], Sequence[GroupSpec]] | None = None,
                 submit: Callable[[str | None], Any] | None = None,
                 queue: Callable[[str], Any] | None = None,
                 submit_every_s: float = 900.0,
                 prepare: Callable[[Any], SweepSettings] | None = None) -> None:
        """``queue``: put a run that just ended in the outbox (a vantage with a collector),
        even while stopping; ``submit``: the outbox's flush, called in a thread with that run,
        and with None when the daemon starts and every ``submit_every_s`` seconds (what waits
        for a collector that was away); ``prepare``: a group's plan to the settings of its
        next sweep, in a thread (the collector's controls added; a failure: the plan's own)."""
        loop = asyncio.get_running_loop()
        self._submit_fn, self._queue_fn, self.submit_every_s = submit, queue, submit_every_s
        self._prepare_fn = prepare
        self._submitting = asyncio.Lock()
        self._submits: set[asyncio.Task[None]] = set()
        self.store, self.lock_url, self.state_dir, self._reload = store, lock_url, state_dir, reload
        self.groups: dict[str, GroupSpec] = {}
        self._planned: dict[str, dt.datetime] = {}
        self._last: dict[str, tuple[str | None, dt.datetime | None, str | None]] = {}
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._stopped = asyncio.Event()
        self.ready = asyncio.Event()  # set once the initial schedule is in place
        self._applying = asyncio.Lock()  # two quick SIGHUPs apply one after the other
        self._scheduler = AsyncIOScheduler(timezone=dt.UTC, event_loop=loop)
        self._scheduler.add_listener(self._on_event, EVENT_JOB_SUBMITTED | EVENT_JOB_MISSED
                                     | EVENT_JOB_MAX_INSTANCES)
        self._initial = list(groups)

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self._scheduler.start()
        try:
            await self._apply(self._initial)
            self.ready.set()
            if self._submit_fn is not None:
                self._spawn(self._submit_loop())
            await self._stopped.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self._shutdown()

    def stop(self) -> None:
        if not self._stopped.is_set():
            log.info("daemon.stopping", extra=fields(running=",".join(self._running) or None))
            self._stopped.set()

    async def _shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        for task in list(self._running.values()):
            task.cancel()
        # each sweep stores what it measured and marks its run interrupted before it ends
        await asyncio.gather(*self._running.values(), return_exceptions=True)
        if self._submits:  # a submission in flight finishes (its thread cannot be cancelled)
            await asyncio.wait(set(self._submits), timeout=30)
        await asyncio.to_thread(self.store.put_schedule_state,
                                [self._state(name, running=False) for name in self.groups])
        log.info("daemon.stopped")

    # --- the schedule -----------------------------------------------------------------------

    def reload(self) -> None:
        if self._reload is None or self._stopped.is_set():
            return
        try:
            groups = list(self._reload())
        except Exception as exc:  # a broken config must not take the running schedule down
            log.error("config.rejected", extra=fields(
                reason=str(exc), kept=",".join(self.groups) or None))
            return
        log.info("config.reloaded", extra=fields(groups=",".join(g.name for g in groups)))
        asyncio.get_running_loop().create_task(self._apply(groups))

    async def _apply(self, groups: Sequence[GroupSpec]) -> None:
        async with self._applying:
            await self._apply_now(groups)

    async def _apply_now(self, groups: Sequence[GroupSpec]) -> None:
        new = {g.name: g for g in groups}
        gone = [name for name in self.groups if name not in new]
        for name in gone:
            self._scheduler.remove_job(name)
        await asyncio.to_thread(self.store.drop_schedule_state,
                                [(self.groups[n].plan.settings.vantage, n) for n in gone])
        for name, spec in new.items():
            old = self.groups.get(name)
            if old is None:
                self._scheduler.add_job(
                    self._fire, trigger=spec.trigger(), args=[name], id=name, name=name,
                    max_instances=1, coalesce=True, misfire_grace_time=misfire_grace(spec))
            elif _when(old) != _when(spec):
                self._scheduler.reschedule_job(name, trigger=spec.trigger())
                self._scheduler.modify_job(name, misfire_grace_time=misfire_grace(spec))
        if gone:
            for name in gone:
                del self.groups[name]
        self.groups.update(new)  # a running sweep keeps the plan it started with
        await self._save()
        for name in self.groups:
            log.info("schedule.next", extra=fields(
                group=name, schedule=self.groups[name].describe(),
                next_run=_iso(self.next_run(name))))

    def next_run(self, name: str) -> dt.datetime | None:
        job = self._scheduler.get_job(name)
        return None if job is None else job.next_run_time

    def _state(self, name: str, *, running: bool = True) -> ScheduleState:
        spec = self.groups[name]
        run_id, started, status = self._last.get(name, (None, None, None))
        return ScheduleState(
            vantage=spec.plan.settings.vantage, group=name, schedule=spec.describe(),
            next_run_at=self.next_run(name) if running else None, last_run_id=run_id,
            last_started_at=started, last_status=status,
            daemon_pid=os.getpid() if running else None,
            daemon_host=socket.gethostname() if running else None)

    async def _save(self) -> None:
        states = [self._state(name) for name in self.groups]
        try:
            await asyncio.to_thread(self.store.put_schedule_state, states)
        except StorageError as exc:  # --status will be stale; the schedule itself goes on
            log.error("state.unsaved", extra=fields(reason=str(exc)))

    def _on_event(self, event: JobEvent) -> None:
        name = event.job_id
        if event.code == EVENT_JOB_SUBMITTED:  # (max-instances events share its class)
            assert isinstance(event, JobSubmissionEvent)
            self._planned[name] = event.scheduled_run_times[-1]
            return
        reason = "still_running" if event.code == EVENT_JOB_MAX_INSTANCES else "missed"
        log.warning("run.skipped", extra=fields(group=name, reason=reason))

    # --- the collector ----------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._submits.add(task)
        task.add_done_callback(self._submits.discard)

    async def _submit(self, run_id: str | None) -> None:
        assert self._submit_fn is not None
        async with self._submitting:  # one flush at a time: they share the outbox
            try:
                await asyncio.to_thread(self._submit_fn, run_id)
            except Exception:  # the outbox keeps the runs: the next flush sends them
                log.exception("collector.flush_failed", extra=fields(run=run_id))

    async def _submit_loop(self) -> None:
        while not self._stopped.is_set():
            await self._submit(None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), self.submit_every_s)

    # --- one firing -------------------------------------------------------------------------

    async def _fire(self, name: str) -> None:
        spec = self.groups.get(name)
        if spec is None or self._stopped.is_set():
            return
        planned = self._planned.pop(name, None)
        try:
            lock = acquire_run_lock(self.lock_url, name, self.state_dir, command="schedule")
        except LockBusy as exc:
            log.warning("run.skipped", extra=fields(group=name, reason="locked",
                                                    holder_pid=exc.holder.get("pid")))
            self._last[name] = (None, dt.datetime.now(dt.UTC), "skipped: locked")
            await self._save()
            return
        task = asyncio.current_task()
        assert task is not None
        self._running[name] = task
        try:
            with lock:
                await self._sweep(spec, planned)
        except asyncio.CancelledError:
            if not self._stopped.is_set():
                raise
            # stopping: the sweep has stored its run as interrupted; end this job quietly
        finally:
            self._running.pop(name, None)
            if not self._stopped.is_set():
                await self._save()

    async def _sweep(self, spec: GroupSpec, planned: dt.datetime | None) -> None:
        plan, name = spec.plan, spec.name
        started = dt.datetime.now(dt.UTC)
        log.info("run.start", extra=fields(
            group=name, vantage=plan.settings.vantage, targets=len(plan.targets),
            planned=_iso(planned),
            late_s=None if planned is None else round((started - planned).total_seconds(), 3)))
        status = "interrupted"
        settings = plan.settings
        try:  # this group's lock is held: a run of it still "running" died with its process
            crashed = await asyncio.to_thread(self.store.mark_crashed, settings.vantage, name)
            if crashed:
                log.warning("run.crashed", extra=fields(group=name, runs=",".join(crashed)))
        except StorageError:
            pass  # the sweep says it if the database is away
        if self._prepare_fn is not None:
            try:
                settings = await asyncio.to_thread(self._prepare_fn, plan)
            except Exception:  # the sweep goes on without what the hook would have added
                log.exception("run.prepare_failed", extra=fields(group=name))
        try:
            async with asyncio.timeout(spec.max_runtime_s):
                outcome = await sweep(self.store, plan.services, plan.targets, plan.ctx,
                                      settings)
            status = outcome.run.status
        except TimeoutError:
            status = "interrupted"
            log.warning("run.max_runtime", extra=fields(group=name,
                                                        max_runtime_s=spec.max_runtime_s))
        except StorageError as exc:  # the database went away: say so, try again next time
            status = "failed"
            log.error("run.failed", extra=fields(group=name, reason=str(exc)))
        except Exception:  # a bug must not stop the other groups; the line has the traceback
            status = "failed"
            log.exception("run.failed", extra=fields(group=name))
        finally:
            await self._record(name, started, status)

    async def _record(self, name: str, started: dt.datetime, status: str) -> None:
        # the group lock is still held: the latest run of this group is the one just swept
        try:
            latest = await asyncio.shield(asyncio.to_thread(self.store.runs, 1, name))
        except StorageError:
            latest = []
        run = latest[0] if latest and latest[0].started_at >= started else None
        self._last[name] = (run.id if run else None, started, run.status if run else status)
        if run is not None and self._queue_fn is not None:
            try:  # queued even while stopping: the next start sends it
                await asyncio.shield(asyncio.to_thread(self._queue_fn, run.id))
            except Exception:
                log.exception("collector.queue_failed", extra=fields(run=run.id))
        if run is not None and self._submit_fn is not None and not self._stopped.is_set():
            self._spawn(self._submit(run.id))
        duration = None
        if run is not None and run.finished_at is not None:
            duration = round((run.finished_at - run.started_at).total_seconds(), 1)
        log.info("run.done", extra=fields(
            group=name, run=run.id if run else None, status=self._last[name][2],
            duration_s=duration, measurements=run.summary.get("measurements") if run else None,
            blocked=",".join(run.summary.get("blocked", [])) or None if run else None,
            next_run=_iso(self.next_run(name))))


def _when(spec: GroupSpec) -> tuple[float | None, str | None, float]:
    return spec.every_s, spec.cron, spec.spread_s


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
