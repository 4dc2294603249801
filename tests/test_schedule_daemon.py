"""The ``blockwatch schedule`` daemon end to end: a subprocess with a seconds-level schedule
against loopback servers, observed only through what a user sees (its log lines, the database,
``--status`` from another process) and signals (SIGTERM, SIGHUP, SIGSTOP/SIGCONT)."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_cli import BLOCKWATCH, blockwatch
from test_lock_run import Lab
from test_lock_run import lab as lab  # the fixture

from blockwatch.probes.model import Measurement, Run, Target, TCPObservation
from blockwatch.probes.runner import new_id

# Real schedules in real time (seconds per test): `-m "not slow"` skips them in a quick loop.
pytestmark = pytest.mark.slow

FAST = """
[[schedules]]
name = "fast"
services = ["good"]
every = "{every}"
spread = "{spread}"
"""


class Daemon:
    def __init__(self, world: Lab, log: Path) -> None:
        self.lab, self.log = world, log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, *extra: str) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            BLOCKWATCH, "schedule", "--config", str(self.lab.config), "--log-file",
            str(self.log), *extra, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self) -> tuple[int, str, str]:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(self.proc.communicate(), 30)
        assert self.proc.returncode is not None
        return self.proc.returncode, out.decode(), err.decode()

    def events(self, name: str | None = None) -> list[dict[str, str]]:
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            event = _parse(line)
            if name is None or event.get("event") == name:
                out.append(event)
        return out

    async def wait_for(self, name: str, count: int = 1, limit: float = 20) -> list[dict[str, str]]:
        deadline = time.monotonic() + limit
        while len(found := self.events(name)) < count:
            assert time.monotonic() < deadline, f"no {count} x {name} in {self.events()}"
            await asyncio.sleep(0.05)
        return found


def _parse(line: str) -> dict[str, str]:
    """logfmt: key=value or key="quoted value"."""
    out: dict[str, str] = {}
    i = 0
    while i < len(line):
        eq = line.index("=", i)
        key = line[i:eq]
        if line[eq + 1:eq + 2] == '"':
            j = eq + 2
            value = []
            while line[j] != '"':
                if line[j] == "\\":
                    j += 1
                value.append(line[j])
                j += 1
            out[key] = "".join(value)
            i = j + 2
        else:
            end = line.find(" ", eq)
            end = len(line) if end < 0 else end
            out[key] = line[eq + 1:end]
            i = end + 1
    return out


def _t(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
async def daemon(lab: Lab, tmp_path: Path) -> AsyncIterator[Daemon]:
    d = Daemon(lab, tmp_path / "daemon.log")
    yield d
    if d.proc is not None and d.proc.returncode is None:
        d.proc.kill()
        await d.proc.wait()


def runs(world: Lab, group: str) -> list[tuple[str, dt.datetime, dt.datetime | None, str]]:
    rows = world.rows(f"SELECT id, started_at, finished_at, status FROM runs "
                    f"WHERE group_name = '{group}' ORDER BY started_at")
    return [(str(i), _t(str(s)), _t(str(f)) if f else None, str(st)) for i, s, f, st in rows]


async def test_runs_happen_at_the_planned_times_and_status_reads_the_db(
        lab: Lab, daemon: Daemon) -> None:
    every, spread = 1, 0.25
    lab.write(FAST.format(every=f"{every}s", spread=f"{spread}s"))
    await daemon.start()
    await daemon.wait_for("run.done", 3, limit=30)

    status = await blockwatch("schedule", "--status", "--config", str(lab.config))
    assert status.code == 0, status.err
    assert "fast" in status.out and "every 1s, spread 0.25s" in status.out
    assert f"running (pid {daemon.proc.pid})" in status.out  # type: ignore[union-attr]
    assert "complete" in status.out
    (next_run,) = lab.rows("SELECT next_run_at FROM schedule_state WHERE group_name = 'fast'")[0]
    assert next_run is not None and _t(str(next_run)) > dt.datetime.now(dt.UTC) - dt.timedelta(
        seconds=1)

    code, out, err = await daemon.stop()
    assert code == 0, err
    assert "fast: every 1s, spread 0.25s; next run" in out  # shown at start
    starts = daemon.events("run.start")
    planned = [_t(e["planned"]) for e in starts]
    # each run started when it was planned (APScheduler's own latency only) ...
    assert all(0 <= float(e["late_s"]) < 0.5 for e in starts), starts
    # ... and the planned times are a 1 s grid, each pushed later by at most the 0.25 s spread
    # (a firing that came while the previous sweep still ran was skipped: its slot is empty)
    slots = [round((p - planned[0]).total_seconds() / every) for p in planned]
    offsets = [(p - planned[0]).total_seconds() - every * k for k, p in zip(slots, planned,
                                                                            strict=True)]
    assert max(offsets) - min(offsets) <= spread + 0.01, offsets
    assert slots == sorted(set(slots))  # (no drift: see test_schedule_groups for 200 runs)
    stored = runs(lab, "fast")
    assert len(stored) >= 3
    assert {r[3] for r in stored[:-1]} == {"complete"}
    for (_, _, fin, _), (_, nxt, _, _) in itertools.pairwise(stored):
        assert fin is not None and fin <= nxt  # never two at once
    assert lab.rows("SELECT next_run_at, daemon_pid FROM schedule_state") == [(None, None)]
    status = await blockwatch("schedule", "--status", "--config", str(lab.config))
    assert "stopped" in status.out
    listed = await blockwatch("runs", "--config", str(lab.config))
    rows = [ln for ln in listed.out.splitlines() if stored[0][0][:13] in ln]
    assert rows and "fast" in rows[0] and "complete" in rows[0] and "1 ok" in rows[0]


async def test_a_busy_group_skips_firings_instead_of_overlapping(
        lab: Lab, daemon: Daemon) -> None:
    lab.write("""
