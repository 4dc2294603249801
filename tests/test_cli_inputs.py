"""Test lists through the real CLI: 1,000 URLs in each format measured end to end (a loopback
DNS server for every name, a loopback web server, a share of the names without an address),
per-URL verdicts in ``show``, the exports and the reports; bad files refused before anything
is measured; and a command line that starts without loading the database or config code."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dns_server import Behaviour, DNSServer
from servers import LoopbackServer, http
from test_cli import BLOCKWATCH, blockwatch

N = 1000
MISSING = 50  # names the resolver says do not exist (NXDOMAIN): their fetch fails at resolve


def _config(path: Path, db: Path, resolver: str, port: int, extra: str = "") -> Path:
    path.write_text(f"""
[storage]
url = "sqlite:///{db}"
[timeouts]
dns = 2.0
tcp = 2.0
tls = 2.0
http = 3.0
[dns]
resolvers = ["{resolver}"]
controls = []
[probes]
scope = ["127.0.0.0/8", "::1/128"]
[baseline]
endpoints = ["127.0.0.1:{port}"]
timeout = 1.0
{extra}""")
    return path


def _urls(port: int) -> list[str]:
    return [f"http://u{i}.test:{port}/page?i={i}" for i in range(N)]


def _write(fmt: str, path: Path, urls: list[str]) -> Path:
    categories = ["NEWS", "HUMR", "POLR", "COMT"]
    if fmt == "plain":
        path.write_text("# a test list\n" + "".join(f"{u}\n" for u in urls))
    elif fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["url", "category_code", "category_description", "date_added",
                         "source", "notes"])
        for i, u in enumerate(urls):
            writer.writerow([u, categories[i % 4], "a description, with a comma", "2024-01-01",
                             "test", ""])
        path.write_text(out.getvalue())
    else:
        path.write_text(json.dumps({"name": "blockwatch test", "nettests": [
            {"test_name": "web_connectivity", "inputs": urls}]}))
    return path


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[DNSServer, int]]:
    import asyncio
    import threading

    names = {f"u{i}.test": Behaviour(addresses=("127.0.0.1",)) for i in range(MISSING, N)}
    ready = threading.Event()
    stop: list[asyncio.AbstractEventLoop] = []
    port: list[int] = []

    def serve() -> None:
        async def main() -> None:
            async with LoopbackServer(http) as web:
                port.append(web.port)
                stop.append(asyncio.get_running_loop())
                ready.set()
                await asyncio.Event().wait()

        with contextlib.suppress(RuntimeError):  # the loop was stopped from the test's thread
            asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    with DNSServer(names) as dns:
        yield dns, port[0]
    stop[0].call_soon_threadsafe(stop[0].stop)
    thread.join(5)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BLOCKWATCH, *args], capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["plain", "csv", "ooni-run"])
def test_a_thousand_url_list_runs_end_to_end(servers: tuple[DNSServer, int], tmp_path: Path,
                                             fmt: str) -> None:
    dns, port = servers
    db = tmp_path / "r.db"
    cfg = _config(tmp_path / "c.toml", db, dns.udp, port)
    urls = _urls(port)
    listed = _write(fmt, tmp_path / f"list.{'json' if fmt == 'ooni-run' else 'txt'}", urls)
    done = _run("run", "--config", str(cfg), "--input-file", str(listed), "--quiet")
    assert done.returncode == 0, done.stderr
    with sqlite3.connect(db) as conn:
        (run_id, status, summary), = conn.execute("SELECT id, status, summary FROM runs")
        services = dict(conn.execute(
            "SELECT service, verdict FROM verdicts WHERE measurement_id IS NULL"))
        per_probe = dict(conn.execute("SELECT probe, count(*) FROM measurements GROUP BY probe"))
        categories = dict(conn.execute(
            "SELECT category, count(DISTINCT service) FROM measurements GROUP BY category"))
    assert status == "complete"
    assert json.loads(summary)["measurements"] == 3 * N
    assert per_probe == {"dns": N, "tcp": N, "http": N}
    # one verdict per URL, named by the URL: the live ones ok, the missing names not
    assert set(services) == set(urls)
    with sqlite3.connect(db) as conn:  # what went wrong, if anything did
        failures = conn.execute(
            "SELECT probe, failure, failed_operation, count(*), round(max(runtime_s), 2), "
            "round(max(queued_s), 2) FROM measurements WHERE failure IS NOT NULL "
            "GROUP BY 1, 2, 3").fetchall()
    assert sum(v == "ok" for v in services.values()) == N - MISSING, failures
    assert {services[u] for u in urls[:MISSING]} == {"inconclusive"}
    assert categories == ({"NEWS": 250, "HUMR": 250, "POLR": 250, "COMT": 250} if fmt == "csv"
                          else {"input": N})
    # show: per-URL verdicts; export: one row per measurement with its category
    shown = _run("show", "--config", str(cfg), run_id[:13])
    assert shown.returncode == 0, shown.stderr
    assert "http://u999.test" in shown.stdout
    exported = _run("export", "--config", str(cfg), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert len(rows) == 3 * N and {r["service"] for r in rows} == set(urls)
    report = _run("report", "timeline", "--config", str(cfg), "--format", "json")
    assert report.returncode == 0, report.stderr
    assert len({r["service"] for r in json.loads(report.stdout)}) == N
    if fmt == "csv":  # grouped by the list's categories
        news = _run("report", "timeline", "--config", str(cfg), "--format", "json",
                    "--category", "NEWS")
        assert news.returncode == 0, news.stderr
        assert {r["service"] for r in json.loads(news.stdout)} == set(urls[::4])


BAD = {
    "wrong-columns.csv": ("address,category_code\nhttp://a.test/,NEWS\n", ":1: no 'url' column"),
    "junk.bin": (b"\x00\x01\x02binary\xff\xfe", ":1: NUL byte"),
    "nothing.txt": ("not a url\nneither this\n", "no URL found (2 lines"),
    "unknown.json": ('{"nettests": [], "surprise": 1}', "unknown field(s) 'surprise'"),
}


@pytest.mark.parametrize("name", sorted(BAD))
async def test_a_bad_list_is_refused_before_anything_is_measured(tmp_path: Path,
                                                                  name: str) -> None:
    content, message = BAD[name]
    listed = tmp_path / name
    if isinstance(content, bytes):
        listed.write_bytes(content)
    else:
        listed.write_text(content)
    db = tmp_path / "r.db"
    cfg = _config(tmp_path / "c.toml", db, "udp://127.0.0.1:9", 9)
    done = await blockwatch("run", "--config", str(cfg), "--input-file", str(listed), "--yes")
    assert done.code == 2, done.err
    assert f"{listed}" in done.err and message in done.err
    assert not db.exists()  # no run was started, nothing is half-stored


async def test_a_huge_list_is_refused_from_its_size(tmp_path: Path) -> None:
    huge = tmp_path / "huge.txt"
    with huge.open("wb") as fh:  # sparse: 100 MB that cost no disk
        fh.truncate(100 * 1024 * 1024)
    cfg = _config(tmp_path / "c.toml", tmp_path / "r.db", "udp://127.0.0.1:9", 9)
    done = await blockwatch("run", "--config", str(cfg), "--input-file", str(huge))
    assert done.code == 2 and "104857600 bytes, more than the limit" in done.err


async def test_lines_that_are_not_urls_are_skipped_and_counted(tmp_path: Path) -> None:
    listed = tmp_path / "list.txt"
    listed.write_text("http://127.0.0.1:9/\nftp://x.test/\nhello\n\x1b[31mred\n")
    cfg = _config(tmp_path / "c.toml", tmp_path / "r.db", "udp://127.0.0.1:9", 9,
                  extra='[concurrency]\nglobal = 4\n')
    done = await blockwatch("run", "--config", str(cfg), "--input-file", str(listed), "--yes")
    assert "1 URLs (plain); 3 lines skipped" in done.err
    assert "\x1b" not in done.err  # text from the file is shown as data, never as escapes


async def test_an_empty_services_list_means_none(tmp_path: Path) -> None:
    cfg = _config(tmp_path / "c.toml", tmp_path / "r.db", "udp://127.0.0.1:9", 9)
    text = cfg.read_text().replace('scope = ["127.0.0.0/8", "::1/128"]',
                                   'scope = ["127.0.0.0/8", "::1/128"]\nservices = []')
    cfg.write_text(text)
    done = await blockwatch("run", "--config", str(cfg), "--yes")
    assert done.code == 2 and "nothing to measure" in done.err
    assert not (tmp_path / "r.db").exists()


def test_version_and_help_load_no_database_or_config_code() -> None:
    # --version and --help must answer at once: no SQLAlchemy, pydantic, asyncio or probes
    code = ("import sys, blockwatch.cli as c\n"
            "c.build_parser()\n"
            "heavy = [m for m in ('sqlalchemy', 'alembic', 'pydantic', 'asyncio', 'httpx',"
            " 'dns.message', 'blockwatch.probes.model', 'matplotlib') if m in sys.modules]\n"
            "print(','.join(heavy))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == ""


def test_the_parsers_export_formats_are_storages() -> None:
    from blockwatch.cli import EXPORT_FORMATS
    from blockwatch.exports import FORMATS

    assert sorted(EXPORT_FORMATS) == sorted(FORMATS)


async def test_urls_that_look_like_markup_are_shown_as_they_are(tmp_path: Path) -> None:
    # a test list is text from anywhere: a URL with rich markup in it is data in every table
    listed = tmp_path / "list.txt"
    listed.write_text("http://127.0.0.1:9/[bold]x[/bold]\nhttp://127.0.0.1:9/[/oops]\n")
    cfg = _config(tmp_path / "c.toml", tmp_path / "r.db", "udp://127.0.0.1:9", 9)
    done = await blockwatch("run", "--config", str(cfg), "--input-file", str(listed), "--yes")
    assert done.code == 0, done.err
    assert "http://127.0.0.1:9/[bold]x[/bold]" in done.out and "[/oops]" in done.out
    with sqlite3.connect(tmp_path / "r.db") as conn:
        (run_id,), = conn.execute("SELECT id FROM runs")
    shown = await blockwatch("show", "--config", str(cfg), run_id[:13])
    assert shown.code == 0 and "[bold]x[/bold]" in shown.out, shown.err
    listed_runs = await blockwatch("runs", "--config", str(cfg))
    assert listed_runs.code == 0, listed_runs.err
