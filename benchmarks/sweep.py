"""Benchmark: `blockwatch run` of a test list of N URLs against a ~30-line asyncio prober, on
the same targets, in a private network namespace; optionally blockwatch one-by-one too.

    sudo .venv/bin/python benchmarks/sweep.py -n 1000 --blackhole 0.2 --delay 0.05 --timeout 2
        [--one-by-one] [--skip-reference] [--skip-blockwatch] [--seed 1] [--keep DIR] [--json]
        [--blockwatch EXE]   # another blockwatch to measure (default: the venv's)

The script re-executes itself in a new network and mount namespace (``unshare --net --mount
--propagation private``): only ``lo``, no route out, gone when the script ends. Nothing is ever
sent outside it. There it builds the target farm (benchmarks/farm.py): N names
``site-<i>.farm.test``, each with its own address in 10.77.0.0/16 (AnyIP on lo), served by a
real dnsmasq (10.77.0.53, also the namespace's /etc/resolv.conf) and one asyncio HTTP server
on 0.0.0.0:80 answering every request after ``--delay`` s; a seeded ``--blackhole`` share of
the addresses drops TCP (nftables), so connecting to them times out.

Then, one after another, each as a child process measured with os.wait4 (wall time, CPU =
user + system, peak RSS):

* reference: benchmarks/reference_prober.py (dnspython A query + one httpx GET per name, all
  concurrent);
* blockwatch: ``blockwatch run --config FARM.toml --input-file URLS --yes --quiet`` with the
  default concurrency (``[[services]]`` tables instead while ``--input-file`` does not exist);
* with ``--one-by-one``: the same with ``--concurrency 1`` (or ``[concurrency] global = 1``).

Ground truth is known (which addresses are blackholed), so every measurement is judged: DNS
must succeed with the site's address; TCP/HTTP must succeed (HTTP with 200) for a live site and
fail at ``connect`` with ``generic_timeout_error`` (the reference: ``ConnectTimeout``) for a
blackholed one. Prints wall, CPU, peak RSS and wrong/total per run, the ratios, whether the
farm dropped anything (UDP receive-buffer drops, listen-queue overflows), and the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import farm  # noqa: E402  (benchmarks/farm.py, beside this file)

ENV = "BLOCKWATCH_BENCH_NETNS"
VANTAGE = "bench"
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")
SITE = re.compile(rf"^site-(\d+)\.{re.escape(farm.DOMAIN)}$")


def log(msg: str) -> None:
    print(f"[sweep] {msg}", file=sys.stderr, flush=True)


# --- arguments and startup checks ---------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000, help="sites (URLs) in the test list")
    ap.add_argument("--quic", action="store_true",
                    help="measure the quic probe's cost per 1,000 names instead "
                         "(benchmarks/quic_sweep.py: -n, --blackhole, --timeout, --seed, "
                         "--keep, --blockwatch, --json)")
    ap.add_argument("--blackhole", type=float, default=0.2,
                    help="share of the sites whose TCP is dropped (0-1)")
    ap.add_argument("--delay", type=float, default=0.05, help="HTTP server delay per answer (s)")
    ap.add_argument("--timeout", type=float, default=2.0,
                    help="DNS/TCP/TLS/HTTP timeout of both probers (s)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the blackholed set")
    ap.add_argument("--one-by-one", action="store_true",
                    help="also run blockwatch with concurrency 1 (slow: measured, never summed)")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--skip-blockwatch", action="store_true")
    ap.add_argument("--blockwatch", metavar="EXE", type=lambda v: str(Path(v).absolute()),
                    help="the blockwatch executable to measure (default: the venv's, beside "
                         "this python)")
    ap.add_argument("--keep", metavar="DIR",
                    help="keep configs, lists, databases and logs in DIR (default: a temporary "
                         "directory, removed)")
    ap.add_argument("--json", action="store_true",
                    help="print the figures as one JSON object (the table goes to stderr)")
    ap.add_argument("--repeat", type=int, default=1, metavar="K",
                    help="run the reference and blockwatch K times, alternately, and report "
                         "each one's median run and the median of the K ratios (this "
                         "machine's speed drifts; a ratio of neighbouring runs does not)")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be 1 or more")
    if not 1 <= args.n <= farm.MAX_SITES:
        ap.error(f"-n must be 1..{farm.MAX_SITES}")
    if not 0 <= args.blackhole <= 1:
        ap.error("--blackhole must be 0..1")
    if not 0 < args.timeout <= 300:
        ap.error("--timeout must be in (0, 300] (blockwatch's limit)")
    if args.delay < 0:
        ap.error("--delay must be >= 0")
    return args


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run, every option spelled out."""
    exe, script = sys.executable, str(Path(__file__).resolve())
    cwd = Path.cwd()
    with contextlib.suppress(ValueError):
        exe = str(Path(exe).relative_to(cwd))
    with contextlib.suppress(ValueError):
        script = str(Path(script).relative_to(cwd))
    argv = ["sudo", exe, script, "-n", str(args.n), "--blackhole", f"{args.blackhole:g}",
            "--delay", f"{args.delay:g}", "--timeout", f"{args.timeout:g}", "--seed",
            str(args.seed)]
    if args.repeat > 1:
        argv += ["--repeat", str(args.repeat)]
    argv += [f for f, on in (("--one-by-one", args.one_by_one),
                             ("--skip-reference", args.skip_reference),
                             ("--skip-blockwatch", args.skip_blockwatch),
                             ("--json", args.json)) if on]
    if args.blockwatch:
        argv += ["--blockwatch", args.blockwatch]
    if args.keep:
        argv += ["--keep", args.keep]
    return shlex.join(argv)


