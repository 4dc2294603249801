"""The CLI end to end, as a user runs it: a subprocess, a config file, a temporary SQLite
database, and real servers on loopback (a tested DNS resolver that lies, a control resolver
that does not, an HTTPS server with a trustme certificate)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dns_server import Behaviour, DNSServer
from servers import LoopbackServer, blackhole_port, http, make_pki, reset_on_data

from blockwatch.storage import open_store

BLOCKWATCH = str(Path(sys.executable).parent / "blockwatch")
CONTRACT = {"measurement_id", "run_id", "vantage", "service", "target", "probe", "started_at",
            "runtime_s", "failure", "verdict", "rule_id", "analyzer_version", "observations"}


@dataclass
class Result:
    code: int
    out: str
    err: str


async def blockwatch(*args: str, limit: float = 60) -> Result:
    # env given: pytest loads GNU readline, which exports COLUMNS=80 behind os.environ's back,
    # and tables honour $COLUMNS (tests/test_terminal.py tests 80 columns on purpose)
    proc = await asyncio.create_subprocess_exec(
        BLOCKWATCH, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ))
    out, err = await asyncio.wait_for(proc.communicate(), limit)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@dataclass
class World:
    config: Path
    db: Path
    https_port: int
    tested: DNSServer


def write_config(path: Path, *, db: Path, tested: str, control: str, https_port: int,
                 ca: str, baseline: str, extra: str = "") -> None:
    path.write_text(f"""
[vantage]
name = "lab-test"
country = "CN"

[storage]
url = "sqlite:///{db}"

[timeouts]
dns = 1.0
tcp = 2.0
tls = 2.0
http = 3.0

[dns]
resolvers = ["{tested}"]
controls = ["{control}"]

[tls]
ca_bundle = "{ca}"

[probes]
scope = ["127.0.0.0/8", "::1/128"]
services = ["good", "nxblocked", "injected"]

[baseline]
endpoints = ["{baseline}"]
timeout = 1.0

[[services]]
name = "good"
domains = ["example.test"]
urls = ["https://example.test:{https_port}/"]

[[services]]
name = "nxblocked"
domains = ["nx.test"]

