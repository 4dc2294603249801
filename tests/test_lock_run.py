"""Cron-safe ``blockwatch run`` end to end (a subprocess, loopback servers, a SQLite file):
two runs started together (exactly one runs, the other exits 5), ``--max-runtime`` (exit 6, run
interrupted), ``--group`` and ``--log-file`` (structured lines naming the run)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dns_server import Behaviour, DNSServer
from servers import LoopbackServer, http, make_pki
from test_cli import BLOCKWATCH, blockwatch

EXIT_LOCKED, EXIT_MAX_RUNTIME = 5, 6


@dataclass
class Lab:
    config: Path
    db: Path
    base: str  # the config without [[schedules]]

    def write(self, extra: str = "", *, http_timeout: float = 3.0) -> None:
        self.config.write_text(self.base.replace("HTTP_TIMEOUT", str(http_timeout)) + extra)

    def rows(self, sql: str) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.db) as conn:
            return conn.execute(sql).fetchall()


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    """Two services on loopback: ``good`` (fast) and ``slow`` (its page never comes: the sweep
    lasts the HTTP timeout)."""
    pki = make_pki(tmp_path)
    names = {"example.test": Behaviour(addresses=("127.0.0.1",))}
    with DNSServer(names) as resolver:
        async with LoopbackServer(http, tls=pki.server_context(pki.valid)) as web:
            db = tmp_path / "results.db"
            base = f"""
[vantage]
name = "loop"

[storage]
url = "sqlite:///{db}"

[timeouts]
dns = 1.0
tcp = 2.0
tls = 2.0
http = HTTP_TIMEOUT

[dns]
resolvers = ["{resolver.udp}"]
controls = []

[tls]
ca_bundle = "{pki.ca_bundle}"

[probes]
scope = ["127.0.0.0/8", "::1/128"]
services = ["good", "slow"]
probes = ["dns", "tcp", "http"]

[baseline]
endpoints = ["127.0.0.1:{web.port}"]
timeout = 1.0

[[services]]
name = "good"
domains = ["example.test"]
urls = ["https://example.test:{web.port}/"]

[[services]]
name = "slow"
urls = ["https://example.test:{web.port}/slow"]
"""
            lab = Lab(tmp_path / "bw.toml", db, base)
            lab.write()
            yield lab


async def test_two_runs_started_together_exactly_one_runs(lab: Lab) -> None:
    lab.write(http_timeout=1.5)  # each run lasts 1.5 s: far longer than starting the other
    first, second = await asyncio.gather(
        blockwatch("run", "--config", str(lab.config), "--quiet"),
        blockwatch("run", "--config", str(lab.config), "--quiet"))
    results = sorted([first, second], key=lambda r: r.code)
    assert [r.code for r in results] == [0, EXIT_LOCKED], (first.err, second.err)
    refused = results[1]
    assert "another blockwatch run is in progress" in refused.err
    assert "not starting (exit 5)" in refused.err and "Traceback" not in refused.err
    assert lab.rows("SELECT status FROM runs") == [("complete",)]
    # once the first has finished, the lock is free again
    assert (await blockwatch("run", "--config", str(lab.config), "--quiet")).code == 0


async def test_max_runtime_stops_the_sweep_and_stores_it_interrupted(lab: Lab) -> None:
    lab.write(http_timeout=30.0)
    t0 = time.monotonic()
    res = await blockwatch("run", "--config", str(lab.config), "--quiet", "--max-runtime", "2s")
    elapsed = time.monotonic() - t0
    assert res.code == EXIT_MAX_RUNTIME, res.err
    assert "stopped at the maximum runtime (2s)" in res.err
    assert elapsed < 15  # not the 30 s the slow page would take
    assert lab.rows("SELECT status FROM runs") == [("interrupted",)]
    assert lab.rows("PRAGMA integrity_check") == [("ok",)]
    services = {s for (s,) in lab.rows("SELECT service FROM measurements")}
    assert "good" in services  # what finished in time is stored


async def test_max_runtime_must_be_a_duration(lab: Lab) -> None:
    res = await blockwatch("run", "--config", str(lab.config), "--max-runtime", "soon")
    assert res.code == 2 and "'soon' is not a duration" in res.err


async def test_group_run_is_labelled_and_logged_as_structured_lines(lab: Lab, tmp_path: Path
                                                                    ) -> None:
    lab.write("""
[[schedules]]
name = "fast"
services = ["good"]
every = "1h"
vantage = "cron-vantage"
""")
    log = tmp_path / "logs" / "bw.log"
    res = await blockwatch("run", "--config", str(lab.config), "--group", "fast", "--quiet",
                           "--log-file", str(log))
    assert res.code == 0, res.err
    assert res.err == "" and res.out == ""  # --quiet: nothing but errors
    assert lab.rows("SELECT group_name, vantage, status FROM runs") == [
        ("fast", "cron-vantage", "complete")]
    services = {s for (s,) in lab.rows("SELECT service FROM measurements")}
    assert services == {"good"}
    lines = log.read_text().splitlines()
    events = [dict(p.split("=", 1) for p in line.split() if "=" in p) for line in lines]
    start = next(e for e in events if e["event"] == "run.start")
    done = next(e for e in events if e["event"] == "run.done")
    assert start["group"] == "fast" and start["vantage"] == "cron-vantage"
    (run_id,) = lab.rows("SELECT id FROM runs")[0]
    assert done["run"] == run_id and done["status"] == "complete"
    assert float(done["duration_s"]) >= 0 and done["ts"].endswith("Z")
    runs = await blockwatch("runs", "--config", str(lab.config))
    assert "fast" in runs.out and "complete" in runs.out

    unknown = await blockwatch("run", "--config", str(lab.config), "--group", "slowly")
    assert unknown.code == 2 and "no schedule group 'slowly' (known: fast)" in unknown.err


async def test_unwritable_log_file_is_a_usage_error(lab: Lab, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    res = await blockwatch("run", "--config", str(lab.config), "--log-file",
                           str(tmp_path / "afile" / "x.log"))
    assert res.code == 2 and "cannot open log file" in res.err
    assert not lab.db.exists()


async def test_a_run_killed_with_sigkill_is_marked_crashed_by_the_next(lab: Lab) -> None:
    """Issue #15: kill -9 leaves a run 'running' with nobody writing it; the next run of the
    same vantage and group (which holds the lock that the dead one held) marks it crashed,
    and says so."""
    import signal

    lab.write(http_timeout=30.0)  # the slow page keeps the first run going
    proc = await asyncio.create_subprocess_exec(
        BLOCKWATCH, "run", "--config", str(lab.config), "--quiet",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    deadline = time.monotonic() + 20

    def stored() -> bool:
        try:
            return bool(lab.rows("SELECT id FROM measurements"))
        except sqlite3.OperationalError:  # not created yet
            return False

    while not stored():
        assert time.monotonic() < deadline, "the first run stored nothing"
        await asyncio.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    [(killed, status)] = lab.rows("SELECT id, status FROM runs")
    assert status == "running"
    lab.write(http_timeout=1.0)
    again = await blockwatch("run", "--config", str(lab.config), "--quiet")
    assert again.code == 0, again.err
    assert f"run {killed[:13]} never ended" in again.err
    statuses = dict(lab.rows("SELECT id, status FROM runs"))
    assert statuses.pop(killed) == "crashed" and list(statuses.values()) == ["complete"]
    runs = await blockwatch("runs", "--config", str(lab.config))
    assert "crashed" in runs.out