def preflight(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        sys.exit("sweep.py builds a private network namespace (unshare, ip, nft, dnsmasq): run "
                 "it as root, e.g.\n  " + command_line(args))
    missing = [t for t in ("unshare", "ip", "nft", "dnsmasq", "mount") if farm.tool(t) is None]
    if missing:
        sys.exit(f"missing: {', '.join(missing)}; install the lab packages with\n"
                 "  sudo bash scripts/install-lab-deps.sh")
    for module in ("dns", "httpx"):
        try:
            __import__(module)
        except ImportError:
            sys.exit(f"python module {module!r} missing: run with the project venv "
                     "(sudo .venv/bin/python benchmarks/sweep.py ...)")
    if not args.skip_blockwatch and not os.access(blockwatch_exe(args), os.X_OK):
        sys.exit(f"{blockwatch_exe(args)} not found: install blockwatch in the venv "
                 "(.venv/bin/pip install -e .) or pass --skip-blockwatch")


def blockwatch_exe(args: argparse.Namespace) -> Path:
    if args.blockwatch:
        return Path(args.blockwatch)
    beside = Path(sys.executable).parent / "blockwatch"  # the venv's bin (not resolved)
    return beside if beside.exists() else REPO / ".venv" / "bin" / "blockwatch"


def reexec_in_namespace() -> None:
    """Become `unshare --net --mount --propagation private python sweep.py ...` (same pid)."""
    unshare = farm.tool("unshare") or "unshare"
    argv = [unshare, "--net", "--mount", "--propagation", "private", "--",
            sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]]
    os.execve(unshare, argv, {**os.environ, ENV: "1"})


# --- measured child processes -------------------------------------------------------------------