[[services]]
name = "injected"
domains = ["inj.test"]
{extra}
""")


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    pki = make_pki(tmp_path)
    real = Behaviour(addresses=("127.0.0.1",))
    tested_names = {"example.test": real, "nx.test": Behaviour(rcode="NXDOMAIN"),
                    "inj.test": Behaviour(addresses=("127.0.0.1",), forged=("127.0.0.9",))}
    control_names = {"example.test": real, "nx.test": real, "inj.test": real}
    with DNSServer(tested_names) as tested, DNSServer(control_names) as control:
        async with LoopbackServer(http, tls=pki.server_context(pki.valid)) as web:
            db = tmp_path / "results.db"
            config = tmp_path / "bw.toml"
            write_config(config, db=db, tested=tested.udp, control=control.udp,
                         https_port=web.port, ca=pki.ca_bundle,
                         baseline=f"127.0.0.1:{web.port}")
            yield World(config, db, web.port, tested)


def service_verdicts(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT service, verdict FROM verdicts WHERE measurement_id IS NULL")
        return dict(rows.fetchall())


async def test_run_stores_verdicts_and_lists_them(world: World) -> None:
    res = await blockwatch("run", "--config", str(world.config))
    assert res.code == 0, res.err
    assert "good" in res.out and "ok" in res.out
    verdicts = service_verdicts(world.db)
    assert verdicts == {"good": "ok", "nxblocked": "blocked", "injected": "blocked"}
    with sqlite3.connect(world.db) as conn:
        rules = {r for (r,) in conn.execute("SELECT rule_id FROM verdicts")}
        status, country = conn.execute("SELECT status, country FROM runs").fetchone()
        probes = {p for (p,) in conn.execute("SELECT probe FROM measurements")}
    assert {"dns.nxdomain_vs_control", "dns.injection.multiple_responses"} <= rules
    assert (status, country) == ("complete", "CN")
    assert probes == {"dns", "tcp", "tls", "http", "quic", "ech"}  # on by default (#17)

    runs = await blockwatch("runs", "--config", str(world.config))
    assert runs.code == 0 and "complete" in runs.out and "lab-test" in runs.out
    run_id = json.loads((await blockwatch("export", "--config", str(world.config))).out
                        .splitlines()[0])["run_id"]
    show = await blockwatch("show", run_id[:10], "--config", str(world.config))
    assert show.code == 0, show.err
    assert "dns.nxdomain_vs_control" in show.out and "inj.test" in show.out


async def test_run_json_prints_one_object_per_measurement(world: World) -> None:
    res = await blockwatch("run", "--config", str(world.config), "--json",
                           "--service", "injected")
    assert res.code == 0, res.err
    rows = [json.loads(line) for line in res.out.splitlines()]
    assert rows and all(CONTRACT <= set(r) for r in rows)
    assert {r["service"] for r in rows} == {"injected"}
    tested = [r for r in rows if r["target"].startswith("inj.test@udp://127.0.0.1")
              and world.tested.udp in r["target"]]
    assert tested[0]["verdict"] == "dns_blocked"
    responses = tested[0]["observations"][0]["responses"]
    assert {a["value"] for r in responses for a in r["answers"]} == {"127.0.0.1", "127.0.0.9"}


async def test_export_formats_and_since(world: World) -> None:
    assert (await blockwatch("run", "--config", str(world.config), "--quiet")).code == 0
    jl = await blockwatch("export", "--config", str(world.config), "--format", "jsonl")
    rows = [json.loads(line) for line in jl.out.splitlines()]
    assert rows and all(CONTRACT <= set(r) for r in rows)
    c = await blockwatch("export", "--config", str(world.config), "--format", "csv")
    table = list(csv.DictReader(io.StringIO(c.out)))
    assert len(table) == len(rows) and CONTRACT <= set(table[0])
    later = await blockwatch("export", "--config", str(world.config), "--since", "2999-01-01")
    assert later.code == 0 and later.out == ""
    bad = await blockwatch("export", "--config", str(world.config), "--since", "yesterday")
    assert bad.code == 2 and "not a date" in bad.err


async def test_network_unavailable_probes_nothing(world: World, tmp_path: Path) -> None:
    with blackhole_port() as port:
        text = world.config.read_text().replace(
            f'endpoints = ["127.0.0.1:{world.https_port}"]', f'endpoints = ["127.0.0.1:{port}"]')
        world.config.write_text(text)
        before = world.tested.count()
        res = await blockwatch("run", "--config", str(world.config))
    assert res.code == 4, res.err
    assert "network unavailable" in res.err
    assert world.tested.count() == before  # not one query was sent
    assert set(service_verdicts(world.db).values()) == {"network_unavailable"}
    with sqlite3.connect(world.db) as conn:
        assert conn.execute("SELECT count(*) FROM measurements").fetchone() == (0,)
        assert conn.execute("SELECT status FROM runs").fetchone() == ("network_unavailable",)


async def test_config_error_measures_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    db = tmp_path / "never.db"
    cfg.write_text(f'[storage]\nurl = "sqlite:///{db}"\n[timeouts]\ntcp = "slow"\n')
    res = await blockwatch("run", "--config", str(cfg))
    assert res.code == 2
    assert f"{cfg}:4: timeouts.tcp" in res.err
    assert "Traceback" not in res.err
    assert not db.exists()


async def test_broken_database_is_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "broken.db"
    db.write_bytes(b"this is not a database" * 100)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:///{db}"\n')
    res = await blockwatch("runs", "--config", str(cfg))
    assert res.code == 3
    assert "database error" in res.err and "Traceback" not in res.err
    assert db.read_bytes() == b"this is not a database" * 100  # nothing overwritten


async def test_unknown_service_and_run(world: World) -> None:
    res = await blockwatch("run", "--config", str(world.config), "--service", "nosuch")
    assert res.code == 2 and "unknown service 'nosuch'" in res.err
    res = await blockwatch("show", "ffffffff", "--config", str(world.config))
    assert res.code == 2 and "no run" in res.err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_interrupt_stores_what_was_measured(world: World, sig: int) -> None:
    slow = f"https://example.test:{world.https_port}/slow"
    text = world.config.read_text() + f"""
