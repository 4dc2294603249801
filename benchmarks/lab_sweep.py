"""A real sweep in the censorship lab: the catalogue plus N generated lab sites, a share of
them dropped by the censor (TCP SYN drop), through ``blockwatch run`` in the censored client.

Prints wall time (beside the longest single measurement), CPU seconds and peak RSS of the sweep
process (a one-by-one comparison is measured, never summed: benchmarks/sweep.py --one-by-one).
Needs root and the lab's packages (scripts/install-lab-deps.sh); builds a lab named ``bwbench``
and removes it after.

    sudo .venv/bin/python benchmarks/lab_sweep.py --sites 200 --drop 0.2
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from blockwatch.lab import lifecycle, runner


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=200)
    ap.add_argument("--drop", type=float, default=0.2, help="share of sites dropped (0-1)")
    ap.add_argument("--tcp-timeout", type=float, default=3.0)
    ap.add_argument("--name", default="bwbench")
    args = ap.parse_args()
    dropped = [f"site{i}" for i in range(args.sites) if i % round(1 / args.drop) == 0] \
        if args.drop > 0 else []
    with tempfile.TemporaryDirectory(prefix="bw-lab-bench-") as tmp:
        scenario = Path(tmp) / "bench.toml"
        scenario.write_text("description = \"benchmark\"\n[services]\n" + "".join(
            f'{s} = "tcp_syn_drop"\n' for s in dropped))
        t0 = time.monotonic()
        lab, _ = lifecycle.up(args.name, str(scenario), sites=args.sites)
        up_s = time.monotonic() - t0
        try:
            db = Path(tmp) / "bench.db"
            cfg = Path(tmp) / "censored.toml"
            t = args.tcp_timeout
            cfg.write_text(runner.config_text("censored", lab.catalogue,
                                              lab.manifest.info["pki"]["lab_ca"], db,
                                              sites=args.sites, timeouts=(2, t, t, t + 2)))
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.monotonic()
            done = runner.in_namespace(args.name, "censored",
                                       [*runner.blockwatch_argv(), "run", "--config", str(cfg),
                                        "--json"], capture_output=True)
            wall = time.monotonic() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        finally:
            lifecycle.down(args.name)
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return 1
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    failed = sum(1 for r in rows if r["failure"])
    longest = max((r["runtime_s"] for r in rows), default=0.0)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"lab up: {up_s:.1f} s ({len(lab.catalogue.services)} services, {args.sites} generated "
          f"sites, {len(dropped)} dropped by the censor)")
    print(f"measurements: {len(rows)} ({failed} failed)")
    print(f"wall time: {wall:.2f} s (the longest single measurement: {longest:.2f} s)")
    print(f"CPU: {cpu:.2f} s")
    # ru_maxrss of children is the largest child's peak (KiB on Linux): the sweep process
    print(f"peak RSS: {after.ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