[[schedules]]
name = "slow"
services = ["slow"]
every = "1s"
""", http_timeout=1.5)
    await daemon.start()
    await daemon.wait_for("run.done", 2, limit=30)
    skipped = daemon.events("run.skipped")
    assert skipped and {e["reason"] for e in skipped} == {"still_running"}
    await daemon.stop()
    stored = runs(lab, "slow")
    for (_, _, fin, _), (_, nxt, _, _) in itertools.pairwise(stored):
        assert fin is not None and fin <= nxt, stored  # each run waited for the previous one


async def test_missed_runs_coalesce_into_one(lab: Lab, daemon: Daemon) -> None:
    lab.write(FAST.format(every="1s", spread="0s"))
    await daemon.start()
    await daemon.wait_for("run.done", 1)
    await asyncio.sleep(0.3)  # between runs
    daemon.signal(signal.SIGSTOP)  # the machine "sleeps" through three planned runs
    await asyncio.sleep(3.2)
    before = len(runs(lab, "fast"))
    resumed = dt.datetime.now(dt.UTC)
    daemon.signal(signal.SIGCONT)
    await asyncio.sleep(0.8)
    await daemon.stop()
    after_resume = [r for r in runs(lab, "fast") if r[1] >= resumed]
    assert before >= 1
    assert len(after_resume) == 1, after_resume  # one catch-up run, not three


async def test_sigterm_mid_sweep_leaves_a_consistent_database(
        lab: Lab, daemon: Daemon) -> None:
    lab.write("""
