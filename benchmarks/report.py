"""Benchmark the reports on a large synthetic history (SQLite; PostgreSQL with --db URL).

Builds (or reuses, with --reuse) a database of hourly sweeps from two vantages over a year:
10 services x 4 probes x N targets per run, so that it holds at least --measurements
measurements (default 5 million: 5,598,720), each with its verdict, plus one service verdict
per run and service (which drive the timeline and the change points). Then prints the wall
time of the daily timeline, the change points and the comparison with the built-in events, and
the peak memory (RSS) of this process; then the wall and CPU time and peak RSS of the two
commands a researcher runs on it, each in a process of its own as a user would:
``blockwatch report html`` and ``blockwatch export --format parquet`` (``--repeat`` times).

    .venv/bin/python benchmarks/report.py                       # 5M measurements, /tmp
    .venv/bin/python benchmarks/report.py --reuse --only cli    # the two commands again
    .venv/bin/python benchmarks/report.py --measurements 200000 # a quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from blockwatch.reports import synthetic
from blockwatch.reports.analysis import change_points, comparison
from blockwatch.reports.events import load_events
from blockwatch.reports.timeline import timeline
from blockwatch.storage import open_store
from blockwatch.storage.queries import layer_counts, service_verdicts

U = dt.UTC
SERVICES = ("kakaotalk", "line", "instagram", "facebook", "whatsapp", "wechat", "twitter",
            "youtube", "google", "telegram")


def scenario(measurements: int) -> synthetic.Scenario:
    start, end = dt.datetime(2014, 1, 1, tzinfo=U), dt.datetime(2015, 1, 1, tzinfo=U)
    runs = int((end - start) / dt.timedelta(hours=1)) * 2
    per_run = len(SERVICES) * len(synthetic.PROBES)
    targets = max(1, math.ceil(measurements / (runs * per_run)))
    cn = "cn-home"
    return synthetic.Scenario(
        vantages=[(cn, "CN"), ("kr-office", "KR")], services=SERVICES, start=start, end=end,
        blocking=[synthetic.Blocking(service="kakaotalk", vantage=cn,
                                     start=dt.datetime(2014, 7, 2, tzinfo=U)),
                  synthetic.Blocking(service="line", vantage=cn,
                                     start=dt.datetime(2014, 7, 2, tzinfo=U)),
                  synthetic.Blocking(service="instagram", vantage=cn, layer="tls",
                                     start=dt.datetime(2014, 9, 28, tzinfo=U))]
        + [synthetic.Blocking(service=s, vantage=cn, start=start - dt.timedelta(days=1))
           for s in ("facebook", "twitter", "youtube", "google")],
        outages=[(cn, dt.datetime(2014, 3, 3, tzinfo=U), dt.datetime(2014, 3, 4, tzinfo=U),
                  "network_unavailable")],
        measurements_every=1, targets_per_probe=targets)


def timed(label: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    print(f"{label:<34} {time.perf_counter() - t0:8.2f} s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="/tmp/blockwatch-bench-report.db",
                    help="SQLite path or database URL")
    ap.add_argument("--measurements", type=int, default=5_000_000)
    ap.add_argument("--reuse", action="store_true", help="use the database as it is")
    ap.add_argument("--only", choices=("queries", "cli"), default=None,
                    help="only the in-process queries, or only the two commands")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each command (cli)")
    args = ap.parse_args()
    s = scenario(args.measurements)
    is_file = "://" not in args.db
    if not args.reuse:
        if is_file:
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(args.db + suffix):
                    os.remove(args.db + suffix)
        with open_store(args.db) as store:
            runs, ms, vs = timed("build (bulk insert)", lambda: synthetic.write(store, s, 200))
        print(f"  {runs} runs, {ms} measurements, {vs} verdicts")
    if is_file:
        print(f"  database size {os.path.getsize(args.db) / 2**30:.2f} GiB")
    if args.only != "cli":
        queries(args.db)
    if args.only != "queries":
        commands(args.db, args.repeat)


def queries(db: str) -> None:
    events = load_events()
    with open_store(db) as store:
        n = timed("service verdicts (stream only)",
                  lambda: sum(1 for _ in service_verdicts(store)))
        print(f"  {n} service verdicts")
        tl = timed("timeline (day buckets, SQL)", lambda: timeline(store, "day"))
        print(f"  {len(tl.series)} series x {len(tl.buckets)} days")
        timed("timeline (hour buckets, SQL)", lambda: timeline(store, "hour"))
        results = timed("change points", lambda: change_points(store))
        for r in results:
            for c in r.changes:
                print(f"  {c.kind} {c.service}@{c.vantage} {c.last_before:%Y-%m-%d %H:%M} .. "
                      f"{c.first_after:%Y-%m-%d %H:%M} conf {c.confidence}")
        found = timed("comparison (incl. change points)",
                      lambda: comparison(store, events))
        print(f"  {len(found)} comparisons")
        timed("per-layer counts (all measurements)", lambda: len(layer_counts(store)))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss:.0f} MiB")


def commands(db: str, repeat: int) -> None:
    """``report html`` and ``export --format parquet`` as a user runs them: a process each
    (imports included), wall and CPU time (user + system) and peak RSS of the child."""
    exe = os.path.join(os.path.dirname(sys.executable), "blockwatch")
    url = db if "://" in db else f"sqlite:///{os.path.abspath(db)}"
    with tempfile.TemporaryDirectory(prefix="bw-bench-report-") as tmp:
        config = os.path.join(tmp, "config.toml")
        with open(config, "w", encoding="utf-8") as fh:
            fh.write(f'[storage]\nurl = "{url}"\n')
        html, parquet = os.path.join(tmp, "report.html"), os.path.join(tmp, "m.parquet")
        for _ in range(repeat):
            child("report html", [exe, "report", "html", "--db", url, "-o", html])
            child("export --format parquet",
                  [exe, "export", "--config", config, "--format", "parquet", "-o", parquet])
        print(f"  report {os.path.getsize(html) / 2**20:.1f} MiB, parquet "
              f"{os.path.getsize(parquet) / 2**20:.0f} MiB")


def child(label: str, argv: list[str]) -> None:
    t0 = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, os.environ)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{label} failed: {argv}")
    print(f"{label:<34} {wall:8.2f} s wall {usage.ru_utime + usage.ru_stime:8.2f} s CPU "
          f"{usage.ru_maxrss / 1024:6.0f} MiB peak RSS")


if __name__ == "__main__":
    main()
