"""What a volunteer sees: every table fits an 80-column console with its borders whole, a
network that is down is said once, --json always prints JSON, a closed pipe ends quietly, the
reading commands take the same filters (relative dates too), and log lines go above the
progress bar. The sweeps are real ones of loopback servers (tests/test_cli.py's world)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from servers import blackhole_port
from test_cli import BLOCKWATCH, Result, World, service_verdicts
from test_cli import world as world  # the fixture, shared

from blockwatch.term import clip, console, log_through, width
from blockwatch.when import parse_when

BOX = "┏┃┡│└╇┗├┣╋┳┻┠┨"


async def run_at(columns: int | None, *args: str, limit: float = 60) -> Result:
    env = dict(os.environ)  # pytest's readline exports COLUMNS=80 behind os.environ: set it here
    env.pop("COLUMNS", None)
    if columns:
        env["COLUMNS"] = str(columns)
    proc = await asyncio.create_subprocess_exec(
        BLOCKWATCH, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env)
    out, err = await asyncio.wait_for(proc.communicate(), limit)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def assert_fits(text: str, columns: int) -> None:
    """No line wider than ``columns``; every table line closes with the border it opened."""
    tables = 0
    for line in text.splitlines():
        assert len(line) <= columns, line
        if line and line[0] in BOX:
            tables += line[0] in "┏"
            closing = {"┏": "┓", "┃": "┃", "┡": "┩", "│": "│", "└": "┘", "├": "┤"}[line[0]]
            assert line.endswith(closing), line
    assert tables, text


def blockwatch_here(capsys: pytest.CaptureFixture[str], *args: str) -> Result:
    """``blockwatch ARGS`` in this process (no interpreter to start: fast)."""
    from blockwatch.cli import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return Result(code, out, err)


async def test_tables_fit_80_columns_and_reading_filters(
        world: World, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ("--config", str(world.config))
    run = await run_at(80, "run", *cfg)  # a real sweep of the loopback servers
    assert run.code == 0, run.err
    assert_fits(run.out, 80)
    monkeypatch.setenv("COLUMNS", "80")
    run_id = json.loads(blockwatch_here(capsys, "export", *cfg).out.splitlines()[0])["run_id"]
    for args in (("runs", *cfg), ("show", run_id[:13], *cfg), ("services", *cfg),
                 ("report", "timeline", *cfg), ("report", "events"),
                 ("report", "changes", "--min-sweeps", "1", *cfg),
                 ("query", "SELECT service, verdict, evidence FROM verdicts", *cfg)):
        res = blockwatch_here(capsys, *args)
        assert res.code == 0, (args, res.err)
        assert_fits(res.out, 80)
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal is used: nothing folded that fits
    wide = blockwatch_here(capsys, "show", run_id[:13], *cfg)
    assert "dns.nxdomain_vs_control" in wide.out and max(map(len, wide.out.splitlines())) > 80

    # the reading commands' filters; --db needs no config
    db = ("--db", str(world.db))
    recent = blockwatch_here(capsys, "runs", *db, "--since", "1h", "--vantage", "lab-test")
    assert "1 most recent runs" in recent.out
    for args in (("--until", "2d"), ("--vantage", "elsewhere"), ("--since", "2099-01-01")):
        assert "0 most recent runs" in blockwatch_here(capsys, "runs", *db, *args).out
    lines = blockwatch_here(capsys, "export", *db, "--service", "good", "--since", "7d").out
    assert {json.loads(x)["service"] for x in lines.splitlines()} == {"good"}
    assert blockwatch_here(capsys, "export", *db, "--until", "1d").out == ""
    assert blockwatch_here(capsys, "export", *db, "--vantage", "elsewhere").out == ""
    with pytest.raises(SystemExit) as bad:  # argparse: exit 2, saying which forms it takes
        blockwatch_here(capsys, "runs", *db, "--since", "last tuesday")
    assert bad.value.code == 2 and "7d" in capsys.readouterr().err
    show = blockwatch_here(capsys, "show", *db, "--service", "nxblocked", run_id[:13])
    assert "nxblocked" in show.out and "example.test" not in show.out
    timeline = blockwatch_here(capsys, "report", "timeline", *db, "--since", "1d", "-f", "json")
    assert {r["vantage"] for r in json.loads(timeline.out)} == {"lab-test"}


def test_network_down_is_said_once_and_json_still_prints(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    db = tmp_path / "r.db"
    config = tmp_path / "bw.toml"
    with blackhole_port() as port:
        config.write_text(f"""