[[schedules]]
name = "both"
every = "1s"
""", http_timeout=30.0)
    await daemon.start()
    deadline = time.monotonic() + 20
    while True:  # until the fast measurements of the first run are stored
        await asyncio.sleep(0.1)
        assert time.monotonic() < deadline
        try:
            if lab.rows("SELECT count(*) FROM measurements")[0][0] >= 2:
                break
        except sqlite3.OperationalError:  # the daemon has not created the tables yet
            continue
    assert lab.rows("SELECT status FROM runs") == [("running",)]
    t0 = time.monotonic()
    code, _, err = await daemon.stop()
    assert code == 0, err
    assert time.monotonic() - t0 < 10  # aborted, not waited out (the slow page takes 30 s)
    assert lab.rows("PRAGMA integrity_check") == [("ok",)]
    assert lab.rows("SELECT status FROM runs") == [("interrupted",)]
    services = {s for (s,) in lab.rows("SELECT service FROM measurements")}
    assert "good" in services
    assert lab.rows("SELECT count(*) FROM verdicts WHERE measurement_id IS NULL")[0][0] >= 1
    assert "Traceback" not in err
    done = daemon.events("run.done")
    assert done and done[-1]["status"] == "interrupted"


async def test_sighup_rejects_a_broken_config_and_applies_a_good_one(
        lab: Lab, daemon: Daemon) -> None:
    lab.write(FAST.format(every="1s", spread="0s"))
    await daemon.start()
    await daemon.wait_for("run.done", 1)
    good = lab.config.read_text()
    lab.config.write_text(good.replace('every = "1s"', 'every = "soon"'))
    daemon.signal(signal.SIGHUP)
    (rejected,) = await daemon.wait_for("config.rejected")
    assert "schedules[0].every: 'soon' is not a duration" in rejected["reason"]
    assert rejected["kept"] == "fast"
    n = len(daemon.events("run.done"))
    await daemon.wait_for("run.done", n + 2)  # the old schedule keeps running

    lab.config.write_text(good.replace('name = "fast"', 'name = "renamed"'))
    daemon.signal(signal.SIGHUP)
    await daemon.wait_for("config.reloaded")
    deadline = time.monotonic() + 10
    while not runs(lab, "renamed"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    groups = lab.rows("SELECT group_name FROM schedule_state")
    code, _, err = await daemon.stop()
    assert code == 0, err
    assert groups == [("renamed",)]


async def test_refusals(lab: Lab, daemon: Daemon, tmp_path: Path) -> None:
    res = await blockwatch("schedule", "--config", str(lab.config))
    assert res.code == 2 and "no [[schedules]] groups" in res.err
    status = await blockwatch("schedule", "--status", "--config", str(lab.config))
    assert status.code == 0 and "no schedule recorded" in status.out

    lab.write(FAST.format(every="1h", spread="0s"))
    await daemon.start()
    await daemon.wait_for("schedule.next")
    second = await blockwatch("schedule", "--config", str(lab.config))
    assert second.code == 5 and "already running" in second.err
    assert f"pid {daemon.proc.pid}" in second.err  # type: ignore[union-attr]
    code, _, _ = await daemon.stop()
    assert code == 0
    assert lab.rows("SELECT count(*) FROM runs") == [(0,)]  # hourly: nothing ran yet


async def test_max_runtime_cuts_a_scheduled_sweep(lab: Lab, daemon: Daemon) -> None:
    lab.write("""
[[schedules]]
name = "capped"
every = "1s"
max_runtime = "1s"
""", http_timeout=30.0)
    await daemon.start()
    cut = (await daemon.wait_for("run.max_runtime"))[0]
    assert cut["group"] == "capped"
    done = (await daemon.wait_for("run.done"))[0]
    assert done["status"] == "interrupted" and float(done["duration_s"]) < 5
    await daemon.stop()
    assert {s for (s,) in lab.rows("SELECT status FROM runs")} == {"interrupted"}
    assert lab.rows("PRAGMA integrity_check") == [("ok",)]


async def test_cron_runs_and_the_daemon_never_overlap(lab: Lab, daemon: Daemon) -> None:
    lab.write("""
