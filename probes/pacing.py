"""Our own limits, kept out of the measurements.

A sweep bounds what it has in flight: names, queries per resolver (and per second), connections
per server address, and sockets (file descriptors). Waiting for one of those limits is time of
our own making, so:

* it is recorded per measurement (``Meter.queued``, stored as ``queued_s``);
* it never counts against a timeout: a ``deadline`` registered with the measurement's meter is
  paused while the measurement waits for one of our limits, so a deadline measures the network
  only, from the moment our own packet leaves;
* a measurement never fails because of our queue, only later.

The meter of the measurement in progress travels in a context variable: child tasks made with
``asyncio.gather``/``create_task`` inherit it, so every limiter a probe touches finds it
without being handed it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import resource
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType


class Meter:
    """One measurement's time spent waiting for our own limits, and the deadlines it pauses.

    Waits of concurrent child tasks overlap: ``queued`` is the length of their union, and a
    deadline is paused from the first wait's start to the last one's end. A wait that is not
    queueing (``record=False``: a shared DNS answer, bounded by the DNS timeouts) pauses the
    deadlines without counting as queued.
    """

    def __init__(self) -> None:
        self.queued = 0.0
        self._waiting = 0
        self._recording = 0
        self._record_since = 0.0
        self._paused: list[tuple[asyncio.Timeout, float]] = []
        self._deadlines: list[asyncio.Timeout] = []
        self.on_background: Callable[[], None] | None = None

    def waiting(self, record: bool = True) -> Waiting:
        return Waiting(self, record)

    def _enter(self, record: bool) -> None:
        now = asyncio.get_running_loop().time()  # the clock of the deadlines it pauses
        if self._waiting == 0:
            self._pause(now)
        self._waiting += 1
        if record:
            if self._recording == 0:
                self._record_since = now
            self._recording += 1

    def _exit(self, record: bool) -> None:
        now = asyncio.get_running_loop().time()
        if record:
            self._recording -= 1
            if self._recording == 0:
                self.queued += now - self._record_since
        self._waiting -= 1
        if self._waiting == 0:
            self._resume(now)

    def _pause(self, now: float) -> None:
        for t in self._deadlines:
            when = t.when()
            if when is not None and not t.expired():
                self._paused.append((t, when - now))
                t.reschedule(None)

    def _resume(self, now: float) -> None:
        paused, self._paused = self._paused, []
        for t, remaining in paused:
            if not t.expired():
                t.reschedule(now + max(0.0, remaining))

    def deadline(self, seconds: float | None) -> Deadline:
        """``asyncio.timeout(seconds)``, paused while this measurement waits for our limits."""
        return Deadline(seconds, self)

    def _register(self, t: asyncio.Timeout) -> None:
        self._deadlines.append(t)
        if self._waiting:  # registered during a wait: paused from now
            self._pause(asyncio.get_running_loop().time())

    def _unregister(self, t: asyncio.Timeout) -> None:
        self._deadlines.remove(t)
        if self._paused:
            self._paused = [(p, r) for p, r in self._paused if p is not t]

    def background(self) -> None:
        """The measurement only listens now (e.g. for late DNS answers): it no longer needs
        the slot of its name, which may go to the next one."""
        if self.on_background is not None:
            self.on_background()
            self.on_background = None


METER: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("blockwatch_meter",
                                                                     default=None)


def current() -> Meter | None:
    return METER.get()


@contextlib.contextmanager
def metering(meter: Meter) -> Iterator[Meter]:
    token = METER.set(meter)
    try:
        yield meter
    finally:
        METER.reset(token)


class Waiting:
    """A wait of our own making, as a context manager (a class, not a generator: a sweep
    enters thousands a second)."""

    __slots__ = ("_meter", "_record")

    def __init__(self, meter: Meter | None, record: bool) -> None:
        self._meter, self._record = meter, record

    def __enter__(self) -> None:
        if self._meter is not None:
            self._meter._enter(self._record)

    def __exit__(self, *exc: object) -> None:
        if self._meter is not None:
            self._meter._exit(self._record)


def waiting(record: bool = True) -> Waiting:
    """Mark a wait of our own making (a limit) for the current measurement: its deadlines are
    paused, and the time counts as queued unless ``record`` is False (a shared DNS answer)."""
    return Waiting(METER.get(), record)


class Deadline:
    """``asyncio.timeout(seconds)`` registered with a meter, which pauses it while its
    measurement waits for our limits. A class, not a generator: thousands are made a second."""

    __slots__ = ("_meter", "_seconds", "_timeout")

    def __init__(self, seconds: float | None, meter: Meter | None) -> None:
        self._seconds, self._meter = seconds, meter
        self._timeout: asyncio.Timeout | None = None

    async def __aenter__(self) -> asyncio.Timeout:
        t = self._timeout = asyncio.timeout(self._seconds)
        await t.__aenter__()
        if self._meter is not None:
            self._meter._register(t)
        return t

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        t = self._timeout
        assert t is not None
        if self._meter is not None:
            self._meter._unregister(t)
        await t.__aexit__(kind, exc, tb)  # raises TimeoutError if it expired


def deadline(seconds: float | None) -> Deadline:
    """A timeout that measures the network only: paused while the measurement queues."""
    return Deadline(seconds, METER.get())


def background() -> None:
    meter = METER.get()
    if meter is not None:
        meter.background()


# --- limiters -----------------------------------------------------------------------------------


class Slot:
    """A permit held; ``release`` is idempotent, so it may be given back early."""

    __slots__ = ("_release",)

    def __init__(self, release: Callable[[], None] | None) -> None:
        self._release = release

    def release(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None


NO_SLOT = Slot(None)


class Limiter:
    """At most ``permits`` holders at once, and, with ``per_second``, at most that many new
    holders a second (a token bucket holding one second's worth). Waiting is recorded as the
    current measurement's queue time. ``permits <= 0`` means no bound on holders."""

    def __init__(self, permits: int, per_second: float = 0.0) -> None:
        # free permits (None: no bound) and the waiters, first come first served: a FIFO of
        # futures rather than asyncio.Semaphore, whose locked() walks every waiter (thousands
        # wait in a large sweep)
        self._free: int | None = permits if permits > 0 else None
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._users = 0  # holding a permit or waiting for one
        self._rate = per_second
        self._tokens = max(1.0, per_second)
        self._stamp = 0.0

    async def acquire(self) -> Slot:
        self._users += 1
        if self._free is not None:
            if self._free > 0 and not self._waiters:
                self._free -= 1
            else:
                await self._wait()
        try:
            if self._rate > 0:
                await self._take_token()
        except BaseException:
            self._release()
            raise
        return Slot(self._release)

    async def _wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            with waiting():
                await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a permit as we were cancelled: hand it on
            else:
                self._users -= 1
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def _release(self) -> None:
        self._users -= 1
        if self._free is None:
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the permit goes to the first waiter
                return
        self._free += 1

    async def _take_token(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            self._tokens = min(max(1.0, self._rate),
                               self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return
            with waiting():
                await asyncio.sleep((1.0 - self._tokens) / self._rate)

    def idle(self) -> bool:
        """Nobody holds a permit or waits for one."""
        return self._users == 0

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[Slot]:
        slot = await self.acquire()
        try:
            yield slot
        finally:
            slot.release()


@dataclass(slots=True)
class Limits:
    """A sweep's limits on what it has in flight (0 = none). Made per sweep, in its loop."""

    per_resolver: int = 100
    per_resolver_qps: float = 0.0
    per_host: int = 8
    sockets: int = 0
    _resolvers: dict[str, Limiter] = field(default_factory=dict)
    _hosts: dict[str, Limiter] = field(default_factory=dict)
    _sockets: Limiter | None = None

    def fresh(self) -> Limits:
        """The same limits, with nothing held (for a new sweep: limiters bind to its loop)."""
        return Limits(per_resolver=self.per_resolver, per_resolver_qps=self.per_resolver_qps,
                      per_host=self.per_host, sockets=self.sockets)

    def resolver(self, key: str) -> Limiter:
        found = self._resolvers.get(key)
        if found is None:
            found = self._resolvers[key] = Limiter(self.per_resolver, self.per_resolver_qps)
        return found

    def host(self, address: str) -> Limiter:
        found = self._hosts.get(address)
        if found is None:
            found = self._hosts[address] = Limiter(self.per_host)
        return found

    def _host_released(self, address: str) -> None:
        """Forget a server's limiter once nothing holds or awaits it: a sweep of thousands of
        names need not keep one per address it ever met."""
        found = self._hosts.get(address)
        if found is not None and found.idle():
            del self._hosts[address]

    def socket(self) -> Limiter:
        if self._sockets is None:
            self._sockets = Limiter(self.sockets)
        return self._sockets

    async def connection(self, address: str) -> Slot:
        """A connection to ``address``: its server's share, then a socket (in that order, so
        that nobody holding a socket waits for a server)."""
        host = await self.host(address).acquire()
        try:
            sock = await self.socket().acquire()
        except BaseException:
            host.release()
            raise

        def release() -> None:
            sock.release()
            host.release()
            self._host_released(address)

        return Slot(release)


# --- file descriptors ---------------------------------------------------------------------------

RESERVED_FDS = 128  # the database, logs, the event loop, imports: never handed to probes


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (no privilege needed)
    and return the number of sockets a sweep may hold open at once."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    except (OSError, ValueError):
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, int(soft) - RESERVED_FDS)
