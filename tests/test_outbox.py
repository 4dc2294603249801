"""Issue #14: the vantage's outbox, through the real CLI against a real collector on loopback.

A sweep whose collector is away ends normally (exit 0) and leaves its run in the outbox; the
next run sends both; a refusal for good (a revoked token) sets the run aside with the reason;
``blockwatch submit`` and ``blockwatch outbox`` do what they say.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest

# the loopback world of the CLI tests (a DNS server, an HTTPS site, a config): its fixture
# is used by name, which ruff reads as a redefinition (F811) in each test's signature
from test_cli import World, blockwatch, world  # noqa: F401
from test_collector import _free_port, running

from blockwatch.collector import outbox, tokens


def with_collector(w: World, url: str, token: str, tmp: Path) -> None:
    token_file = tmp / "collector.token"
    token_file.write_text(token + "\n")
    w.config.write_text(w.config.read_text()
                        + f'\n[collector]\nurl = "{url}"\ntoken_file = "{token_file}"\n'
                          'timeout = 5\n')


def outbox_rows(db: Path) -> list[tuple[str, str, int, str | None]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT run_id, state, attempts, last_error FROM outbox"))


async def test_an_unreachable_collector_loses_nothing(world: World, tmp_path: Path) -> None:  # noqa: F811
    port = _free_port()  # nobody listens here yet
    collector_db = f"sqlite:///{tmp_path / 'collector.db'}"
    from blockwatch.storage import open_store

    with open_store(collector_db) as store:
        token = tokens.add(store, "lab-test")
    with_collector(world, f"http://127.0.0.1:{port}", token, tmp_path)
    first = await blockwatch("run", "--config", str(world.config))
    assert first.code == 0, first.err  # the sweep ends normally
    assert "1 run(s) wait in the outbox for the collector" in first.err
    [(run1, state, attempts, error)] = outbox_rows(world.db)
    assert (state, attempts) == ("pending", 1) and "ConnectError" in (error or "")
    box = await blockwatch("outbox", "--config", str(world.config))
    assert run1[:13] in box.out and "pending" in box.out
    with running(collector_db, port) as collector:
        # the collector is back: the next run sends its own run and the one that waited
        second = await blockwatch("run", "--config", str(world.config))
        assert second.code == 0, second.err
        assert outbox_rows(world.db) == []
        assert collector.count("runs") == 2
        with sqlite3.connect(world.db) as local:
            ours = local.execute("SELECT count(*) FROM measurements").fetchone()[0]
        assert collector.count("measurements") == ours
    assert "wait in the outbox" not in second.err


async def test_a_refused_run_is_set_aside_with_the_reason(world: World, tmp_path: Path) -> None:  # noqa: F811
    collector_db = f"sqlite:///{tmp_path / 'collector.db'}"
    with running(collector_db) as collector:
        token = tokens.add(collector.store, "lab-test")
        tokens.revoke(collector.store, "lab-test")
        with_collector(world, collector.url, token, tmp_path)
        done = await blockwatch("run", "--config", str(world.config))
        assert done.code == 0, done.err
        assert "the collector refused run" in done.err and "revoked" in done.err
        [(_, state, _, error)] = outbox_rows(world.db)
        assert state == "rejected" and "403" in (error or "")
        # a rejected run is not sent again by itself
        again = await blockwatch("submit", "--config", str(world.config))
        assert again.code == 8 and "1 waiting" not in again.out
        assert collector.count("runs") == 0
        # a new token, then --retry-rejected: sent
        fresh = tokens.add(collector.store, "lab-test2")
        text = world.config.read_text().replace('name = "lab-test"', 'name = "lab-test2"')
        world.config.write_text(text)
        (tmp_path / "collector.token").write_text(fresh)
        # the run says lab-test: the collector refuses it for this token too
        retried = await blockwatch("submit", "--config", str(world.config),
                                   "--retry-rejected")
        assert retried.code == 8 and "this token is 'lab-test2''s" in retried.out
    box = await blockwatch("outbox", "--config", str(world.config))
    assert "rejected" in box.out


async def test_submit_sends_now_and_says_so(world: World, tmp_path: Path) -> None:  # noqa: F811
    port = _free_port()
    collector_db = f"sqlite:///{tmp_path / 'collector.db'}"
    from blockwatch.storage import open_store

    with open_store(collector_db) as store:
        token = tokens.add(store, "lab-test")
    with_collector(world, f"http://127.0.0.1:{port}", token, tmp_path)
    assert (await blockwatch("run", "--config", str(world.config))).code == 0
    assert (await blockwatch("submit", "--config", str(world.config))).code == 8
    with running(collector_db, port) as collector:
        # submit ignores the backoff: the outbox goes now
        sent = await blockwatch("submit", "--config", str(world.config))
        assert sent.code == 0 and "1 run(s) sent" in sent.out, sent.out
        assert collector.count("runs") == 1
    assert (await blockwatch("outbox", "--config", str(world.config))).out.strip() == \
        "the outbox is empty"


def test_backoff_doubles_with_jitter_up_to_six_hours() -> None:
    lo = [outbox.backoff(n, rand=lambda: 0.0) for n in (1, 2, 3, 20)]
    hi = [outbox.backoff(n, rand=lambda: 1.0) for n in (1, 2, 3, 20)]
    assert lo == [15.0, 30.0, 60.0, 3 * 3600.0]
    assert hi == [45.0, 90.0, 180.0, 9 * 3600.0]


def test_a_run_not_due_waits_unless_forced(tmp_path: Path) -> None:
    from test_collector import vantage_db

    from blockwatch.storage import open_store

    url, run_id = vantage_db(tmp_path, "v")
    with open_store(url) as store:
        outbox.enqueue(store, run_id, "http://127.0.0.1:9")
        outbox._set(store, run_id, next_attempt_at=dt.datetime.now(dt.UTC)
                    + dt.timedelta(hours=1))
        sending = outbox.Sending(url=f"http://127.0.0.1:{_free_port()}", token="bwc_x",
                                 timeout=2)
        report = outbox.flush(store, sending)
        assert (report.sent, report.retry, report.rejected) == ([], {}, {})  # not due
        report = outbox.flush(store, sending, force=True)
        assert list(report.retry) == [run_id]  # tried, nobody there


@pytest.mark.parametrize("content", ["", "not a token\n", "bwc_" + "x" * 200])
def test_an_unusable_token_file_is_a_config_error(world: World, tmp_path: Path,  # noqa: F811
                                                  content: str) -> None:
    import asyncio

    with_collector(world, "http://127.0.0.1:9", "placeholder", tmp_path)
    (tmp_path / "collector.token").write_text(content)
    res = asyncio.run(blockwatch("run", "--config", str(world.config)))
    assert res.code == 2 and "collector.token" in res.err and "Traceback" not in res.err


async def test_a_hostile_collectors_answer_is_read_bounded_and_printed_as_text(
        tmp_path: Path) -> None:
    """A 'collector' that refuses with an endless answer full of terminal escapes: the vantage
    reads 64 KiB of it, sets the run aside, and keeps a printable reason."""
    import asyncio

    from servers import LoopbackServer, read_request
    from test_collector import vantage_db

    from blockwatch.storage import open_store

    async def endless(_s: LoopbackServer, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 422 No\r\nContent-Length: 1000000000\r\n\r\n"
                     b'{"error": "\x1b[31m\x1b]0;owned\x07 ' + b"A" * 65536)
        for _ in range(2000):  # 128 MiB if it were all read
            writer.write(b"A" * 65536)
            try:
                await writer.drain()
            except ConnectionError:
                return

    url, run_id = vantage_db(tmp_path, "v")
    async with LoopbackServer(endless) as server:
        def go() -> outbox.FlushReport:
            with open_store(url) as store:
                outbox.enqueue(store, run_id, "x")
                return outbox.flush(store, outbox.Sending(
                    url=f"http://127.0.0.1:{server.port}", token="bwc_x", timeout=5))
        report = await asyncio.to_thread(go)
    assert list(report.rejected) == [run_id]
    reason = report.rejected[run_id]
    assert reason.startswith("422: ") and reason.isprintable() and len(reason) < 600
