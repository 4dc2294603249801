"""The collector's HTTP service (Starlette, served by uvicorn).

Endpoints (JSON answers; an error is ``{"error": "..."}`` with the status that says whether to
retry: 4xx never, 5xx later):

- ``POST /api/v1/submit``: a batch (``blockwatch.collector.batch``) with ``Authorization:
  Bearer <token>``; 200 ``{"runs", "measurements", "verdicts", "duplicates"}`` once committed;
  401 no or unknown token, 403 revoked or another vantage's data, 400 bad compression, 413 too
  large (on the wire, decompressed, or too many records), 415 unknown encoding, 422 invalid
  records, 429 over the token's rate (``Retry-After``), 503 the database is unavailable;
- ``GET /api/v1/token``: the token's vantage (a client checks its token);
- ``GET /api/v1/controls``: ``{"vantages": [...]}``, the control vantages (other than the
  asker);
- ``POST /api/v1/controls/{vantage}`` with ``{"since", "until", "services"}``: that control
  vantage's runs and measurements in the window (at most 31 days), of those services (all if
  none named), as a batch (``application/gzip``, the submission format), at most
  ``MAX_CONTROLS`` measurements (the newest; ``X-Blockwatch-Truncated: 1`` when more were
  there): what a vantage judges its own run against (``blockwatch.collector.controls``);
- ``GET /healthz``: 200 when the database answers, else 503.

No address of a client is stored, logged or answered with: uvicorn runs without its access log
and without proxy headers, and this module's log lines name the vantage only.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from blockwatch.collector import tokens
from blockwatch.collector.batch import (
    MAX_BODY,
    BatchError,
    ControlsQuery,
    decompress,
    encode,
    parse,
)
from blockwatch.collector.ingest import Stored, store_batch
from blockwatch.collector.judge import Judges
from blockwatch.storage.collector import (
    complete_runs,
    control_rows,
    control_vantages,
    ping,
    warm,
)
from blockwatch.storage.errors import StorageError

log = logging.getLogger("blockwatch.collector")


@dataclass(slots=True)
class Bucket:
    """A token bucket: ``rate`` submissions a second on average, ``burst`` at once."""

    rate: float
    burst: float
    level: float = 0.0
    at: float = field(default_factory=time.monotonic)

    def take(self) -> float:
        """0 if a submission may go now, else the seconds until one may."""
        now = time.monotonic()
        self.level = max(0.0, self.level - (now - self.at) * self.rate)
        self.at = now
        if self.level + 1 > self.burst:
            return (self.level + 1 - self.burst) / self.rate
        self.level += 1
        return 0.0


def _error(message: str, status: int, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


MAX_CONTROLS = 20_000  # measurements in one answer to a controls query (the newest kept)
MAX_QUERY = 256 * 1024  # a controls query's body: a window and at most 5,000 service names
MAX_JUDGING = 100_000  # runs waiting for the judging worker (their ids only)
# while batches arrive, judging takes at most 1/(1 + this) of the time (benchmarks/collector.py:
# 2 judged about a third of the runs by the end, 1 half with the same p99, 0 two thirds but the
# capacity fell by 9%)
JUDGING_PAUSE = 1.0
SHUTDOWN_JUDGING = 10.0  # seconds the judging may go on at shutdown (systemd waits 90)
DECODING = 4  # batches decoded and stored at once: each at most 16 MiB sent, 32 MiB decoded
# database connections kept open: the decoding slots', the token checks' and the judging
# queue's at once (asyncio's default threads: at most 32), all opened and warmed at startup
POOL = DECODING + 8


def make_app(store: Any, *, rate: float = 20.0, burst: float = 60.0) -> Starlette:
    buckets: dict[str, Bucket] = {}
    decoding = asyncio.Semaphore(DECODING)
    judges = Judges(store.engine.url.render_as_string(hide_password=False))
    # runs to judge, in arrival order (a dict: an ordered set), one consumer
    waiting: dict[str, None] = {}
    wake = asyncio.Event()
    consumer: list[asyncio.Task[None]] = []
    last_submission = [0.0]  # time.monotonic() of the latest batch stored
    stopping = asyncio.Event()

    async def judge_later(run_id: str) -> None:
        """The collector's own verdicts of a run that is all here, after the answer."""
        try:
            began = time.monotonic()
            added = await judges.judge(run_id)
            log.info("run %s judged against the control vantages: %d verdicts in %.3f s",
                     run_id, added, time.monotonic() - began)
        except Exception:  # logged, not raised: the batch is stored; reanalyze judges it
            log.exception("run %s: judging failed (blockwatch reanalyze judges it again)",
                          run_id)

    async def judge_waiting() -> None:
        """Judge the waiting runs that are all here, one at a time. While batches keep coming,
        after judging a run for t seconds wait JUDGING_PAUSE x t: the submissions, whose
        answers volunteers wait for, keep most of the machine (the worker's own CPU is idle
        priority, but the database work it asks for is not), and judging catches up when
        they pause."""
        while not (stopping.is_set() and not waiting):
            await wake.wait()
            wake.clear()
            while waiting:
                ids = list(waiting)[:100]
                for run_id in ids:
                    del waiting[run_id]
                try:
                    complete = await run(complete_runs, store, ids)
                except StorageError as exc:
                    log.warning("runs %s: not judged now, the database failed (%s); blockwatch "
                                "reanalyze judges them", ", ".join(ids), exc)
                    continue
                for run_id in complete:
                    began = time.monotonic()
                    await judge_later(run_id)
                    took = time.monotonic() - began
                    if last_submission[0] > began and not stopping.is_set():
                        await asyncio.sleep(JUDGING_PAUSE * took)

    def after(touched: set[str]) -> None:
        """After the answer: judge the runs of ``touched`` that are now all here."""
        last_submission[0] = time.monotonic()
        if not touched:
            return
        if len(waiting) >= MAX_JUDGING:  # bounded memory under a flood; the data is stored
            log.warning("%d runs wait to be judged: runs %s are not judged now (blockwatch "
                        "reanalyze --later-controls judges them)", len(waiting),
                        ", ".join(sorted(touched)))
            return
        waiting.update(dict.fromkeys(sorted(touched)))
        wake.set()
        if not consumer:
            consumer.append(asyncio.create_task(judge_waiting()))

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a thread; once more if the database connection it drew had been
        lost (PostgreSQL restarted): the pool does not check a connection before each use,
        which cost a round trip a transaction, three a submission."""
        try:
            return await asyncio.to_thread(fn, *args)
        except StorageError as exc:
            if not exc.disconnected:
                raise
            log.info("the database connection was lost; trying again on a new one")
            return await asyncio.to_thread(fn, *args)

    async def vantage_of(request: Request) -> tokens.Vantage | JSONResponse:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _error("no token: send Authorization: Bearer <token>", 401,
                          **{"WWW-Authenticate": "Bearer"})
        try:
            found: tokens.Vantage | None = await run(tokens.check, store, token.strip())
        except StorageError:
            return _error("the database is unavailable; try again later", 503)
        if found is None:
            return _error("unknown token", 401, **{"WWW-Authenticate": "Bearer"})
        if found.revoked_at is not None:
            return _error(f"the token of vantage {found.name!r} was revoked", 403)
        return found

    async def admitted(request: Request) -> tokens.Vantage | JSONResponse:
        """The request's vantage, if its token is valid and within its rate."""
        vantage = await vantage_of(request)
        if isinstance(vantage, JSONResponse):
            return vantage
        wait = buckets.setdefault(vantage.name, Bucket(rate, burst)).take()
        if wait > 0:
            return _error(f"over {rate:g} requests a second", 429,
                          **{"Retry-After": str(max(1, round(wait)))})
        return vantage

    async def submit(request: Request) -> JSONResponse:
        began = time.monotonic()
        vantage = await admitted(request)
        if isinstance(vantage, JSONResponse):
            return vantage
        checked = time.monotonic()
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
            return _error(f"batch of {declared} bytes: at most {MAX_BODY}", 413)
        async with decoding:  # however many vantages send at once, memory stays bounded
            admitted_at = time.monotonic()
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY:
                    return _error(f"batch larger than {MAX_BODY} bytes", 413)
            encoding = request.headers.get("content-encoding", "")

            read_at = time.monotonic()
            steps: list[float] = []

            def ingest() -> tuple[Stored, set[str]]:
                """Decode and store (one trip to a thread): what was stored, and the runs it
                touched."""
                steps.append(time.monotonic())
                batch = parse(decompress(bytes(body), encoding))
                steps.append(time.monotonic())
                stored = store_batch(store, batch, vantage)
                if not (stored.runs or stored.measurements or stored.verdicts):
                    return stored, set()
                return stored, {r.id for r in batch.runs} | {m.run_id for m in batch.measurements}

            try:
                stored, touched = await run(ingest)
            except BatchError as exc:
                log.info("vantage %s: batch refused (%d): %s", vantage.name, exc.status, exc)
                return _error(str(exc), exc.status)
            except StorageError as exc:
                log.warning("vantage %s: database error: %s", vantage.name, exc)
                return _error("the database is unavailable; nothing was stored, try again "
                              "later", 503)
        done = time.monotonic()
        # where the time of a submission went: token check, waiting for a decoding slot,
        # reading the body, waiting for a thread, decoding, the transaction
        log.info("vantage %s: stored %s in %.3f s (token %.3f, slot %.3f, body %.3f, thread "
                 "%.3f, decode %.3f, commit %.3f)", vantage.name, stored.to_dict(),
                 done - began, checked - began, admitted_at - checked, read_at - admitted_at,
                 steps[0] - read_at, steps[1] - steps[0], done - steps[1])
        after(touched)
        return JSONResponse(stored.to_dict())

    async def controls(request: Request) -> JSONResponse:
        vantage = await vantage_of(request)
        if isinstance(vantage, JSONResponse):
            return vantage
        try:
            names = await run(control_vantages, store)
        except StorageError:
            return _error("the database is unavailable; try again later", 503)
        return JSONResponse({"vantages": [n for n in names if n != vantage.name]})

    async def controls_of(request: Request) -> Response:
        vantage = await admitted(request)
        if isinstance(vantage, JSONResponse):
            return vantage
        name = request.path_params["vantage"]
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_QUERY:
                return _error(f"a controls query larger than {MAX_QUERY} bytes", 413)
        try:
            asked = ControlsQuery.model_validate_json(body)
        except ValidationError as exc:
            return _error(f"not a controls query: {exc.errors()[0]['msg']} at "
                          f"{'.'.join(str(p) for p in exc.errors()[0]['loc'])}", 422)
        try:
            if name == vantage.name or name not in await run(control_vantages, store):
                return _error(f"{name!r} is not another vantage's control", 404)
            runs, found = await run(control_rows, store, name, asked.since, asked.until,
                                    asked.services, MAX_CONTROLS)
        except StorageError:
            return _error("the database is unavailable; try again later", 503)
        from blockwatch.collector.client import json_row
        from blockwatch.storage.convert import measurement_to_row, run_to_row

        encoded = await asyncio.to_thread(
            encode, name, [json_row(run_to_row(r)) for r in runs],
            [json_row(measurement_to_row(m)) for m in found], [])
        return Response(encoded, media_type="application/gzip",
                        headers={"X-Blockwatch-Truncated": "1" if len(found) >= MAX_CONTROLS
                                 else "0"})

    async def whoami(request: Request) -> JSONResponse:
        vantage = await vantage_of(request)
        if isinstance(vantage, JSONResponse):
            return vantage
        return JSONResponse({"vantage": vantage.name, "country": vantage.country,
                             "asn": vantage.asn})

    async def health(_request: Request) -> JSONResponse:
        try:
            await run(ping, store)
        except StorageError:
            return _error("the database is unavailable", 503)
        return JSONResponse({"status": "ok"})

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # before the first request: the pool's connections opened and their backends warm,
        # the judging worker started (its interpreter and imports would otherwise compete
        # with the first submissions after every restart)
        try:
            await asyncio.to_thread(warm, store, POOL)
        except Exception as exc:  # a database down at startup: /healthz says so, requests 503
            log.warning("the database did not answer at startup (%s); serving anyway",
                        type(exc).__name__)
        await judges.start()
        yield
        # at shutdown, the run being judged and those waiting get SHUTDOWN_JUDGING seconds;
        # the rest are left to blockwatch reanalyze (their batches are stored)
        if consumer:
            stopping.set()
            wake.set()
            await asyncio.wait({consumer[0]}, timeout=SHUTDOWN_JUDGING)
            if not consumer[0].done():
                log.warning("%d runs not judged at shutdown (blockwatch reanalyze "
                            "--later-controls judges them)", len(waiting) + 1)
                consumer[0].cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consumer[0]
        await asyncio.to_thread(judges.close)

    return Starlette(routes=[Route("/api/v1/submit", submit, methods=["POST"]),
                             Route("/api/v1/token", whoami, methods=["GET"]),
                             Route("/api/v1/controls", controls, methods=["GET"]),
                             Route("/api/v1/controls/{vantage}", controls_of,
                                   methods=["POST"]),
                             Route("/healthz", health, methods=["GET"])], lifespan=lifespan)


