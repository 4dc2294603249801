"""The ech probe's ClientHello builder: one worker process that builds every hello with scapy
(``ech_hello.client_hello``), its life tied to the sweeps that use it.

Guarantees:

- One worker for the whole process, shared by the sweeps in flight, started by a sweep's first
  build (its spawn and import of scapy are that build's queue time, below). It used to start
  while the sweep was planned, but a sweep that never builds (its network down) then never
  joined it to shut it down: an idle process was left behind.
- The last sweep to end (``ProbeContext.aclose``, which ``scheduler.sweep`` awaits whether the
  sweep finished, failed or was interrupted) shuts the worker down and waits for it: a daemon's
  many sweeps leave no process or thread behind. Ctrl-C does not kill the worker (it ignores
  SIGINT; the parent ends it).
- A worker that died is replaced once, whatever number of builds saw it die; where no process
  can start, a thread builds (scapy then holds the GIL, the slower way, but it works).
- Waiting for the worker (its start, the builds queued before ours) is queue time of our own
  making (``pacing.waiting``): it never runs down a measurement's deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import BrokenExecutor, Executor, ProcessPoolExecutor, ThreadPoolExecutor

from blockwatch.probes import pacing
from blockwatch.probes.context import CLOSERS, ProbeContext
from blockwatch.probes.ech_hello import client_hello, load

_USER_KEY = "ech_builder_user"  # ctx.cache: this sweep holds a share of the builder
# seconds a build may take, the worker's start (spawn, scapy's import) included, on a loaded
# machine: a worker that hangs must not hold a measurement whose deadlines its wait pauses
BUILD_LIMIT = 60.0


def _worker_start() -> None:
    """The worker's initializer: Ctrl-C at a terminal reaches the whole process group, and
    the parent ends the worker (``_Builder.leave``); a worker of its own would die with a
    KeyboardInterrupt traceback and break the pool under a sweep still shutting down."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    load()


class _Builder:
    """The one worker that builds every ClientHello, shared by the sweeps in flight.

    A process: scapy's import (seconds) and builds (10-20 ms each) are CPU work; in a thread
    they held the GIL and stretched every other probe's clock in the same sweep (a lab delay
    test saw it), in a process they take the other core. A thread where no process can start
    (at construction or at the first submit, where the process is spawned). A sweep's first
    build starts it; each sweep that builds joins it, and the last to end
    (``ProbeContext.aclose``: a finished, failed or interrupted sweep alike) shuts it down and
    waits for it: a daemon's sweeps leave no process or thread behind."""

    def __init__(self) -> None:
        self.pool: Executor | None = None
        self.users = 0

    def get(self) -> Executor:
        if self.pool is None:
            self.pool = _start()
        return self.pool

    def replace(self, broken: Executor) -> Executor:
        """A new worker for one that died, once however many builds saw it die."""
        if self.pool is broken:
            self.pool = None
            broken.shutdown(wait=False, cancel_futures=True)
        return self.get()

    def join(self, ctx: ProbeContext) -> None:
        if ctx.cache.get(_USER_KEY):
            return
        ctx.cache[_USER_KEY] = True
        self.users += 1
        ctx.cache.setdefault(CLOSERS, []).append(self.leave)

    async def leave(self) -> None:
        self.users -= 1
        if self.users <= 0:
            self.users = 0
            # let go of it at once: a sweep starting while it shuts down gets a new one
            pool, self.pool = self.pool, None
            if pool is not None:
                await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    def shutdown(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _start() -> Executor:
    pool: Executor | None = None
    try:
        import multiprocessing

        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_start)
        pool.submit(load)  # spawns the worker now, which imports scapy
        return pool
    except (OSError, NotImplementedError, ImportError, RuntimeError, BrokenExecutor):
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.shutdown(wait=False, cancel_futures=True)
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="ech-hello")


BUILDER = _Builder()


async def build(ctx: ProbeContext, sni: str | None, ech: bytes | None) -> bytes:
    """``client_hello(sni, ech)`` in the builder; a worker that died is replaced once. Waiting
    for it (its start, other probes' builds) is queue time of our own making, bounded by
    ``BUILD_LIMIT`` (``TimeoutError``)."""
    loop = asyncio.get_running_loop()
    BUILDER.join(ctx)
    pool = BUILDER.get()
    with pacing.waiting():
        async with asyncio.timeout(BUILD_LIMIT):
            try:
                return await loop.run_in_executor(pool, client_hello, sni, ech)
            except (BrokenExecutor, RuntimeError):  # died, or shut down under us
                return await loop.run_in_executor(BUILDER.replace(pool), client_hello, sni,
                                                  ech)
