"""The collector judges each run once all of it has arrived, against the control vantages'
measurements that arrived through it (the same ``judge_run`` as a sweep and ``reanalyze``).

Control vantages are the tokens added with ``--control`` (outside the censored networks): a
run is judged with their measurements from ``MAX_AGE`` before to ``MAX_AGE`` after its start
(of each control vantage and service, its run nearest in time: ``Store.control_measurements``).
The verdicts are appended (a measurement's current verdict is the newest), marked
``details.judged_by = "collector"``, and the run records what it was judged on, so that
``blockwatch reanalyze --later-controls`` on the collector's database (e.g. after a control's
run arrived late) judges it again on the same terms.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from blockwatch.storage import collector as db

MAX_AGE = dt.timedelta(hours=6)
CONTROL_CACHE = 50_000  # control measurements the worker keeps decoded (a few 100 MB at most)
_catalogue: Any = None
_controls: Any = None


def judge(store: Any, run_id: str) -> int:
    """Judge the stored run ``run_id``; the number of verdicts added (0: not judged, e.g. a
    control path's run, whose measurements are evidence only)."""
    from blockwatch.analysis.verdicts import judge_run
    from blockwatch.judging import stored_inputs
    from blockwatch.probes.catalogue import load_catalogue
    from blockwatch.probes.model import RunInputs

    run = store.get_run(run_id)
    if run is None or run.status == "running" or run.control_for is not None:
        return 0
    controls = tuple(v for v in db.control_vantages(store) if v != run.vantage)
    own = run.inputs
    inputs = RunInputs(control_resolvers=own.control_resolvers if own else (),
                       control_vantages=controls,
                       local_networks=own.local_networks if own else (),
                       controls_since=run.started_at - MAX_AGE if controls else None,
                       controls_until=run.started_at + MAX_AGE if controls else None)
    global _catalogue
    if _catalogue is None:  # the built-in catalogue, parsed once per worker, not once a run
        _catalogue = load_catalogue()
    global _controls
    if _controls is None:  # the control runs, read once for every run judged against them
        from blockwatch.storage.store import RunCache

        _controls = RunCache(CONTROL_CACHE)
    verdicts = judge_run(stored_inputs(store, run, inputs, _catalogue, None, _controls))
    marked = [dataclasses.replace(v, details={**v.details, "judged_by": "collector"})
              for v in verdicts]
    store.add_verdicts(run.id, marked, inputs=inputs)  # one transaction
    return len(marked)


# --- in a process of its own -------------------------------------------------------------------
# Judging is CPU work (the analysis of every measurement of a run): in the service's process it
# would hold the GIL the requests need. A worker process judges instead, on its own connection.

_store: Any = None


def _open(url: str, parent: int) -> None:
    """The worker's start: die with the service (a SIGKILL leaves no orphan holding database
    connections: Linux's PR_SET_PDEATHSIG), then open the database."""
    global _store
    import contextlib
    import ctypes
    import os
    import signal

    from blockwatch.storage import open_store

    # not Linux (no prctl): the worker ends when its queue closes
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the service died before the line above
        os._exit(0)
    # judging comes after the answer: under load, the submissions (whose answers a volunteer
    # waits for) get the CPU first, and the worker catches up when they pause (Linux's
    # SCHED_IDLE: CPU time no other process wants; elsewhere the lowest nice value)
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        with contextlib.suppress(OSError):
            os.nice(19)
    _store = open_store(url)


def _judge(run_id: str) -> int:
    return judge(_store, run_id)


def _ready() -> None:
    """The worker's first task: the analysis code imported and the catalogue parsed (at idle
    priority, like all its work), so that the first run judged does not pay for them."""
    global _catalogue
    import blockwatch.analysis.verdicts
    import blockwatch.judging  # noqa: F401
    from blockwatch.probes.catalogue import load_catalogue

    if _catalogue is None:
        _catalogue = load_catalogue()


class Judges:
    """One worker process that judges runs by id (started at the first run, and again if it
    died)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: Any = None

    def _executor(self) -> Any:
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor

        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_open, initargs=(self.url, os.getpid()))
        return self._pool

    async def start(self) -> None:
        """Start the worker now (at the service's startup) and have it import what judging
        needs next, at its idle priority; a worker that cannot start is started again at the
        first run (``judge``)."""
        import asyncio
        import logging

        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor(), int, 0)  # the worker is up
            self._executor().submit(_ready)  # not awaited: judging runs queue behind it
        except Exception as exc:
            logging.getLogger("blockwatch.collector").warning(
                "the judging worker did not start (%s); trying again at the first run",
                type(exc).__name__)
            self._pool = None

    async def judge(self, run_id: str) -> int:
        import asyncio
        from concurrent.futures.process import BrokenProcessPool

        loop = asyncio.get_running_loop()
        try:
            return int(await loop.run_in_executor(self._executor(), _judge, run_id))
        except BrokenProcessPool:  # the worker died (killed, out of memory): a new one
            self._pool = None
            return int(await loop.run_in_executor(self._executor(), _judge, run_id))

    def close(self) -> None:
        if self._pool is not None:
            # the run being judged finishes; any still queued is left to reanalyze
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
