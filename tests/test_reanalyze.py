"""Re-analysis and the OONI commands end to end: the real CLI in a subprocess, a temporary
SQLite database, no network at all (nothing here measures)."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from blockwatch.analysis.verdicts import ANALYZER_VERSION
from blockwatch.probes import failures as F
from blockwatch.probes.model import DNSObservation, DNSResponse, Measurement, Run, Target, Verdict
from blockwatch.storage import open_store

BLOCKWATCH = str(Path(sys.executable).parent / "blockwatch")
SCENARIOS = Path(__file__).resolve().parents[2] / "shared/data/ooni/webconnectivity-scenarios"
CONTROL = "https://1.1.1.1/dns-query"


def blockwatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BLOCKWATCH, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def config(tmp_path: Path, extra: str = "") -> tuple[Path, Path]:
    db = tmp_path / "bw.db"
    cfg = tmp_path / "bw.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:///{db}"\n[dns]\ncontrols = ["{CONTROL}"]\n{extra}')
    return cfg, db


def dns_m(run: str, resolver: str, rcode: str, failure: str | None, start: dt.datetime,
          ips: tuple[str, ...] = ()) -> Measurement:
    from blockwatch.probes.model import DNSAnswer

    obs = DNSObservation(resolver=resolver, transport="udp", qname="kakao.com", qtype="A",
                         t0=0, failure=failure, responses=(DNSResponse(
                             t=0.01, source=resolver, id=1, flags=0x8180, rcode=rcode,
                             answers=tuple(DNSAnswer(rtype="A", value=i, ttl=60) for i in ips)),))
    return Measurement(id=f"{run}-{resolver}", run_id=run, vantage="home",
                       target=Target(service="kakaotalk", probe="dns", host="kakao.com",
                                     resolver=resolver),
                       probe_version="1", started_at=start, runtime_s=0.1,
                       observations=(obs,), failure=failure,
                       failed_operation="resolve" if failure else None)


def test_reanalysis_appends_new_verdicts_and_keeps_the_old(tmp_path: Path) -> None:
    cfg, db = config(tmp_path)
    old_day = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    new_day = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
    with open_store(f"sqlite:///{db}") as store:
        for run_id, day in (("run-old", old_day), ("run-new", new_day)):
            store.start_run(Run(id=run_id, vantage="home", started_at=day, status="complete"))
            tested = dns_m(run_id, "system", "NXDOMAIN", F.DNS_NXDOMAIN, day)
            control = dns_m(run_id, CONTROL, "NOERROR", None, day, ("203.133.167.16",))
            # what an older analyzer said: no control, so inconclusive
            store.add_measurements([tested, control], [Verdict(
                verdict="inconclusive", rule_id="failure.no_control", analyzer_version="1",
                service="kakaotalk", measurement_id=tested.id), Verdict(
                verdict="inconclusive", rule_id="service.inconclusive", analyzer_version="1",
                service="kakaotalk")], run_id=run_id)
    done = blockwatch("reanalyze", "-c", str(cfg), "--since", "2024-03-01")
    assert done.returncode == 0, done.stderr
    assert f"reanalyzed 1 runs with analyzer {ANALYZER_VERSION}" in done.stderr
    out = blockwatch("export", "-c", str(cfg), "--format", "jsonl")
    rows = {r["measurement_id"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert (rows["run-new-system"]["analyzer_version"], rows["run-new-system"]["verdict"],
            rows["run-new-system"]["rule_id"]) == (ANALYZER_VERSION, "dns_blocked",
                                                   "dns.nxdomain_vs_control")
    assert rows["run-old-system"]["analyzer_version"] == "1"  # before --since: untouched
    with sqlite3.connect(db) as conn:
        history = conn.execute("SELECT analyzer_version, verdict FROM verdicts WHERE "
                               "measurement_id = 'run-new-system' ORDER BY id").fetchall()
    assert history == [("1", "inconclusive"), (ANALYZER_VERSION, "dns_blocked")]
    assert blockwatch("reanalyze", "-c", str(cfg)).returncode == 0  # both runs, again
    with sqlite3.connect(db) as conn:
        n = conn.execute("SELECT count(*) FROM verdicts WHERE analyzer_version = ? AND "
                         "measurement_id IS NULL", (ANALYZER_VERSION,)).fetchone()[0]
        total = conn.execute("SELECT count(*) FROM verdicts").fetchone()[0]
    assert n == 2  # service verdicts: run-new once (unchanged the second time), run-old once
    again = blockwatch("reanalyze", "-c", str(cfg))  # nothing changed: nothing written
    assert again.returncode == 0 and ": 0 verdicts changed" in again.stderr, again.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM verdicts").fetchone()[0] == total
        current = conn.execute("SELECT run_id, coalesce(measurement_id, ''), verdict FROM "
                               "current_verdicts ORDER BY 1, 2").fetchall()
        summary = json.loads(conn.execute(
            "SELECT summary FROM runs WHERE id = 'run-new'").fetchone()[0])
    # one current verdict per measurement (the control resolver's is evidence, not judged) and
    # per service of each run, whatever the history holds
    assert [c[:2] for c in current] == [("run-new", ""), ("run-new", "run-new-system"),
                                        ("run-old", ""), ("run-old", "run-old-system")]
    assert summary["blocked"] == ["kakaotalk"] and summary["services"] == {"blocked": 1}
    shown = blockwatch("show", "-c", str(cfg), "run-new").stdout
    history = blockwatch("show", "-c", str(cfg), "run-new", "--history").stdout
    assert service_rows(shown) == 1 and "analyzer" not in shown
    assert service_rows(history) == 2 and f"(analyzer {ANALYZER_VERSION})" in history


def service_rows(shown: str) -> int:
    """Rows of `blockwatch show`'s services table naming kakaotalk."""
    table = shown.split("measurements")[0]
    return sum(1 for line in table.splitlines() if line.startswith("│") and "kakaotalk" in line)