[[services]]
name = "slow"
urls = ["{slow}"]
"""
    text = text.replace('services = ["good", "nxblocked", "injected"]',
                        'services = ["good", "slow"]').replace("http = 3.0", "http = 60.0")
    world.config.write_text(text)
    proc = await asyncio.create_subprocess_exec(
        BLOCKWATCH, "run", "--config", str(world.config), "--quiet",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    for _ in range(200):  # wait until the fast targets are stored
        await asyncio.sleep(0.1)
        if world.db.exists():
            with open_store(f"sqlite:///{world.db}") as store:
                if sum(1 for _ in store.measurements()) >= 3:
                    break
    proc.send_signal(sig)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130, err.decode()
    with sqlite3.connect(world.db) as conn:
        assert conn.execute("SELECT status FROM runs").fetchone() == ("interrupted",)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        n = conn.execute("SELECT count(*) FROM measurements").fetchone()[0]
        services = {s for (s,) in conn.execute("SELECT service FROM measurements")}
    assert n >= 3 and "good" in services
    assert "Traceback" not in err.decode()


def test_console_script_is_installed() -> None:
    assert os.access(BLOCKWATCH, os.X_OK)


async def test_runs_group_filter_and_parquet_needs_output(world: World) -> None:
    assert (await blockwatch("run", "--config", str(world.config), "--quiet")).code == 0
    listed = await blockwatch("runs", "--config", str(world.config), "--group", "nightly")
    assert listed.code == 0 and "0 most recent runs" in listed.out
    res = await blockwatch("export", "--config", str(world.config), "--format", "parquet")
    assert res.code == 2 and ("--output" in res.err or "optional package" in res.err)


async def test_a_scope_that_switches_off_the_baseline_or_a_control_says_so(
        world: World) -> None:
    """Issue #13 (5): baseline endpoints and control resolvers outside the scope are never
    contacted (the scope is checked first); the run says so on stderr and in its summary."""
    text = world.config.read_text()
    baseline = text.split("[baseline]\nendpoints = [")[1].split("]")[0]
    text = text.replace(f"endpoints = [{baseline}]", 'endpoints = ["9.9.9.9:443"]')
    text = text.replace('controls = ["', 'controls = ["https://1.1.1.1/dns-query", "')
    world.config.write_text(text)
    res = await blockwatch("run", "--config", str(world.config))
    assert res.code == 0, res.err
    assert "warning: the baseline endpoints (9.9.9.9:443) are outside [probes] scope" in res.err
    assert ("warning: the control resolvers (https://1.1.1.1/dns-query) are outside [probes] "
            "scope: they are not asked, so DNS answers are compared with fewer") in res.err
    with sqlite3.connect(world.db) as conn:
        (summary,) = conn.execute("SELECT summary FROM runs").fetchone()
    warnings = json.loads(summary)["warnings"]
    assert len(warnings) == 2 and warnings[0].startswith("the baseline endpoints (9.9.9.9:443)")
    # --quiet (cron) prints errors only: the summary keeps the warnings
    res = await blockwatch("run", "--config", str(world.config), "--quiet")
    assert res.code == 0 and res.err == "", res.err
    # inside the scope, nothing is said
    world.config.write_text(text.replace('"9.9.9.9:443"', baseline).replace(
        '"https://1.1.1.1/dns-query", ', ""))
    res = await blockwatch("run", "--config", str(world.config), "--quiet")
    assert res.code == 0 and "warning:" not in res.err, res.err


async def test_what_a_control_would_settle_is_said(world: World) -> None:
    """Issue #13 (6): a service inconclusive only because no control saw the same step is
    named in the summary (needs_control), with what would settle it."""
    with blackhole_port() as port:
        text = world.config.read_text().replace(
            'services = ["good", "nxblocked", "injected"]',
            'services = ["good", "dead"]')
        world.config.write_text(text + f'\n[[services]]\nname = "dead"\n'
                                       f'endpoints = ["127.0.0.1:{port}"]\n')
        res = await blockwatch("run", "--config", str(world.config))
    assert res.code == 0, res.err
    assert service_verdicts(world.db) == {"good": "ok", "dead": "inconclusive"}
    assert "1 inconclusive service(s) failed where a dead server fails too (dead)" in res.out
    assert "control_vantages" in res.out
    with sqlite3.connect(world.db) as conn:
        (summary,) = conn.execute("SELECT summary FROM runs").fetchone()
    assert json.loads(summary)["needs_control"] == ["dead"]


async def test_a_reset_handshake_not_traced_is_said(world: World) -> None:
    """Issue #13 (6): a handshake reset after the TCP handshake is what the follow-up trace is
    for; where it is not traced (here the bound is 0; elsewhere no CAP_NET_RAW) the summary and
    the terminal say so, and why."""
    async with LoopbackServer(reset_on_data) as server:
        text = world.config.read_text().replace(
            'services = ["good", "nxblocked", "injected"]', 'services = ["good", "resets"]')
        world.config.write_text(text + f'\n[probe.trace]\nmax_follow_ups = 0\n'
                                       f'\n[[services]]\nname = "resets"\n'
                                       f'urls = ["https://127.0.0.1:{server.port}/"]\n')
        res = await blockwatch("run", "--config", str(world.config))
    assert res.code == 0, res.err
    assert ("1 reset or unanswered handshake(s) were not traced for raw-packet evidence: over "
            "[probe.trace] max_follow_ups = 0") in " ".join(res.out.split())
    with sqlite3.connect(world.db) as conn:
        (summary,) = conn.execute("SELECT summary FROM runs").fetchone()
        probes = {p for (p,) in conn.execute("SELECT probe FROM measurements")}
    assert json.loads(summary)["raw_evidence"]["untraced"] == 1
    assert "trace" not in probes
