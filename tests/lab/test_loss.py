"""Packet loss: with 10 % of the censored client's packets dropped each way (every packet,
DNS included), the ``methods`` scenario still yields the same service verdicts. What makes
it tolerable: DNS retries (5) and a TCP timeout (10 s) long enough for SYN retransmissions."""

from __future__ import annotations

from pathlib import Path

from blockwatch.lab.scenario import expected_for, load
from blockwatch.lab.services import lab_catalogue

LOSS_PERCENT = 10


def test_verdicts_survive_packet_loss(lab, sweeps) -> None:
    methods = (Path(__file__).parents[2] / "blockwatch/lab/scenarios/methods.toml").read_text()
    lossy = lab.tmp / "lossy.toml"
    lossy.write_text(methods.replace("[options]", f"[options]\nglobal_loss_percent = "
                                                  f"{LOSS_PERCENT}"))
    cat = lab_catalogue()
    sc = load(str(lossy), cat.services)
    assert sc.option("global_loss_percent") == LOSS_PERCENT
    got = sweeps(str(lossy), "censored", label="loss", timeouts=(2, 10, 10, 15), dns_retries=5)
    want = {s: (e.verdict, e.layer) for s, svc in cat.services.items()
            for e in [expected_for(sc, s, svc.exclusive_prefixes)]}
    seen = {s: (v.verdict, v.layer or None) for s, v in got.services.items()}
    failed = [(r["target"], r["failure"], r["failed_operation"]) for r in got.rows
              if r["failure"] and seen.get(r["service"]) != want.get(r["service"])]
    assert seen == want, failed
