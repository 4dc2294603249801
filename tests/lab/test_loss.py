"""Packet loss: 10 % of the censored client's packets dropped each way (every packet, DNS
included), with blockwatch's default settings (timeouts, retransmissions, confirmation).

* Scenario ``loss`` (no censorship at all) is swept ``SWEEPS`` times: no service may ever come
  out ``blocked`` or ``partial``. A lost DNS query is retransmitted within its timeout and, if
  it got no response at all, asked again; a DNS timeout counts as evidence only when it
  repeated at a resolver that answers other names (``dns.timeout.unconfirmed``); TCP
  retransmits a lost SYN within the connect timeout.
* Scenario ``methods`` with the same loss gives the verdicts it gives without loss.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from blockwatch.lab.runner import service_verdicts
from blockwatch.lab.scenario import expected_for, load
from blockwatch.lab.services import lab_catalogue

from .conftest import BLOCKWATCH, blockwatch

LOSS_PERCENT = 10
# 12 sweeps of every lab service with every default probe (quic and ech included, the slowest
# under loss): 20 took 109 s of CI's 20 minutes
SWEEPS = 12
PARALLEL = 6  # sweeps at once, each into its own database


def test_packet_loss_alone_is_never_blocking(lab) -> None:
    lab.use("loss")
    dbs = [lab.tmp / f"loss{i}.db" for i in range(SWEEPS)]

    def sweep(db: Path) -> str:
        cfg = lab.config("censored", db, timeouts=None)  # blockwatch's default settings
        done = subprocess.run(["ip", "netns", "exec", lab.ns("client"), BLOCKWATCH, "run",
                               "--config", str(cfg), "--quiet"],
                              capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr
        rows = blockwatch("export", "--config", str(cfg), "--format", "jsonl").stdout
        return str(json.loads(rows.splitlines()[0])["run_id"])

    with ThreadPoolExecutor(PARALLEL) as pool:
        run_ids = list(pool.map(sweep, dbs))
    runs = [{s: v.verdict for s, v in service_verdicts(db, run_id).items()}
            for db, run_id in zip(dbs, run_ids, strict=True)]
    counts = Counter(v for run in runs for v in run.values())
    print(f"\n{SWEEPS} sweeps with {LOSS_PERCENT} % loss each way, default settings: "
          f"{dict(counts)}")
    assert len(runs) == SWEEPS and all(runs)
    wrong = [(i, s, v) for i, run in enumerate(runs) for s, v in run.items()
             if v in ("blocked", "partial")]
    assert wrong == [], wrong
    assert counts["ok"] >= 0.9 * sum(counts.values())


def test_verdicts_survive_packet_loss(lab, sweeps) -> None:
    methods = (Path(__file__).parents[2] / "blockwatch/lab/scenarios/methods.toml").read_text()
    lossy = lab.tmp / "lossy.toml"
    lossy.write_text(methods.replace("[options]", f"[options]\nglobal_loss_percent = "
                                                  f"{LOSS_PERCENT}"))
    cat = lab_catalogue()
    sc = load(str(lossy), cat.services)
    assert sc.option("global_loss_percent") == LOSS_PERCENT
    got = sweeps(str(lossy), "censored", label="loss", timeouts=None)
    want = {s: (e.verdict, e.layer) for s, svc in cat.services.items()
            for e in [expected_for(sc, s, svc.exclusive_prefixes)]}
    seen = {s: (v.verdict, v.layer or None) for s, v in got.services.items()}
    failed = [(r["target"], r["failure"], r["failed_operation"]) for r in got.rows
              if r["failure"] and seen.get(r["service"]) != want.get(r["service"])]
    assert seen == want, failed
