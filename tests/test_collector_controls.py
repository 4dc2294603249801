"""Issue #14: a vantage asks the collector for the control vantages' measurements of its
targets, and its own sweep is judged against them (blockwatch/collector/controls.py).

Through the real CLI and a real collector on loopback: a connection refused at a loopback port
is ``inconclusive`` from the vantage alone, and ``blocked`` (``tcp.failure_vs_control``) once the
control vantage's successful connection to the same address, which reached the collector from
that vantage, is fetched before the sweep. A hostile collector's answer is refused whole.
"""

from __future__ import annotations

import datetime as dt
import gzip
import sqlite3
from pathlib import Path

import httpx
import pytest
from servers import refusing_port
from test_cli import World, blockwatch, world  # noqa: F401 - the loopback world's fixture
from test_collector import running
from test_outbox import with_collector

from blockwatch.collector import tokens
from blockwatch.collector.batch import encode
from blockwatch.collector.client import batches, json_row
from blockwatch.collector.controls import fetch
from blockwatch.collector.outbox import Sending
from blockwatch.probes.model import Measurement, Run, Target, TCPObservation
from blockwatch.probes.runner import new_id
from blockwatch.storage import open_store
from blockwatch.storage.convert import run_to_row


def control_run(tmp: Path, port: int, when: dt.datetime) -> tuple[str, str]:
    """The control vantage's own database: one run that connected to 127.0.0.1:port."""
    url = f"sqlite:///{tmp / 'vps.db'}"
    run = Run(id=new_id(), vantage="vps", started_at=when, status="running")
    m = Measurement(id=new_id(), run_id=run.id, vantage="vps",
                    target=Target(service="walled", probe="tcp", host="127.0.0.1", port=port),
                    probe_version="1", started_at=when, runtime_s=0.01,
                    observations=(TCPObservation(address="127.0.0.1", port=port, t0=0.0,
                                                 t=0.01),))
    with open_store(url) as store:
        store.start_run(run)
        store.add_measurements([m], run_id=run.id)
        store.finish_run(run.id, status="complete", finished_at=when,
                         summary={"measurements": 1})
    return url, run.id


def walled_verdict(db: Path) -> tuple[str, str | None, str]:
    with sqlite3.connect(db) as conn:
        verdict, layer = conn.execute(
            "SELECT verdict, layer FROM verdicts WHERE service = 'walled' AND measurement_id "
            "IS NULL ORDER BY id DESC").fetchone()
        rule = conn.execute(
            "SELECT v.rule_id FROM verdicts v JOIN measurements m ON m.id = v.measurement_id "
            "WHERE m.service = 'walled' AND m.vantage = 'lab-test' ORDER BY v.id DESC"
        ).fetchone()[0]
    return verdict, layer, rule


async def test_a_run_is_judged_against_controls_fetched_from_the_collector(
        world: World, tmp_path: Path) -> None:  # noqa: F811
    with refusing_port() as port, running(f"sqlite:///{tmp_path / 'collector.db'}") as c:
        vps = tokens.add(c.store, "vps", control=True)
        token = tokens.add(c.store, "lab-test")
        url, run_id = control_run(tmp_path, port,
                                  dt.datetime.now(dt.UTC) - dt.timedelta(minutes=30))
        [body] = list(batches(open_store(url), run_id))
        assert c.post(body, vps).status_code == 200
        world.config.write_text(world.config.read_text()
                                + f'\n[[services]]\nname = "walled"\n'
                                  f'endpoints = ["127.0.0.1:{port}"]\n')
        with_collector(world, c.url, token, tmp_path)
        # without the collector's controls: the vantage alone cannot tell
        alone = world.config.read_text().replace("timeout = 5\n", "timeout = 5\ncontrols = false\n")
        solo = tmp_path / "solo.toml"
        solo.write_text(alone)
        done = await blockwatch("run", "--config", str(solo), "-s", "walled")
        assert done.code == 0, done.err
        assert walled_verdict(world.db) == ("inconclusive", "tcp", "failure.no_control")
        # with them: the control connected to the same address, ours was refused
        done = await blockwatch("run", "--config", str(world.config), "-s", "walled")
        assert done.code == 0, done.err
        assert "controls:" not in done.err  # no problem to report
        assert walled_verdict(world.db) == ("blocked", "tcp", "tcp.failure_vs_control")
        with sqlite3.connect(world.db) as conn:
            fetched = conn.execute("SELECT count(*) FROM measurements WHERE vantage = 'vps'"
                                   ).fetchone()[0]
            inputs = conn.execute("SELECT control_vantages FROM runs WHERE vantage = "
                                  "'lab-test' ORDER BY started_at DESC").fetchone()[0]
        assert fetched == 1 and "vps" in inputs
        # fetched again by the next run: stored once
        assert (await blockwatch("run", "--config", str(world.config), "-s", "walled")).code == 0
        with sqlite3.connect(world.db) as conn:
            assert conn.execute("SELECT count(*) FROM measurements WHERE vantage = 'vps'"
                                ).fetchone()[0] == 1