@dataclass
class Result:
    label: str
    argv: list[str]
    wall_s: float = 0.0
    cpu_s: float = 0.0
    user_s: float = 0.0
    sys_s: float = 0.0
    rss_mib: float = 0.0
    exit_code: int = 0
    wrong: int = 0
    total: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    verdicts: dict[str, int] = field(default_factory=dict)
    sweep_s: float | None = None  # blockwatch's own run duration (runs table)
    extra: int = 0  # measurements of something that is not a farm site
    # UDP receive-buffer drops and listen-queue overflows in the namespace during the run
    kernel_drops: dict[str, int] = field(default_factory=dict)
    farm_cpu_s: dict[str, float] = field(default_factory=dict)

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "wall_s": round(self.wall_s, 3), "cpu_s": round(self.cpu_s, 3),
            "user_s": round(self.user_s, 3), "sys_s": round(self.sys_s, 3),
            "peak_rss_mib": round(self.rss_mib, 1), "exit_code": self.exit_code,
            "wrong": self.wrong, "total": self.total, "wrong_reasons": dict(self.reasons),
            "kernel_drops": self.kernel_drops,
            "farm_cpu_s": {k: round(v, 2) for k, v in self.farm_cpu_s.items()},
        }
        if self.verdicts:
            out["service_verdicts"] = self.verdicts
        if self.sweep_s is not None:
            out["sweep_s"] = round(self.sweep_s, 3)
        if self.extra:
            out["extra_measurements"] = self.extra
        return out


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS}
    env.pop(ENV, None)
    # as on any installed machine, Python caches compiled byte-code (some sandboxes turn it
    # off, which makes every run compile blockwatch's sources again)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def measure(label: str, argv: list[str], stdout: Path, stderr: Path, the_farm: farm.Farm) -> Result:
    """Run argv to completion; wall time, CPU and peak RSS from os.wait4."""
    result = Result(label=label, argv=argv)
    before, cpu0 = farm.kernel_counters(), the_farm.cpu()
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                             env=child_env(), cwd=stdout.parent,
                             preexec_fn=farm.die_with_parent)
        try:
            _, status, usage = os.wait4(p.pid, 0)
        except BaseException:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            raise
        result.wall_s = time.perf_counter() - t0
    p.returncode = result.exit_code = os.waitstatus_to_exitcode(status)
    result.cpu_s = usage.ru_utime + usage.ru_stime
    result.user_s, result.sys_s = usage.ru_utime, usage.ru_stime
    result.rss_mib = usage.ru_maxrss / 1024  # KiB on Linux
    after, cpu1 = farm.kernel_counters(), the_farm.cpu()
    result.kernel_drops = {k.split(".")[1]: after[k] - before[k] for k in after}
    result.farm_cpu_s = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
    if result.exit_code != 0:
        tail = stderr.read_text(errors="replace")[-3000:].strip()
        log(f"{label}: exit code {result.exit_code}\n{tail}")
    return result


# --- the reference ----------------------------------------------------------------------------


def run_reference(work: Path, args: argparse.Namespace, black: frozenset[int],
                  the_farm: farm.Farm) -> Result:
    names = work / "names.txt"
    argv = [sys.executable, str(HERE / "reference_prober.py"), str(names), farm.DNS_IP,
            f"{args.timeout:g}"]
    out = work / "reference.jsonl"
    r = measure("reference", argv, out, work / "reference.stderr", the_farm)
    rows: dict[str, dict[str, Any]] = {}
    for line in out.read_text().splitlines():
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            rows[row.get("name", "")] = row
    r.extra = sum(1 for k in rows if not SITE.match(k))
    for i in range(1, args.n + 1):
        row = rows.get(farm.name(i))
        blocked = i in black
        kind = "blackholed" if blocked else "live"
        r.total += 2
        if row is None:
            r.wrong += 2
            r.reasons["missing"] += 2
            continue
        if not (row.get("dns_ok") and row.get("address") == farm.address(i)):
            r.wrong += 1
            r.reasons[f"dns {kind}: {row.get('failure') or row.get('address')}"] += 1
        if not (row.get("failure") == "ConnectTimeout" if blocked
                else row.get("http_status") == 200):
            r.wrong += 1
            r.reasons[f"http {kind}: {row.get('failure') or row.get('http_status')}"] += 1
    return r


# --- blockwatch ---------------------------------------------------------------------------------


def blockwatch_flags(args: argparse.Namespace) -> set[str]:
    """Which of the newer `blockwatch run` flags this blockwatch has."""
    done = subprocess.run([str(blockwatch_exe(args)), "run", "--help"], capture_output=True,
                          text=True, env=child_env())
    return {f for f in ("--input-file", "--concurrency") if f in done.stdout}


def config_text(db: Path, args: argparse.Namespace, *, services: bool,
                one_by_one_in_config: bool) -> str:
    t = f"{args.timeout:g}"
    lines = [
        "# blockwatch benchmark farm (generated by benchmarks/sweep.py)",
        "[vantage]", f'name = "{VANTAGE}"', "",
        "[storage]", f'url = "sqlite:///{db}"', "",
        "[timeouts]", f"dns = {t}", f"tcp = {t}", f"tls = {t}", f"http = {t}", "",
        "[dns]", "controls = []", "",
        "[probes]", f'scope = ["{farm.PREFIX}"]',
    ]
    if services:
        lines.append("services = [" + ", ".join(f'"u{i}"' for i in range(1, args.n + 1)) + "]")
    lines += ["", "[baseline]", f'endpoints = ["{farm.BASELINE_IP}:{farm.HTTP_PORT}"]', ""]
    if one_by_one_in_config:
        lines += ["[concurrency]", "global = 1", "per_host = 1", ""]
    if services:
        for i in range(1, args.n + 1):
            lines += ["[[services]]", f'name = "u{i}"', f'urls = ["http://{farm.name(i)}/"]',
                      'category = "bench"', ""]
    return "\n".join(lines)


