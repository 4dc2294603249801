"""Benchmark: what the quic probe costs per 1,000 names (``sweep.py --quic`` runs this).

    sudo .venv/bin/python benchmarks/quic_sweep.py -n 1000 --blackhole 0.2 --timeout 2 [--keep DIR]

Like benchmarks/sweep.py it re-executes itself in a private network and mount namespace (only
``lo``, no route out) and builds the same target farm (benchmarks/farm.py: N names
``site-<i>.farm.test`` on their own addresses in 10.77.0.0/16, a real dnsmasq). It adds the
lab's HTTP/3 server (``blockwatch.lab.h3server``, aioquic, one UDP socket per site address on
443, a certificate for ``*.farm.test`` from a throwaway CA) and drops UDP/443 to the seeded
``--blackhole`` share of the addresses (nftables), as a censor dropping QUIC would.

Then two ``blockwatch run`` of the N URLs ``https://site-<i>.farm.test/``, each measured as a
child process (wall time, CPU, peak RSS, os.wait4): ``[probes] probes = ["dns"]`` and
``["dns", "quic"]``. The difference is the quic probe's cost. Every quic measurement is
checked against the ground truth: a live site must complete the handshake and answer the GET
(HTTP/3 200), a blackholed one must fail with ``generic_timeout_error`` at ``quic_handshake``.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import farm  # noqa: E402
import sweep  # noqa: E402  (its measured child processes and the farm's namespace)

ENV = "BLOCKWATCH_QUIC_BENCH_NETNS"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1000, help="sites (names) in the test list")
    ap.add_argument("--blackhole", type=float, default=0.2,
                    help="share of the sites whose UDP/443 is dropped (0-1)")
    ap.add_argument("--timeout", type=float, default=2.0,
                    help="DNS timeout and [probe.quic] timeout (s)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", type=Path, help="keep configs, databases and logs in DIR")
    ap.add_argument("--blockwatch", help="the blockwatch executable (default: the venv's)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    return ap.parse_args(argv)


def _pki(work: Path) -> tuple[Path, Path, Path]:
    from blockwatch.lab.services import issue, make_ca

    ca, key = make_ca(work, "quic benchmark CA")
    from cryptography.hazmat.primitives import serialization

    ca_path = work / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert, cert_key = work / "server.pem", work / "server.key"
    issue(ca, key, [f"*.{farm.DOMAIN}"], cert, cert_key)
    return ca_path, cert, cert_key


def _drop_udp443(black: frozenset[int], work: Path) -> None:
    elements = ", ".join(farm.address(i) for i in sorted(black))
    ruleset = ("table inet quicbench {\n  set blackhole {\n    type ipv4_addr\n"
               + (f"    elements = {{ {elements} }}\n" if elements else "") + "  }\n"
               "  chain input {\n    type filter hook input priority filter; policy accept;\n"
               "    ip daddr @blackhole udp dport 443 drop\n  }\n}\n")
    path = work / "quic.nft"
    path.write_text(ruleset)
    farm.run(farm.tool("nft") or "nft", "-f", str(path))


def _config(db: Path, args: argparse.Namespace, ca: Path, probes: list[str]) -> str:
    t = f"{args.timeout:g}"
    return "\n".join([
        "[vantage]", f'name = "{sweep.VANTAGE}"', "[storage]", f'url = "sqlite:///{db}"',
        "[timeouts]", f"dns = {t}", "[dns]", "controls = []", "[tls]", f'ca_bundle = "{ca}"',
        "[probes]", f'scope = ["{farm.PREFIX}"]', f"probes = {json.dumps(probes)}",
        "[probe.quic]", f"timeout = {t}",
        "[baseline]", f'endpoints = ["{farm.BASELINE_IP}:{farm.HTTP_PORT}"]', ""])


def _judge(db: Path, n: int, black: frozenset[int]) -> dict[str, Any]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT target_json, failure, failed_operation, runtime_s FROM "
                            "measurements WHERE probe = 'quic'").fetchall()
    wrong: Counter[str] = Counter()
    seen = set()
    for target, failure, op, _ in rows:
        i = int(json.loads(target)["host"].split(".")[0].removeprefix("site-"))
        seen.add(i)
        ok = (failure, op) == (("generic_timeout_error", "quic_handshake") if i in black
                               else (None, None))
        if not ok:
            wrong[f"{'blackholed' if i in black else 'live'}: {failure} at {op}"] += 1
    wrong["missing"] += n - len(seen)
    times = sorted(r[3] for r in rows)
    return {"quic_measurements": len(rows), "wrong": sum(wrong.values()),
            "wrong_reasons": {k: v for k, v in wrong.items() if v},
            "median_measurement_s": times[len(times) // 2] if times else None}


def inside(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bw-quic-bench-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        farm.setup_namespace(work)
        black = farm.blackholed(args.n, args.blackhole, args.seed)
        the_farm = farm.Farm(args.n, frozenset(), 0.0, work)
        the_farm.start()
        ca, cert, key = _pki(work)
        addresses = [farm.address(i) for i in range(1, args.n + 1)]
        the_farm._spawn("h3", [sys.executable, "-m", "blockwatch.lab.h3server", str(cert),
                               str(key), "443", *addresses])
        _drop_udp443(black, work)
        (work / "urls.txt").write_text("".join(f"https://{farm.name(i)}/\n"
                                               for i in range(1, args.n + 1)))
        exe = sweep.blockwatch_exe(args)
        results, judged = {}, {}
        try:
            _wait_h3(the_farm, args.n)
            for label, probes in (("dns", ["dns"]), ("dns+quic", ["dns", "quic"])):
                db = work / f"{label}.db"
                cfg = work / f"{label}.toml"
                cfg.write_text(_config(db, args, ca, probes))
                argv = [str(exe), "run", "--config", str(cfg), "--input-file",
                        str(work / "urls.txt"), "--yes", "--quiet"]
                results[label] = sweep.measure(label, argv, work / f"{label}.out",
                                               work / f"{label}.err", the_farm)
            judged = _judge(work / "dns+quic.db", args.n, black)
        finally:
            the_farm.stop()
    a, b = results["dns"], results["dns+quic"]
    per_k = 1000 / args.n
    summary = {
        "n": args.n, "blackholed": len(black), "timeout_s": args.timeout,
        "dns": a.figures(), "dns+quic": b.figures(), "quic": judged,
        "quic_cost_per_1000_names": {
            "wall_s": round((b.wall_s - a.wall_s) * per_k, 2),
            "cpu_s": round((b.cpu_s - a.cpu_s) * per_k, 2),
            "peak_rss_mib_added": round(b.rss_mib - a.rss_mib, 1)},
        "command": " ".join(["sudo", sys.executable, str(Path(__file__).resolve()),
                             "-n", str(args.n), "--blackhole", f"{args.blackhole:g}",
                             "--timeout", f"{args.timeout:g}"]),
    }
    print(json.dumps(summary, indent=None if args.json else 2))
    return 0 if judged.get("wrong") == 0 and a.exit_code == b.exit_code == 0 else 1


def _wait_h3(the_farm: farm.Farm, n: int) -> None:
    import time

    deadline = time.monotonic() + 60
    while "h3server:" not in the_farm.log("h3"):
        if time.monotonic() > deadline or not the_farm.alive():
            raise RuntimeError(f"the HTTP/3 server did not start: {the_farm.log('h3')}")
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.environ.get(ENV) != "1":
        if os.geteuid() != 0:
            sys.exit("run as root (it builds a private network namespace)")
        unshare = farm.tool("unshare") or "unshare"
        os.execve(unshare, [unshare, "--net", "--mount", "--propagation", "private", "--",
                            sys.executable, str(Path(__file__).resolve()),
                            *(argv if argv is not None else sys.argv[1:])],
                  {**os.environ, ENV: "1"})
    return inside(args)


if __name__ == "__main__":
    sys.exit(main())