[storage]
url = "sqlite:///{db}"
[probes]
scope = ["127.0.0.0/8"]
services = ["a", "b", "c"]
[baseline]
endpoints = ["127.0.0.1:{port}"]
timeout = 0.5
[dns]
resolvers = ["udp://127.0.0.1:{port}"]
controls = []
""" + "".join(f'[[services]]\nname = "{n}"\ndomains = ["{n}.test"]\n' for n in "abc"))
        table = blockwatch_here(capsys, "run", "--config", str(config))
        as_json = blockwatch_here(capsys, "run", "--config", str(config), "--json")
        cron = blockwatch_here(capsys, "run", "--config", str(config), "--quiet",
                               "--offline-ok")
    assert table.code == 4 and as_json.code == 4
    assert set(service_verdicts(db).values()) == {"network_unavailable"}
    # three services, one row with a count, the message once on stderr
    assert table.out.count("network_unavailable") == 2  # the title's status and the one row
    assert "3 service(s)" in table.out
    assert table.err.count("network unavailable") == 1, table.err
    record = json.loads(as_json.out)
    assert record["status"] == "network_unavailable" and record["measurements"] == 0
    assert record["services"] == {"network_unavailable": 3}
    # cron: stored, nothing on stderr, exit 0 (no mail every offline hour)
    assert (cron.code, cron.out, cron.err) == (0, "", "")
    assert "3 most recent runs" in blockwatch_here(capsys, "runs", "--db", str(db)).out
    # show: the services of an offline run in one row too
    show = blockwatch_here(capsys, "show", "--db", str(db), record["run_id"])
    assert show.code == 0
    assert show.out.count("network_unavailable") == 2, show.out  # the status and the one row
    assert "3 service(s)" in show.out
    assert not ({"a", "b", "c"} & set(show.out.split()))  # no service listed on its own


def test_a_closed_pipe_ends_quietly() -> None:
    read, write = os.pipe()
    os.close(read)  # the reader (`| head`) has gone
    try:
        for args in (["report", "events", "-f", "csv"], ["report", "events"],
                     ["init", "--example"]):
            done = subprocess.run([BLOCKWATCH, *args], stdout=write, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, text=True, timeout=60, check=False)
            assert (done.returncode, done.stderr) == (0, ""), args
    finally:
        os.close(write)


def test_relative_dates() -> None:
    import datetime as dt

    now = dt.datetime(2026, 12, 6, 12, tzinfo=dt.UTC)
    assert parse_when("7d", now=now) == now - dt.timedelta(days=7)
    assert parse_when("2w", now=now) == now - dt.timedelta(days=14)
    assert parse_when("1d12h", now=now) == now - dt.timedelta(hours=36)
    assert parse_when("2026-11-01") == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    import argparse

    for bad in ("2026", "x", "-3d", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_when(bad, now=now)


def test_clip_says_it_cut() -> None:
    assert clip("abc", 5) == "abc" and clip(None, 5) == ""
    assert clip("a" * 100, 10) == "a" * 9 + "…" and len(clip("a" * 100, 10)) == 10


def test_width_follows_columns_and_a_pipe_is_wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    assert width(io.StringIO()) == 80 and console(io.StringIO()).width == 80
    monkeypatch.delenv("COLUMNS")
    assert width(io.StringIO()) == 160


def test_log_lines_go_above_the_progress_bar() -> None:
    from rich.progress import Progress

    from blockwatch.schedule_cli import configure_logging

    configure_logging(None)
    shown = io.StringIO()
    target = console(shown)
    handler = logging.getLogger().handlers[0]
    assert handler.stream is sys.stderr  # type: ignore[attr-defined]
    with Progress(console=target, transient=True) as bar, log_through(bar.console):
        bar.add_task("sweep", total=2)
        logging.getLogger("blockwatch").warning("resolver.slow")
    assert "event=resolver.slow" in shown.getvalue()  # printed by the console, above the bar
    assert handler.stream is sys.stderr  # type: ignore[attr-defined]


def test_python_dash_m() -> None:
    done = subprocess.run([sys.executable, "-m", "blockwatch", "--version"], capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.startswith("blockwatch ")