def test_the_controls_endpoint_refuses_bad_queries_and_strangers(tmp_path: Path) -> None:
    with running(f"sqlite:///{tmp_path / 'collector.db'}") as c:
        tokens.add(c.store, "vps", control=True)
        token = tokens.add(c.store, "home")
        auth = {"Authorization": f"Bearer {token}"}
        listed = httpx.get(f"{c.url}/api/v1/controls", headers=auth)
        assert listed.json() == {"vantages": ["vps"]}
        assert httpx.get(f"{c.url}/api/v1/controls").status_code == 401
        now = dt.datetime.now(dt.UTC)
        good = {"since": (now - dt.timedelta(hours=1)).isoformat(), "until": now.isoformat()}
        for name, query, status in (
                ("home", good, 404),  # its own data is not a control
                ("nobody", good, 404),
                ("vps", {**good, "since": (now - dt.timedelta(days=40)).isoformat()}, 422),
                ("vps", {**good, "services": ["x"] * 5001}, 422),
                ("vps", {"since": "yesterday", "until": now.isoformat()}, 422)):
            answer = httpx.post(f"{c.url}/api/v1/controls/{name}", json=query, headers=auth)
            assert answer.status_code == status, (name, answer.text)
        huge = httpx.post(f"{c.url}/api/v1/controls/vps", headers=auth,
                          content=b"{" + b" " * 300_000 + b"}")
        assert huge.status_code == 413
        empty = httpx.post(f"{c.url}/api/v1/controls/vps", json=good, headers=auth)
        assert empty.status_code == 200 and empty.headers["X-Blockwatch-Truncated"] == "0"
        assert gzip.decompress(empty.content).count(b"\n") == 1  # the header line alone


@pytest.mark.parametrize("hostile", ["other_vantage", "bomb", "garbage"])
def test_a_hostile_collectors_controls_are_refused_whole(tmp_path: Path, hostile: str) -> None:
    """What a collector sends is checked as a submission is: records claiming another vantage,
    a decompression bomb, garbage: nothing stored, a printable problem reported."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    now = dt.datetime.now(dt.UTC)
    run = Run(id=new_id(), vantage="mallory", started_at=now, status="complete")
    bodies = {
        "other_vantage": encode("vps", [json_row(run_to_row(run))], [], []),
        "bomb": gzip.compress(b"\x1b[31m" * (40 * 2**20)),
        "garbage": b"\x1b]0;pwned\x07 not gzip",
    }

    async def names(_r: object) -> JSONResponse:
        return JSONResponse({"vantages": ["vps"]})

    async def rows(_r: object) -> Response:
        return Response(bodies[hostile], media_type="application/gzip")

    import threading
    import time

    import uvicorn
    from test_collector import _free_port

    port = _free_port()
    app = Starlette(routes=[Route("/api/v1/controls", names),
                            Route("/api/v1/controls/vps", rows, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        with open_store(f"sqlite:///{tmp_path / 'local.db'}") as store:
            got = fetch(store, Sending(url=f"http://127.0.0.1:{port}", token="bwc_x"),
                        ["walled"], now - dt.timedelta(hours=1), now)
            assert got.vantages == [] and got.measurements == 0
            assert len(got.problems) == 1 and got.problems[0].startswith("vps: not stored")
            assert all(ch.isprintable() for ch in got.problems[0])
            assert store.runs() == []
    finally:
        server.should_exit = True
        thread.join(10)
