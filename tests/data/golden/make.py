"""Rebuild ``tests/data/golden/blockwatch.db.gz``: a results database written by blockwatch
itself, in the namespace lab, that ``tests/test_golden.py`` re-analyses.

What it holds (one SQLite file, every run stored by the real CLI):

* for each shipped lab scenario but ``loss`` (random by design): a sweep from the control
  client, a sweep from the censored client alone, and a sweep from the censored client with
  ``[analysis] control_vantages = ["lab-control"]`` against the control sweep just stored;
* in ``methods``, trace sweeps (tcp, tls, trace) from both clients;
* in ``methods``, a sweep through the lab's SOCKS control proxy;
* OONI's real measurements of ``tests/data/ooni/real``, imported with ``blockwatch import``.

Needs root and the lab's packages (``scripts/install-lab-deps.sh``); takes about three minutes:

    sudo .venv/bin/python tests/data/golden/make.py

Rebuild it only on purpose (a schema or probe change that old databases cannot show): the point
of the file is that it was written by an *older* blockwatch, so that a re-analysis by today's
code is checked against what was stored then. ``manifest.json`` beside it says which commit
wrote it and what each run is.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
BLOCKWATCH = str(Path(sys.executable).with_name("blockwatch"))
SCENARIOS = ("none", "cn-2014", "methods", "evidence", "ipv6", "vpn")
CONTROL_VANTAGE = '\n[analysis]\ncontrol_vantages = ["lab-control"]\n'


def cli(*args: str, ns: str | None = None) -> str:
    argv = [BLOCKWATCH, *args]
    if ns:
        argv = ["ip", "netns", "exec", ns, *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode not in (0, 1):  # 1: a sweep that found blocking
        sys.exit(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "blockwatch.db.gz")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("make.py builds the namespace lab: run it as root")

    from blockwatch.analysis.verdicts import ANALYZER_VERSION
    from blockwatch.lab.runner import config_text
    from blockwatch.lab.services import lab_catalogue, opt_in_toml
    from blockwatch.lab.state import Manifest
    from blockwatch.storage.migrations import HEAD

    name = f"bwg{os.getpid() % 10000}"
    cat = lab_catalogue()
    work = Path(tempfile.mkdtemp(prefix="bw-golden-"))
    db = work / "blockwatch.db"
    runs: list[dict[str, str]] = []
    cli("lab", "--name", name, "up", "--scenario", "none")
    try:
        m = Manifest.load(name)
        assert m is not None
        ca, vpn_key = m.info["pki"]["lab_ca"], m.info["vpn_key"]

        def sweep(scenario: str, client: str, what: str, **kw: object) -> None:
            cfg = work / f"{len(runs):02d}-{client}.toml"
            kw.setdefault("services", ["all"])
            extra = opt_in_toml() + str(kw.pop("extra", ""))
            cfg.write_text(config_text(client, cat, ca, db, vpn_key=vpn_key, extra=extra,
                                       **kw))  # type: ignore[arg-type]
            role = "client" if client == "censored" else "control"
            out = cli("run", "--config", str(cfg), "--json", ns=f"{name}-{role}")
            run_id = json.loads(out.splitlines()[0])["run_id"]
            runs.append({"run_id": run_id, "scenario": scenario, "client": client,
                         "what": what})
            print(f"{scenario:9} {client:9} {what:28} {run_id}", flush=True)

        for scenario in SCENARIOS:
            cli("lab", "--name", name, "up", "--scenario", scenario)
            sweep(scenario, "control", "control client")
            sweep(scenario, "censored", "censored client alone")
            sweep(scenario, "censored", "with control vantage", extra=CONTROL_VANTAGE)
            if scenario == "methods":
                trace = {"probes": ["tcp", "tls", "trace"],
                         "services": ["google", "signal", "line", "facebook"]}
                sweep(scenario, "control", "trace", **trace)
                sweep(scenario, "censored", "trace", **trace)
                from blockwatch.lab.topology import SERVER_UP, SOCKS_PORT
                sweep(scenario, "censored", "through the control proxy",
                      probes=["dns", "tcp", "tls", "http"],
                      extra=f'\n[analysis]\ncontrol_proxy = "socks5://{SERVER_UP}:{SOCKS_PORT}"\n')
    finally:
        cli("lab", "--name", name, "down")

    cfg = work / "import.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:///{db}"\n')
    cli("import", "ooni", "--config", str(cfg), str(ROOT / "tests/data/ooni/real"))
    with sqlite3.connect(db) as conn:
        conn.execute("VACUUM")
    with db.open("rb") as src, gzip.open(args.out, "wb", compresslevel=9) as dst:
        shutil.copyfileobj(src, dst)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    (args.out.parent / "manifest.json").write_text(json.dumps({
        "written_by_commit": commit, "analyzer_version": ANALYZER_VERSION,
        "schema_revision": HEAD, "runs": runs}, indent=1) + "\n")
    shutil.rmtree(work)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes), {len(runs)} lab runs")


if __name__ == "__main__":
    main()
