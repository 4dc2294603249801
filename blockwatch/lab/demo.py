"""``blockwatch lab demo``: bring a lab up, sweep from both clients with the real
``blockwatch run``, print what the censor did next to what each client concluded, tear down.

The control client sweeps first; the censored client then sweeps with the control client named
in ``[analysis] control_vantages`` (one database), so a failure the censor causes meets a
control that succeeded, and TCP methods are ``blocked`` where the control column says ``ok``
(alone, one run could only call them ``inconclusive``: a dead server fails the same way).

The exit code says whether every verdict matched what the analyzer is expected to say (0) or
not (1), so the demo doubles as a smoke test of the whole chain. It says what it is doing while
it works (on a terminal, each sweep's own progress bar: measurements done of planned, elapsed
time, the service being measured), and a legend under the table explains the methods and the
verdicts. Opt-in lab services (``labweb``) are swept when the scenario names them; the control
client is expected to see every service ``ok`` except those a method hits for everybody
(``server_down``).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from rich.table import Table
from rich.text import Text

from blockwatch.lab import lifecycle, runner
from blockwatch.lab.scenario import (
    ALL_METHODS,
    ANALYZER,
    expected_control,
    expected_with_control,
    load,
)
from blockwatch.lab.services import opt_in_toml
from blockwatch.term import console

CONTROL_VANTAGE = "lab-control"  # runner.config_text's [vantage] name for the control client
VERDICTS = (
    ("ok", "every measurement worked"),
    ("blocked", "failed here while the control got through (or a signature no outage has, "
     "such as a forged DNS answer or a block page)"),
    ("partial", "some of the service's names or addresses blocked, others not"),
    ("inconclusive", "failed, but nothing tells blocking from an outage"),
    ("down", "failed for the control client too: an outage, not censorship"),
)


def _say(text: str, t0: float) -> None:
    print(f"[{time.monotonic() - t0:5.1f} s] {text}", file=sys.stderr, flush=True)


def demo(name: str, scenario_name: str, *, keep: bool = False) -> int:
    t0 = time.monotonic()
    _say(f"bringing lab {name} up: namespaces, resolvers, web servers, the censor "
         f"(scenario {scenario_name}) ...", t0)
    lab, said = lifecycle.up(name, scenario_name)
    _say(said, t0)
    try:
        scenario = load(scenario_name, lab.catalogue.known())
        opt_in = [s for s in scenario.blocks if s in lab.catalogue.opt_in]
        with tempfile.TemporaryDirectory(prefix="bw-lab-demo-") as tmp:
            db = Path(tmp) / "demo.db"
            got = {}
            for client in ("control", "censored"):  # the control first: the censored run
                extra = opt_in_toml(opt_in) if opt_in else ""  # is judged against it
                if client == "censored":
                    extra += f'\n[analysis]\ncontrol_vantages = ["{CONTROL_VANTAGE}"]\n'
                cfg = Path(tmp) / f"{client}.toml"
                cfg.write_text(runner.config_text(
                    client, lab.catalogue, lab.manifest.info["pki"]["lab_ca"], db, extra=extra))
                _say(f"sweeping from the {client} client: `blockwatch run` in its namespace "
                     f"({'behind the censor' if client == 'censored' else 'no censor'}) ...",
                     t0)
                run_id, count = _sweep(name, client, cfg, db)
                if run_id is None:
                    return 1
                got[client] = runner.service_verdicts(db, run_id)
                _say(f"  {count} measurements from the {client} client", t0)
            return _print(scenario, lab, got)
    finally:
        if not keep:
            _say(lifecycle.down(name), t0)


def _sweep(name: str, client: str, cfg: Path, db: Path) -> tuple[str | None, int]:
    """One client's sweep: (its run id, or None after saying why it failed; its measurements).
    On a terminal, ``blockwatch run`` draws its own progress bar there (the seconds a sweep
    takes are not silent); otherwise its JSON rows are read, as the lab's tests do."""
    if sys.stderr.isatty():
        code, run = runner.sweep_shown(name, client, cfg, db)
        if code != 0 or run is None:
            print(f"blockwatch run failed ({code}; its messages are above)", file=sys.stderr)
            return None, 0
        return run.id, int((run.summary or {}).get("measurements") or 0)
    res = runner.sweep(name, client, cfg)
    if res.run_id is None:
        print(f"blockwatch run failed ({res.returncode}): {res.stderr.strip()}", file=sys.stderr)
        return None, 0
    return res.run_id, len(res.rows)


def _print(scenario: object, lab: lifecycle.Lab, got: dict[str, dict[str, object]]) -> int:
    from blockwatch.lab.scenario import Scenario

    assert isinstance(scenario, Scenario)
    table = Table(title=f"lab scenario {scenario.name}: what the censor did, what blockwatch saw")
    table.add_column("service", no_wrap=True)
    for col in ("what the censor did", "control client", "censored client",
                f"expected (analyzer v{ANALYZER})", "check"):
        table.add_column(col, overflow="fold")
    mismatches = 0
    used: set[str] = set()
    swept = {**lab.catalogue.services,
             **{n: s for n, s in lab.catalogue.opt_in.items() if n in scenario.blocks}}
    for svc_name, svc in swept.items():
        methods = scenario.blocks.get(svc_name, ())
        used.update(methods)
        exp = expected_with_control(scenario, svc_name, svc.exclusive_prefixes)
        c, k = got["censored"].get(svc_name), got["control"].get(svc_name)
        verdict, layer = getattr(c, "verdict", "?"), getattr(c, "layer", None) or None
        kv = getattr(k, "verdict", "?")
        ok = (verdict, layer) == (exp.verdict, exp.layer) or (
            # random loss: a connection it happened to break is interference the control did
            # not see, so "partial" is as right as "ok"
            "packet_loss" in methods and verdict in ("ok", "partial"))
        ok = ok and kv == expected_control(scenario, svc_name).verdict
        mismatches += not ok
        table.add_row(svc_name, ", ".join(methods) or "-", kv, f"{verdict} {layer or ''}".strip(),
                      f"{exp.verdict} {exp.layer or ''}".strip(),
                      Text("as expected", style="green") if ok else Text("MISMATCH", style="red"))
    out = console()
    out.print(table)
    out.print(Text("what the censor did:", style="bold"))
    for method in sorted(used):
        out.print(Text(f"  {method}: {ALL_METHODS[method].what}"))
    out.print(Text("verdicts (the layer after one says where it failed: dns, tcp, tls, http, "
                   "vpn):", style="bold"))
    for verdict, meaning in VERDICTS:
        out.print(Text(f"  {verdict}: {meaning}"))
    out.print(Text("control client: a second client outside the censor; the censored client's "
                   f"run names it in [analysis] control_vantages ({CONTROL_VANTAGE})"))
    return 0 if not mismatches else 1
