"""Issue #15: text from the network (or from an imported file) is data. A database whose runs,
services, targets, evidence and failures hold rich markup, terminal escapes, matplotlib
mathtext and spreadsheet formulas is read by every command: each exits 0, no escape sequence
reaches the terminal, and no CSV cell starts a formula."""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path

import pytest
from test_cli import blockwatch

from blockwatch.probes.model import (
    DNSObservation,
    Measurement,
    Run,
    Target,
    Verdict,
)
from blockwatch.storage import open_store

U = dt.UTC
ESC = "\x1b"
MARKUP = "[/x].[red]bold[/red]"
HOSTILE = [MARKUP, f"{ESC}[31mred{ESC}]0;title\x07", "$x^{2}$ $\\frac{1}{0}$",
           "=HYPERLINK(\"http://x\")", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)"]


def hostile_db(path: Path) -> tuple[str, list[str]]:
    url = f"sqlite:///{path}"
    t0 = dt.datetime(2026, 11, 1, tzinfo=U)
    ids = []
    with open_store(url) as store:
        for i, text in enumerate(HOSTILE):
            run = Run(id=f"0199{i:04d}-0000-7000-8000-000000000000", vantage=text,
                      started_at=t0 + dt.timedelta(hours=i), country=text[:8],
                      status="running")
            ids.append(run.id)
            store.start_run(run)
            obs = DNSObservation(resolver=text, transport="udp", qname=text, qtype="A", t0=0.0,
                                 failure=text)
            m = Measurement(id=f"m{i}", run_id=run.id, vantage=text,
                            target=Target(service=text, probe="dns", host=text),
                            probe_version=text, started_at=run.started_at, runtime_s=0.1,
                            observations=(obs,), failure=text, failed_operation="resolve")
            store.add_measurements([m], [
                Verdict(verdict="dns_blocked", rule_id=text, analyzer_version="8",
                        service=text, measurement_id=m.id, evidence=text, layer="dns"),
                Verdict(verdict="blocked", rule_id="service.blocked", analyzer_version="8",
                        service=text, measurement_id=None, evidence=text, layer="dns")],
                run_id=run.id)
            store.finish_run(run.id, status="complete", finished_at=run.started_at,
                             summary={"measurements": 1, "blocked": [text]})
    return url, ids


def with_config(tmp: Path) -> Path:
    config = tmp / "bw.toml"
    config.write_text(f'[vantage]\nname = "reader"\n\n[storage]\nurl = '
                      f'"sqlite:///{tmp / "hostile.db"}"\n')
    return config


COMMANDS = [
    ["runs"], ["show", "{run0}"], ["show", "{run1}"], ["show", "{run2}"],
    ["export", "--format", "jsonl"], ["export", "--format", "csv"],
    ["export", "--format", "ooni"], ["report", "timeline"], ["report", "changes"],
    ["report", "compare"], ["query", "SELECT vantage, service, evidence FROM verdicts JOIN runs "
                            "ON runs.id = verdicts.run_id"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: "-".join(c[:2]))
async def test_every_command_reads_hostile_strings_as_text(tmp_path: Path,
                                                           command: list[str]) -> None:
    config = with_config(tmp_path)
    _, run_ids = hostile_db(tmp_path / "hostile.db")
    args = [a.format(**{f"run{i}": r for i, r in enumerate(run_ids)}) for a in command]
    done = await blockwatch(*args, "--config", str(config))
    assert done.code == 0, done.err[-2000:]
    assert ESC not in done.out and ESC not in done.err
    assert "\x07" not in done.out and "\x07" not in done.err
    if command[:3] == ["export", "--format", "csv"]:
        cells = [c for row in csv.reader(io.StringIO(done.out)) for c in row]
        assert not [c for c in cells if c[:1] in ("=", "+", "-", "@")]
        assert any(c.startswith("'=HYPERLINK") for c in cells)  # kept, neutralised


async def test_the_html_report_takes_mathtext_names(tmp_path: Path) -> None:
    config = with_config(tmp_path)
    hostile_db(tmp_path / "hostile.db")
    out = tmp_path / "report.html"
    done = await blockwatch("report", "html", "--config", str(config), "-o", str(out))
    assert done.code == 0, done.err[-2000:]
    page = out.read_text()
    assert "[/x]" in page and ESC not in page and "<script" not in page.lower()
