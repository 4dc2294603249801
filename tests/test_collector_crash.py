"""Issue #14's crash test: 20 vantages submit 100 runs each, concurrently, while the collector
(the real `blockwatch collector serve`) is killed with SIGKILL and restarted again and again
and PostgreSQL is restarted once. Afterwards every measurement is in PostgreSQL exactly once
(the ids compared), and every outbox is empty."""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from postgres import PostgresServer
from sqlalchemy import create_engine, text
from test_collector import _free_port

from blockwatch.collector import outbox, tokens
from blockwatch.probes.model import Measurement, Run, Target, TCPObservation
from blockwatch.probes.runner import new_id
from blockwatch.storage import open_store

VANTAGES, RUNS, PER_RUN = 20, 100, 3
KILLS = 6
BLOCKWATCH = str(Path(sys.executable).with_name("blockwatch"))
T0 = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)


def _parent_is_init(pid: int) -> bool:
    """An orphan: its parent died and it was handed to init (or a subreaper)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    ppid = int(next(x for x in status.splitlines() if x.startswith("PPid:")).split()[1])
    return ppid == 1 or (ppid != os.getpid() and not Path(f"/proc/{ppid}/cmdline").exists())


def make_vantage(path: Path, name: str) -> set[str]:
    """RUNS complete runs of PER_RUN measurements, each queued in the outbox; their ids."""
    ids: set[str] = set()
    with open_store(f"sqlite:///{path}") as store:
        for r in range(RUNS):
            at = T0 + dt.timedelta(minutes=r)
            run = Run(id=new_id(), vantage=name, started_at=at)
            ms = [Measurement(id=new_id(), run_id=run.id, vantage=name,
                              target=Target(service=f"s{i}", probe="tcp", host=f"h{i}.test",
                                            port=443),
                              probe_version="1", started_at=at, runtime_s=0.01,
                              observations=(TCPObservation(address=f"192.0.2.{i + 1}", port=443,
                                                           t0=0.0, t=0.01),))
                  for i in range(PER_RUN)]
            store.start_run(run)
            store.add_measurements(ms, run_id=run.id)
            store.finish_run(run.id, status="complete", finished_at=at,
                             summary={"measurements": PER_RUN})
            outbox.enqueue(store, run.id, "collector")
            ids |= {m.id for m in ms}
    return ids


class Collector:
    """`blockwatch collector serve` as a process, killed and started again on demand."""

    def __init__(self, db: str, port: int, log: Path) -> None:
        self.db, self.port, self.log = db, port, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [BLOCKWATCH, "collector", "serve", "--db", self.db, "--port", str(self.port),
                 "--rate", "10000"], stdout=out, stderr=out)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"the collector did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.kills += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def test_every_measurement_arrives_exactly_once_through_kills_and_a_database_restart(
        postgres_server: PostgresServer, tmp_path: Path) -> None:
    db = postgres_server.create_database()
    with open_store(db) as store:
        secrets = {f"v{i:02d}": tokens.add(store, f"v{i:02d}") for i in range(VANTAGES)}
    expected: set[str] = set()
    paths = {}
    for name in secrets:
        paths[name] = tmp_path / f"{name}.db"
        expected |= make_vantage(paths[name], name)
    port = _free_port()
    collector = Collector(db, port, tmp_path / "collector.log")
    collector.start()
    done = threading.Event()
    failures: list[BaseException] = []

    def vantage(name: str) -> None:
        sending = outbox.Sending(url=f"http://127.0.0.1:{port}", token=secrets[name], timeout=5)
        try:
            with open_store(f"sqlite:///{paths[name]}") as store:
                while outbox.entries(store) and not done.is_set():
                    report = outbox.flush(store, sending, force=True)
                    assert not report.rejected, report.rejected
                    if report.retry:
                        time.sleep(0.1)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=vantage, args=(n,)) for n in secrets]
    started = time.monotonic()
    for t in threads:
        t.start()
    rng = random.Random(7)
    restarted_db = False
    while any(t.is_alive() for t in threads) and time.monotonic() - started < 240:
        time.sleep(rng.uniform(0.5, 1.5))
        if collector.kills < KILLS:
            collector.kill()
            if collector.kills == 3 and not restarted_db:
                postgres_server.restart()
                restarted_db = True
            collector.start()
    done.set()
    for t in threads:
        t.join(60)
    collector.stop()
    elapsed = time.monotonic() - started
    assert not failures, failures
    assert collector.kills >= 5 and restarted_db
    engine = create_engine(db.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        stored = [r[0] for r in conn.execute(text("SELECT id FROM measurements"))]
        runs = conn.execute(text("SELECT count(*) FROM runs")).scalar_one()
    engine.dispose()
    assert len(stored) == len(set(stored)) == len(expected)  # exactly once
    assert set(stored) == expected
    assert runs == VANTAGES * RUNS
    for name, path in paths.items():
        with open_store(f"sqlite:///{path}") as store:
            assert outbox.entries(store) == [], name
    # the service's own lines reach its log (in logfmt), one a stored batch, naming the
    # vantage and never a client's address (the submitters all came from 127.0.0.1)
    lines = collector.log.read_text(errors="replace").splitlines()
    stored = [x for x in lines if ": stored {" in x]
    assert {x.split("vantage ", 1)[1].split(":", 1)[0] for x in stored} == set(secrets), \
        lines[-20:]
    assert all(x.startswith("ts=") and "logger=blockwatch.collector" in x for x in stored)
    assert not [x for x in lines if "127.0.0.1" in x and "Uvicorn running on" not in x]
    # the killed collectors left no process behind (their judging workers died with them)
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", "multiprocessing.spawn"], capture_output=True,
                          text=True, check=False).stdout.split()
    assert not [p for p in left if _parent_is_init(int(p))], left
    print(f"\n{VANTAGES} vantages x {RUNS} runs ({len(expected)} measurements) in "
          f"{elapsed:.1f} s through {collector.kills} SIGKILLs and a PostgreSQL restart: "
          "every measurement stored once, every outbox empty")
