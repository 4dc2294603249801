"""Re-analysis of a database written by an older blockwatch gives the verdicts it stored.

``tests/data/golden/blockwatch.db.gz`` was written by blockwatch itself in the namespace lab
(``tests/data/golden/make.py``; ``manifest.json`` names the commit, the analyzer, the schema
revision and every run): sweeps of every lab scenario from the censored and the control client,
alone and with a control vantage, trace sweeps, a sweep with a SOCKS control path, and OONI's
real measurements imported. ``blockwatch reanalyze`` by today's code (migrating the file to
today's schema first) must give every run the service verdicts and the measurement verdicts it
stored, as long as the analyzer version is the same; a rule change bumps the version, and this
test then names what changed so that the change is deliberate.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest

from blockwatch.analysis.verdicts import ANALYZER_VERSION
from blockwatch.lab.topology import PUBLIC_RESOLVER
from blockwatch.ooni import CONTROL_VANTAGE
from blockwatch.storage import open_store

GOLDEN = Path(__file__).parent / "data" / "golden"
BLOCKWATCH = str(Path(sys.executable).parent / "blockwatch")
CURRENT = """
SELECT run_id, coalesce(measurement_id, ''), service, verdict, coalesce(layer, ''), rule_id,
       analyzer_version
FROM verdicts v WHERE id = (SELECT max(id) FROM verdicts w WHERE w.run_id = v.run_id
    AND w.service = v.service AND coalesce(w.measurement_id, '') = coalesce(v.measurement_id, ''))
"""
Key = tuple[str, str, str]


def current(db: Path) -> dict[Key, tuple[str, str, str, str]]:
    with sqlite3.connect(db) as conn:
        return {(r[0], r[1], r[2]): r[3:] for r in conn.execute(CURRENT)}


@pytest.fixture
def golden(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    db = tmp_path / "blockwatch.db"
    with gzip.open(GOLDEN / "blockwatch.db.gz", "rb") as src, db.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    return db, json.loads((GOLDEN / "manifest.json").read_text())


# today's config does not change what a run was judged on: other control resolvers and
# vantages, another scope, give the same verdicts
OTHER_CONFIG = ('[dns]\ncontrols = ["udp://127.0.0.9"]\n[probes]\nscope = ["127.0.0.0/8"]\n'
                '[analysis]\ncontrol_vantages = ["lab-control", "lab-censored"]\n')


@pytest.mark.parametrize("config", ["", OTHER_CONFIG], ids=["no-config", "other-config"])
def test_reanalysis_gives_every_stored_run_its_verdicts(golden: tuple[Path, dict[str, object]],
                                                       tmp_path: Path, config: str) -> None:
    db, manifest = golden
    # a new analyzer version is let in once somebody has read what a re-analysis of this
    # database changes (and said so in manifest.json's reanalysed_by), or rebuilt it
    # (tests/data/golden/make.py); an old database is worth keeping: its rows are older
    # probes' (trace version 1 with its own readings, DNS version 2 with its bogon failures)
    reanalysed = cast(dict[str, str], manifest.get("reanalysed_by", {}))
    if ANALYZER_VERSION not in {manifest["analyzer_version"], *reanalysed}:
        pytest.fail(f"the golden database was judged by analyzer {manifest['analyzer_version']}"
                    f", today's is {ANALYZER_VERSION}: read what a re-analysis changes, then "
                    "record it in manifest.json (reanalysed_by) or rebuild the database")
    before = current(db)
    cfg = tmp_path / "bw.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:///{db}"\n{config}')
    done = subprocess.run([BLOCKWATCH, "reanalyze", "-c", str(cfg)], capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    after = current(db)
    # every verdict was recomputed, none was kept by default
    assert {v[3] for v in after.values()} == {ANALYZER_VERSION}
    assert len({k for k in after if k not in before}) == 0, "verdicts for what was not judged"
    changed = {k: (before[k][:3], after[k][:3]) for k in before if before[k][:3] != after[k][:3]}
    # the changes an analyzer version made on purpose, each read and recorded with why
    # (changes.json: "run|measurement|service" -> [before, after]); nothing else may change
    recorded = json.loads((GOLDEN / "changes.json").read_text())
    expected = {tuple(k.split("|")): (tuple(v[0]), tuple(v[1]))
                for k, v in recorded["changes"].items()}
    unexpected = {k: c for k, c in changed.items() if expected.get(k) != c}
    missing = sorted(k for k in expected if k not in changed)
    assert not unexpected and not missing, "\n".join(
        [*(f"{k}: {a} -> {b}" for k, (a, b) in sorted(unexpected.items())),
         *(f"{k}: recorded in changes.json, not seen" for k in missing)])
    services = {k for k in before if not k[1]}
    runs = {r["run_id"] for r in manifest["runs"]}  # type: ignore[attr-defined]
    # the check covers what it claims to: every lab run and the imported OONI runs, blocked ones
    assert runs <= {k[0] for k in services}
    assert {before[k][0] for k in services} >= {"ok", "blocked", "inconclusive", "down"}
    assert "control-path runs are evidence" in done.stderr


def test_the_migration_recorded_what_each_run_was_judged_on(
        golden: tuple[Path, dict[str, object]]) -> None:
    db, manifest = golden
    with open_store(f"sqlite:///{db}"):  # migrates it to today's schema
        pass
    with sqlite3.connect(db) as conn:
        rows = {r[0]: r[1:] for r in conn.execute(
            "SELECT id, control_for, control_resolvers, control_vantages, controls_until, "
            "vantage FROM runs")}
    for run in manifest["runs"]:  # type: ignore[attr-defined]
        control_for, resolvers, vantages, until, _vantage = rows[run["run_id"]]
        assert json.loads(resolvers) == [f"tcp://{PUBLIC_RESOLVER}"] and control_for is None, run
        if run["what"] == "with control vantage":
            assert json.loads(vantages) == ["lab-control"] and until is not None, run
        if run["what"] == "through the control proxy":
            main = rows[run["run_id"]]
            assert json.loads(main[2]) == ["lab-censored-via-proxy"], main
    proxies = [r for r in rows.values() if r[4] == "lab-censored-via-proxy"]
    assert len(proxies) == 1 and proxies[0][0] in rows
    ooni = [r for r in rows.values() if r[4].startswith("ooni-")]
    assert ooni and all(json.loads(r[2]) == [CONTROL_VANTAGE] and r[3] is None
                        and CONTROL_VANTAGE in json.loads(r[1]) for r in ooni), ooni
