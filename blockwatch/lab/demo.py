"""``blockwatch lab demo``: bring a lab up, sweep from both clients with the real
``blockwatch run``, print what the censor did next to what each client concluded, tear down.

The exit code says whether every verdict matched what the analyzer is expected to say (0) or
not (1), so the demo doubles as a smoke test of the whole chain. Opt-in lab services (``labweb``)
are swept when the scenario names them; the control client is expected to see every service
``ok`` except those a method hits for everybody (``server_down``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from blockwatch.lab import lifecycle, runner
from blockwatch.lab.scenario import ANALYZER, expected_control, expected_for, load
from blockwatch.lab.services import opt_in_toml


def demo(name: str, scenario_name: str, *, keep: bool = False) -> int:
    t0 = time.monotonic()
    lab, said = lifecycle.up(name, scenario_name)
    print(said, f"({time.monotonic() - t0:.1f} s)", file=sys.stderr)
    try:
        scenario = load(scenario_name, lab.catalogue.known())
        opt_in = [s for s in scenario.blocks if s in lab.catalogue.opt_in]
        with tempfile.TemporaryDirectory(prefix="bw-lab-demo-") as tmp:
            db = Path(tmp) / "demo.db"
            got = {}
            for client in runner.CLIENTS:
                cfg = Path(tmp) / f"{client}.toml"
                cfg.write_text(runner.config_text(
                    client, lab.catalogue, lab.manifest.info["pki"]["lab_ca"], db,
                    extra=opt_in_toml(opt_in) if opt_in else ""))
                print(f"sweeping from the {client} client ...", file=sys.stderr)
                res = runner.sweep(name, client, cfg)
                if res.run_id is None:
                    print(f"blockwatch run failed ({res.returncode}): {res.stderr.strip()}",
                          file=sys.stderr)
                    return 1
                got[client] = runner.service_verdicts(db, res.run_id)
            return _print(scenario, lab, got)
    finally:
        if not keep:
            print(lifecycle.down(name), file=sys.stderr)


def _print(scenario: object, lab: lifecycle.Lab, got: dict[str, dict[str, object]]) -> int:
    from blockwatch.lab.scenario import Scenario

    assert isinstance(scenario, Scenario)
    table = Table(title=f"lab scenario {scenario.name}: what the censor did, what blockwatch saw")
    for col in ("service", "censor did", "censored client", "control client",
                f"expected (analyzer v{ANALYZER})", ""):
        table.add_column(col)
    mismatches = 0
    swept = {**lab.catalogue.services,
             **{n: s for n, s in lab.catalogue.opt_in.items() if n in scenario.blocks}}
    for svc_name, svc in swept.items():
        methods = scenario.blocks.get(svc_name, ())
        exp = expected_for(scenario, svc_name, svc.exclusive_prefixes)
        c, k = got["censored"].get(svc_name), got["control"].get(svc_name)
        cv = f"{getattr(c, 'verdict', '?')} {getattr(c, 'layer', '') or ''}".strip()
        kv = getattr(k, "verdict", "?")
        ok = (getattr(c, "verdict", None) == exp.verdict
              and (getattr(c, "layer", None) or None) == exp.layer
              and kv == expected_control(scenario, svc_name).verdict)
        mismatches += not ok
        table.add_row(svc_name, ", ".join(methods) or "-", cv, kv,
                      f"{exp.verdict} {exp.layer or ''}".strip(),
                      "[green]as expected" if ok else "[red]MISMATCH")
    Console(width=140).print(table)
    return 0 if not mismatches else 1