def log_config() -> dict[str, Any]:
    """uvicorn's own logging configuration, without its access log (which names the client's
    address and port): that logger drops everything below CRITICAL, whatever handlers a
    deployment attaches to it."""
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["handlers"].pop("access", None)
    cfg["formatters"].pop("access", None)
    cfg["loggers"]["uvicorn.access"] = {"handlers": [], "level": "CRITICAL",
                                        "propagate": False}
    cfg["loggers"]["uvicorn.error"] = {"level": "INFO"}
    # the collector's own lines (a submission stored or refused, judging) on the same handler:
    # without it they reached no handler and only warnings were printed, bare
    cfg["loggers"]["blockwatch.collector"] = {"handlers": ["default"], "level": "INFO",
                                              "propagate": False}
    # the one log format of every blockwatch command (logfmt), not uvicorn's own
    cfg["formatters"]["default"] = {"()": "blockwatch.scheduler.logfmt.LogfmtFormatter"}
    return cfg


def make_server(store: Any, host: str, port: int, *, certfile: str | None = None,
                keyfile: str | None = None, rate: float = 20.0,
                burst: float = 60.0) -> Any:
    """The uvicorn server of ``make_app``: no access log, no proxy headers, no Server header."""
    import uvicorn

    log.setLevel(logging.INFO)  # one line per submission: the vantage and what was stored
    return uvicorn.Server(uvicorn.Config(
        make_app(store, rate=rate, burst=burst), host=host, port=port, access_log=False,
        proxy_headers=False, server_header=False, ssl_certfile=certfile,
        # log_level None: uvicorn would set the access logger's level back to it
        ssl_keyfile=keyfile, log_level=None, log_config=log_config(),
        timeout_graceful_shutdown=10))


def serve(store: Any, host: str, port: int, **kw: Any) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn's own handling: requests in flight finish)."""
    make_server(store, host, port, **kw).run()