@pytest.mark.skipif(not SCENARIOS.is_dir(), reason=(
    "OONI's wc05 QA scenarios carry no licence to copy them into the repository; they are read "
    "from ../shared/data/ooni/webconnectivity-scenarios, absent here"))
def test_import_ooni_then_export_ooni_and_reanalyze(tmp_path: Path) -> None:
    cfg, db = config(tmp_path)
    done = blockwatch("import", "-c", str(cfg), "ooni", str(SCENARIOS))
    assert done.returncode == 0, done.stderr
    assert "imported 29 OONI measurements" in done.stderr
    again = blockwatch("import", "-c", str(cfg), "ooni", str(SCENARIOS / "dnsBlockingBOGON.json"),
                       str(tmp_path / "nope.jsonl"))
    assert again.returncode == 0
    assert "1 already imported; 1 skipped" in again.stderr
    assert "no such file or directory" in again.stderr
    out = blockwatch("export", "-c", str(cfg), "--format", "ooni")
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert records and all(r["probe_ip"] == "127.0.0.1" for r in records)
    assert blockwatch("reanalyze", "-c", str(cfg), "-q").returncode == 0
    with sqlite3.connect(db) as conn:
        runs, blocked = conn.execute(
            "SELECT count(DISTINCT run_id), sum(verdict = 'dns_blocked') FROM verdicts").fetchone()
    assert runs == 29 and blocked > 0


def test_bad_fingerprint_file_stops_with_a_named_error(tmp_path: Path) -> None:
    bad = tmp_path / "fp.json"
    bad.write_text('[{"name": "x", "location_found": "body", "pattern": "(",'
                   ' "pattern_type": "regexp", "scope": "nat"}]')
    cfg, _ = config(tmp_path, f'[analysis]\nfingerprints = ["{bad}"]\n')
    done = blockwatch("reanalyze", "-c", str(cfg))
    assert done.returncode == 2
    assert "analysis.fingerprints" in done.stderr and "not a valid regexp" in done.stderr
    assert "Traceback" not in done.stderr