def run_blockwatch(work: Path, args: argparse.Namespace, black: frozenset[int],
                   the_farm: farm.Farm, flags: set[str], *, one_by_one: bool,
                   turn: int = 0) -> Result:
    label = "blockwatch one-by-one" if one_by_one else "blockwatch"
    stem = "bench-1by1" if one_by_one else f"bench{turn or ''}"
    db = work / f"{stem}.db"
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    input_file = "--input-file" in flags
    cfg = work / f"{stem}.toml"
    cfg.write_text(config_text(db, args, services=not input_file,
                               one_by_one_in_config=one_by_one and "--concurrency" not in flags))
    argv = [str(blockwatch_exe(args)), "run", "--config", str(cfg)]
    if input_file:
        argv += ["--input-file", str(work / "urls.txt")]
    if one_by_one and "--concurrency" in flags:
        argv += ["--concurrency", "1"]
    argv += ["--yes", "--quiet"]
    r = measure(label, argv, work / f"{stem}.stdout", work / f"{stem}.stderr", the_farm)
    judge_blockwatch(r, db, args.n, black)
    return r


def _iso(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def judge_blockwatch(r: Result, db: Path, n: int, black: frozenset[int]) -> None:
    probes = ("dns", "tcp", "http")
    r.total = len(probes) * n
    if not db.exists():
        r.wrong = r.total
        r.reasons["no database"] = r.total
        return
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        runs = con.execute("SELECT id, started_at, finished_at, status FROM runs "
                           "WHERE vantage = ? ORDER BY started_at", (VANTAGE,)).fetchall()
        ids = [row[0] for row in runs]
        if runs:
            start, end = _iso(runs[0][1]), _iso(runs[-1][2])
            if start and end:
                r.sweep_s = (end - start).total_seconds()
            statuses = {row[3] for row in runs}
            if statuses != {"complete"} or len(runs) != 1:
                log(f"{r.label}: {len(runs)} run(s), status {', '.join(sorted(statuses))}")
        marks = ",".join("?" * len(ids))
        rows = con.execute(
            f"SELECT probe, target_json, failure, failed_operation, observations "
            f"FROM measurements WHERE run_id IN ({marks})", ids).fetchall() if ids else []
        verdicts = con.execute(
            f"SELECT verdict, count(*) FROM verdicts WHERE measurement_id IS NULL "
            f"AND run_id IN ({marks}) GROUP BY verdict", ids).fetchall() if ids else []
    finally:
        con.close()
    r.verdicts = dict(sorted(verdicts))
    seen: dict[tuple[str, int], tuple[str | None, str | None, str]] = {}
    for probe, target_json, failure, failed_op, observations in rows:
        m = SITE.match(str(json.loads(target_json).get("host", "")))
        key = (probe, int(m.group(1))) if m else None
        if key is None or probe not in probes or key in seen or not 1 <= key[1] <= n:
            r.extra += 1
            continue
        seen[key] = (failure, failed_op, observations)
    for i in range(1, n + 1):
        blocked = i in black
        kind = "blackholed" if blocked else "live"
        for probe in probes:
            got = seen.get((probe, i))
            if got is None:
                r.wrong += 1
                r.reasons[f"{probe} {kind}: missing"] += 1
                continue
            failure, failed_op, observations = got
            why = _wrong(probe, blocked, failure, failed_op, observations, farm.address(i))
            if why:
                r.wrong += 1
                r.reasons[f"{probe} {kind}: {why}"] += 1


def _wrong(probe: str, blocked: bool, failure: str | None, failed_op: str | None,
           observations: str, expected: str) -> str | None:
    """Why a measurement is wrong, or None."""
    if probe == "dns":
        if failure:
            return f"{failure} at {failed_op}"
        obs = json.loads(observations or "[]")
        answers = [a.get("value") for o in obs if o.get("layer") == "dns" and o.get("qtype") == "A"
                   for resp in (o.get("responses") or [])[:1] for a in resp.get("answers", [])]
        return None if expected in answers else f"A answer {answers}"
    if blocked:
        if failure == "generic_timeout_error" and failed_op == "connect":
            return None
        return f"{failure or 'success'} at {failed_op}"
    if failure:
        return f"{failure} at {failed_op}"
    if probe == "http":
        statuses = [o.get("status") for o in json.loads(observations or "[]")
                    if o.get("layer") == "http"]
        if not statuses or statuses[-1] != 200:
            return f"status {statuses[-1] if statuses else None}"
    return None


# --- the report -----------------------------------------------------------------------------


def _median(runs: list[Result]) -> Result:
    """The run of median wall time (the upper one of an even number)."""
    return sorted(runs, key=lambda r: r.wall_s)[len(runs) // 2]



def report(args: argparse.Namespace, results: dict[str, Result], checks: list[str],
           black: frozenset[int], blockwatch_mode: str) -> dict[str, Any]:
    ratios: dict[str, float] = {}
    ref, bw, one = (results.get(k) for k in ("reference", "blockwatch", "one-by-one"))
    if ref and bw:
        ratios["blockwatch_wall_over_reference"] = bw.wall_s / ref.wall_s
        ratios["blockwatch_cpu_over_reference"] = bw.cpu_s / max(ref.cpu_s, 1e-9)
    if bw and one:
        ratios["one_by_one_wall_over_blockwatch"] = one.wall_s / bw.wall_s
    return {
        "n": args.n, "blackholed": len(black), "delay_s": args.delay, "timeout_s": args.timeout,
        "seed": args.seed, "cpus": os.cpu_count(), "blockwatch_mode": blockwatch_mode,
        "farm_checks": checks,
        "runs": {k: v.figures() for k, v in results.items()},
        "ratios": {k: round(v, 2) for k, v in ratios.items()},
        "command": command_line(args),
    }


def table(summary: dict[str, Any], results: dict[str, Result]) -> str:
    out = [f"{summary['n']} sites, {summary['blackholed']} blackholed, server delay "
           f"{summary['delay_s']:g} s, timeout {summary['timeout_s']:g} s, "
           f"{summary['cpus']} CPUs; blockwatch input: {summary['blockwatch_mode']}"
           + (f"; each run the median of {summary['repeat']} (alternating), each ratio the "
              f"median of {summary['repeat']} neighbouring pairs, worst wrong count of any run "
              f"{summary['worst_wrong_of_any_run']}" if summary.get("repeat") else ""), ""]
    out.append(f"{'run':<23}{'wall s':>9}{'CPU s':>9}{'peak RSS MiB':>14}"
               f"{'wrong / total':>17}")
    for r in results.values():
        out.append(f"{r.label:<23}{r.wall_s:>9.2f}{r.cpu_s:>9.2f}{r.rss_mib:>14.0f}"
                   f"{f'{r.wrong} / {r.total}':>17}"
                   + (f"   (exit {r.exit_code})" if r.exit_code else ""))
    out.append("")
    names = {"blockwatch_wall_over_reference": "blockwatch wall / reference wall",
             "blockwatch_cpu_over_reference": "blockwatch CPU / reference CPU",
             "one_by_one_wall_over_blockwatch": "one-by-one wall / blockwatch wall"}
    for k, v in summary["ratios"].items():
        out.append(f"{names[k]:<36}{v:>8.2f}x")
    if summary["ratios"]:
        out.append("")
    for r in results.values():
        extra = []
        extra.append(f"CPU {r.user_s:.2f} s user + {r.sys_s:.2f} s system")
        if r.sweep_s is not None:
            extra.append(f"sweep itself {r.sweep_s:.2f} s (runs table)")
        if r.verdicts:
            extra.append("service verdicts " + ", ".join(f"{k} {v}" for k, v in r.verdicts.items()))
        if r.extra:
            extra.append(f"{r.extra} measurements of non-farm targets")
        drops = {k: v for k, v in r.kernel_drops.items() if v}
        shown = ", ".join(f"{k} {v}" for k, v in drops.items()) if drops else "none"
        extra.append(f"kernel drops (UDP rcvbuf, listen queue): {shown}")
        extra.append("farm CPU " + ", ".join(f"{k} {v:.2f} s" for k, v in r.farm_cpu_s.items()))
        out.append(f"{r.label}: " + "; ".join(extra))
        for reason, count in r.reasons.most_common(6):
            out.append(f"    wrong: {count} x {reason}")
    out += ["", "reproduce: " + summary["command"]]
    return "\n".join(out)


# --- main ---------------------------------------------------------------------------------------


def inside(args: argparse.Namespace) -> int:
    if args.keep:
        work = Path(args.keep).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="blockwatch-bench-"))
    black = farm.blackholed(args.n, args.blackhole, args.seed)
    the_farm = farm.Farm(n=args.n, black=black, delay=args.delay, workdir=work)
    results: dict[str, Result] = {}
    paired: dict[str, float] = {}
    mounted = False
    try:
        farm.setup_namespace(work)
        mounted = True
        t0 = time.perf_counter()
        the_farm.start()
        log(f"farm up in {time.perf_counter() - t0:.2f} s: {args.n} sites, {len(black)} "
            f"blackholed, dnsmasq at {farm.DNS_IP}, HTTP on {farm.PREFIX}:80 (work dir {work})")
        checks = the_farm.check()
        for line in checks:
            log(f"check: {line}")
        (work / "names.txt").write_text("".join(farm.name(i) + "\n"
                                                for i in range(1, args.n + 1)))
        (work / "urls.txt").write_text("".join(f"http://{farm.name(i)}/\n"
                                               for i in range(1, args.n + 1)))
        flags = set() if args.skip_blockwatch else blockwatch_flags(args)
        mode = ("--input-file" if "--input-file" in flags else "[[services]] tables "
                "(this blockwatch has no --input-file)")
        refs: list[Result] = []
        bws: list[Result] = []
        for turn in range(args.repeat):
            if not args.skip_reference:
                log("reference prober: running")
                refs.append(run_reference(work, args, black, the_farm))
                log(f"reference prober: {refs[-1].wall_s:.2f} s")
            if not args.skip_blockwatch:
                log("blockwatch: running")
                bws.append(run_blockwatch(work, args, black, the_farm, flags,
                                          one_by_one=False, turn=turn))
                log(f"blockwatch: {bws[-1].wall_s:.2f} s")
        if refs:
            results["reference"] = _median(refs)
        if bws:
            results["blockwatch"] = _median(bws)
        if refs and bws and args.repeat > 1:
            pairs = list(zip(refs, bws, strict=True))
            paired["blockwatch_wall_over_reference"] = statistics.median(
                b.wall_s / r.wall_s for r, b in pairs)
            paired["blockwatch_cpu_over_reference"] = statistics.median(
                b.cpu_s / max(r.cpu_s, 1e-9) for r, b in pairs)
            paired["worst_wrong"] = max(x.wrong for x in [*refs, *bws])
            log("pairs (reference wall/CPU, blockwatch wall/CPU): " + "; ".join(
                f"{r.wall_s:.2f}/{r.cpu_s:.2f} {b.wall_s:.2f}/{b.cpu_s:.2f}" for r, b in pairs))
        if not args.skip_blockwatch and args.one_by_one:
            log("blockwatch one-by-one: running (slow on purpose)")
            results["one-by-one"] = run_blockwatch(work, args, black, the_farm, flags,
                                                   one_by_one=True)
            log(f"blockwatch one-by-one: {results['one-by-one'].wall_s:.2f} s")
        if not the_farm.alive():
            log("warning: a farm process died during the runs: "
                f"{the_farm.log('dnsmasq')} {the_farm.log('http')}")
        summary = report(args, results, checks, black, mode)
        if paired:
            summary["repeat"] = args.repeat
            summary["ratios"].update({k: round(v, 2) for k, v in paired.items()
                                      if k != "worst_wrong"})
            summary["worst_wrong_of_any_run"] = paired["worst_wrong"]
        if args.keep:
            (work / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
        text = table(summary, results)
        if args.json:
            print(text, file=sys.stderr)
            print(json.dumps(summary))
        else:
            print(text)
        return 0 if all(r.exit_code == 0 for r in results.values()) else 1
    finally:
        the_farm.stop()
        if mounted:
            subprocess.run([farm.tool("umount") or "umount", "/etc/resolv.conf"],
                           capture_output=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    if "--quic" in sys.argv[1:]:  # the quic probe's cost: benchmarks/quic_sweep.py
        import quic_sweep

        return quic_sweep.main([a for a in sys.argv[1:] if a != "--quic"])
    args = parse_args()
    preflight(args)
    if os.environ.get(ENV) != "1":
        reexec_in_namespace()  # does not return
    # from here on: inside the private namespace (farm.setup_namespace checks it again)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return inside(args)
    except RuntimeError as exc:
        log(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        log("interrupted: the farm is stopped, nothing is reported")
        return 130


if __name__ == "__main__":
    sys.exit(main())