[[schedules]]
name = "slow"
services = ["slow"]
every = "1s"
""", http_timeout=5.0)  # the one-shot runs below start well inside the daemon's 5 s sweep
    await daemon.start()
    await daemon.wait_for("run.start")
    same_group = await blockwatch("run", "--config", str(lab.config), "--group", "slow",
                                  "--quiet")
    ungrouped = await blockwatch("run", "--config", str(lab.config), "--quiet")
    assert same_group.code == 5 and "group slow" in same_group.err, same_group.err
    assert ungrouped.code == 5 and "of a schedule group" in ungrouped.err, ungrouped.err
    await daemon.wait_for("run.done")
    await daemon.stop()
    stored = runs(lab, "slow")
    assert lab.rows("SELECT count(*) FROM runs WHERE group_name IS NULL") == [(0,)]
    for (_, _, fin, _), (_, nxt, _, _) in itertools.pairwise(stored):
        assert fin is not None and fin <= nxt


async def test_status_tells_a_killed_daemon_from_a_running_one(lab: Lab, daemon: Daemon) -> None:
    lab.write(FAST.format(every="1h", spread="0s"))
    await daemon.start()
    await daemon.wait_for("schedule.next")
    assert daemon.proc is not None
    running = await blockwatch("schedule", "--status", "--config", str(lab.config))
    assert f"running (pid {daemon.proc.pid})" in running.out
    assert "(in 59m" in running.out or "(in 1h)" in running.out
    daemon.signal(signal.SIGKILL)
    await daemon.proc.wait()
    killed = await blockwatch("schedule", "--status", "--config", str(lab.config))
    assert f"not running (pid {daemon.proc.pid} gone: killed?)" in killed.out
    await daemon.start()  # the killed daemon left no lock behind: a new one starts
    await daemon.wait_for("schedule.next", 2)
    revived = await blockwatch("schedule", "--status", "--config", str(lab.config))
    assert f"running (pid {daemon.proc.pid})" in revived.out
    code, _, err = await daemon.stop()
    assert code == 0, err


async def test_the_daemon_submits_its_runs_to_the_collector(lab: Lab, daemon: Daemon,
                                                            tmp_path: Path) -> None:
    """Issue #14: the daemon flushes the outbox when it starts and after each run; runs made
    while the collector was away reach it after the next run once it is back."""
    from test_collector import _free_port, running

    from blockwatch.collector import tokens
    from blockwatch.storage import open_store

    port = _free_port()
    collector_db = f"sqlite:///{tmp_path / 'collector.db'}"
    with open_store(collector_db) as store:
        token = tokens.add(store, "loop")
        # a control vantage's run, there already: each sweep fetches it first (controls)
        tokens.add(store, "vps", control=True)
        now = dt.datetime.now(dt.UTC)
        vps = Run(id=new_id(), vantage="vps", started_at=now, status="running")
        store.start_run(vps)
        store.add_measurements([Measurement(
            id=new_id(), run_id=vps.id, vantage="vps", probe_version="1", started_at=now,
            target=Target(service="good", probe="tcp", host="127.0.0.1", port=9),
            runtime_s=0.01, observations=(TCPObservation(address="127.0.0.1", port=9, t0=0,
                                                         t=0.01),))], run_id=vps.id)
        store.finish_run(vps.id, status="complete", finished_at=now,
                         summary={"measurements": 1})
    (tmp_path / "token").write_text(token)
    lab.write(FAST.format(every="1s", spread="0s")
              + f'\n[collector]\nurl = "http://127.0.0.1:{port}"\n'
              f'token_file = "{tmp_path / "token"}"\ntimeout = 2\n')
    await daemon.start()
    await daemon.wait_for("run.done", 2, limit=30)  # the collector is away
    await daemon.wait_for("collector.flush_failed", 0)
    waiting = lab.rows("SELECT count(*) FROM outbox WHERE state = 'pending'")[0][0]
    assert waiting >= 2
    with running(collector_db, port) as collector:
        done = len(daemon.events("run.done"))
        await daemon.wait_for("run.done", done + 2, limit=30)
        await asyncio.sleep(1.0)  # the last run's submission
        code, _, err = await daemon.stop()
        assert code == 0, err
        stored = {r[0] for r in runs(lab, "fast")}
        at_collector = {str(r.id) for r in collector.store.runs(limit=1000)
                        if r.vantage == "loop"}
        left = {str(r[0]) for r in lab.rows("SELECT run_id FROM outbox")}
        # every run is at the collector or waits in the outbox (the one the stop interrupted)
        assert stored == at_collector | left, (stored, at_collector, left)
        assert len(left) <= 1 and len(at_collector) >= waiting + 1
    # the runs made while the collector was there were judged against its control vantage
    judged = [json.loads(v) for (v,) in lab.rows(
        "SELECT control_vantages FROM runs WHERE vantage = 'loop' AND control_vantages "
        "IS NOT NULL")]
    assert ["vps"] in judged, judged
    assert lab.rows("SELECT count(*) FROM measurements WHERE vantage = 'vps'")[0][0] == 1