def tcp_m(run: str, vantage: str, failure: str | None, start: dt.datetime) -> Measurement:
    from blockwatch.probes.model import TCPObservation

    obs = TCPObservation(address="203.0.113.7", port=443, t0=0, t=0.2, failure=failure)
    return Measurement(id=f"{run}-{vantage}-tcp", run_id=run, vantage=vantage,
                       target=Target(service="kakaotalk", probe="tcp", host="kakao.com",
                                     port=443),
                       probe_version="1", started_at=start, runtime_s=0.2, observations=(obs,),
                       failure=failure, failed_operation="connect" if failure else None)


def current_service_verdict(db: Path, run_id: str) -> str:
    with sqlite3.connect(db) as conn:
        return str(conn.execute("SELECT verdict FROM verdicts WHERE run_id = ? AND "
                                "measurement_id IS NULL ORDER BY id DESC LIMIT 1",
                                (run_id,)).fetchone()[0])


def test_a_run_is_judged_on_its_recorded_inputs_and_later_controls_on_request(
        tmp_path: Path) -> None:
    from blockwatch.probes.model import RunInputs

    # today's config names other controls: they do not apply to a run that recorded its own
    cfg, db = config(tmp_path, '[analysis]\ncontrol_vantages = ["elsewhere"]\n')
    start = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    end = start + dt.timedelta(minutes=2)
    recorded = RunInputs(control_vantages=("vps",), controls_since=start - dt.timedelta(hours=6),
                         controls_until=end)
    with open_store(f"sqlite:///{db}") as store:
        store.start_run(Run(id="home-1", vantage="home", started_at=start))
        store.add_measurements([tcp_m("home-1", "home", F.CONNECTION_RESET, start)])
        store.finish_run("home-1", status="complete", finished_at=end, summary={},
                         inputs=recorded)
        # the control machine swept an hour later: the sweep could not have compared with it
        later = start + dt.timedelta(hours=1)
        store.start_run(Run(id="vps-1", vantage="vps", started_at=later, status="complete"))
        store.add_measurements([tcp_m("vps-1", "vps", None, later)])
        store.start_run(Run(id="elsewhere-1", vantage="elsewhere", started_at=start,
                            status="complete"))
        store.add_measurements([tcp_m("elsewhere-1", "elsewhere", None, start)])
    assert blockwatch("reanalyze", "-c", str(cfg), "--run", "home-1").returncode == 0
    assert current_service_verdict(db, "home-1") == "inconclusive"  # as the sweep saw it
    done = blockwatch("reanalyze", "-c", str(cfg), "--run", "home-1", "--later-controls")
    assert done.returncode == 0, done.stderr
    assert current_service_verdict(db, "home-1") == "blocked"  # reset here, fine from the vps
    with open_store(f"sqlite:///{db}") as store:
        run = store.get_run("home-1")
    assert run is not None and run.inputs is not None
    assert run.inputs.controls_until == start + dt.timedelta(hours=6)  # recorded as used
    # so a plain re-analysis keeps the verdict it now rests on
    assert blockwatch("reanalyze", "-c", str(cfg), "--run", "home-1").returncode == 0
    assert current_service_verdict(db, "home-1") == "blocked"


def test_a_run_without_recorded_inputs_is_judged_on_the_config_and_then_recorded(
        tmp_path: Path) -> None:
    cfg, db = config(tmp_path, '[analysis]\ncontrol_vantages = ["vps"]\n')
    start = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    with open_store(f"sqlite:///{db}") as store:
        store.start_run(Run(id="home-1", vantage="home", started_at=start, status="complete"))
        store.add_measurements([tcp_m("home-1", "home", F.CONNECTION_RESET, start)])
        store.start_run(Run(id="vps-1", vantage="vps", started_at=start, status="complete"))
        store.add_measurements([tcp_m("vps-1", "vps", None, start)])
    done = blockwatch("reanalyze", "-c", str(cfg), "--run", "home-1")
    assert done.returncode == 0, done.stderr
    assert "1 runs stored before blockwatch recorded" in done.stderr
    assert current_service_verdict(db, "home-1") == "blocked"
    with open_store(f"sqlite:///{db}") as store:
        run = store.get_run("home-1")
    assert run is not None and run.inputs is not None
    assert run.inputs.control_vantages == ("vps",)
    assert run.inputs.control_resolvers == (CONTROL,)
