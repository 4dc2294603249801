"""Benchmark: what the ``ech`` probe costs per 1,000 names, beside the ``tls`` probe on the
same names, in the sweep benchmark's private network namespace.

    sudo .venv/bin/python benchmarks/ech_cost.py -n 1000 --timeout 2 [--keep DIR] [--json]

Like benchmarks/sweep.py (whose farm and measuring it reuses), the script re-executes itself in
a new network and mount namespace (``unshare --net --mount``): only ``lo``, no route out.
There the farm (benchmarks/farm.py) gives N names ``site-<i>.farm.test`` their own addresses
and DNS (dnsmasq), and this script adds one TLS server on 0.0.0.0:443 (Python's ssl, OpenSSL,
a self-signed certificate made here: the ech probe verifies nothing, it asks whether a hello is
answered). Then ``blockwatch run --input-file URLS`` of ``https://site-<i>.farm.test/`` runs
twice, each as a child measured with os.wait4 (wall, CPU, peak RSS): ``[probes] probes =
["ech"]`` (three ClientHellos per name: plain, GREASE, no real config as the farm publishes
no HTTPS record; plus the name's A, AAAA and HTTPS queries) and ``["tls"]`` (one verified
handshake per name; it fails, unknown authority, and is tried again with the control SNI: two
handshakes). Every ech measurement must be ``ok`` with its two hellos answered (a ServerHello);
anything else is counted as wrong, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import farm  # noqa: E402
import sweep  # noqa: E402

ENV = "BLOCKWATCH_ECH_BENCH_NETNS"
TLS_PORT = 443


def log(msg: str) -> None:
    print(f"[ech_cost] {msg}", file=sys.stderr, flush=True)


def self_signed(work: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"*.{farm.DOMAIN}")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = work / "farm-cert.pem", work / "farm-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def serve_tls(cert: str, key: str) -> None:
    """Complete the server's side of every handshake on 0.0.0.0:443, then close."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    class Handler(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            self.transport.close()

    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda *_: None)  # clients leave mid-handshake on purpose
    server = loop.run_until_complete(loop.create_server(
        Handler, "0.0.0.0", TLS_PORT, ssl=ctx, backlog=65535, reuse_address=True,
        ssl_handshake_timeout=10))
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    try:
        loop.run_forever()
    finally:
        server.close()


def config(work: Path, db: Path, probes: str, timeout: float) -> Path:
    t = f"{timeout:g}"
    path = work / f"{probes}.toml"
    path.write_text("\n".join([
        "[vantage]", f'name = "{sweep.VANTAGE}"', "",
        "[storage]", f'url = "sqlite:///{db}"', "",
        "[timeouts]", f"dns = {t}", f"tcp = {t}", f"tls = {t}", f"http = {t}", "",
        "[dns]", "controls = []", "",
        "[probes]", f'scope = ["{farm.PREFIX}"]', f'probes = ["{probes}"]', "",
        "[baseline]", f'endpoints = ["{farm.BASELINE_IP}:{farm.HTTP_PORT}"]', ""]))
    return path


def judge(db: Path, probe: str, n: int) -> dict[str, Any]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT m.failure, m.observations FROM measurements m "
                           "WHERE m.probe = ?", (probe,)).fetchall()
    finally:
        con.close()
    wrong = 0
    hellos = 0
    for failure, observations in rows:
        obs = json.loads(observations) if isinstance(observations, str) else observations
        if probe == "ech":
            answered = [o for o in obs if o.get("layer") == "ech" and o.get("kind") == "hello"
                        and o.get("outcome") == "server_hello"]
            hellos += len(answered)
            wrong += failure is not None or len(answered) != 2
    return {"measurements": len(rows), "wrong": wrong + max(0, n - len(rows)),
            **({"answered_hellos": hellos} if probe == "ech" else {})}


def inside(args: argparse.Namespace) -> int:
    work = Path(args.keep).resolve() if args.keep else Path(
        tempfile.mkdtemp(prefix="blockwatch-ech-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    the_farm = farm.Farm(n=args.n, black=frozenset(), delay=0.0, workdir=work)
    mounted = False
    out: dict[str, Any] = {"n": args.n, "timeout_s": args.timeout}
    try:
        farm.setup_namespace(work)
        mounted = True
        the_farm.start()
        cert, key = self_signed(work)
        the_farm._spawn("tls", [sys.executable, str(Path(__file__).resolve()), "--serve-tls",
                                str(cert), str(key)])
        time.sleep(1.0)
        urls = work / "urls.txt"
        urls.write_text("".join(f"https://{farm.name(i)}/\n" for i in range(1, args.n + 1)))
        exe = str(sweep.blockwatch_exe(argparse.Namespace(blockwatch=None)))
        for probe in ("ech", "tls"):
            db = work / f"{probe}.db"
            argv = [exe, "run", "--config", str(config(work, db, probe, args.timeout)),
                    "--input-file", str(urls), "--yes", "--quiet"]
            log(f"blockwatch, probes = [{probe!r}]: running")
            r = sweep.measure(probe, argv, work / f"{probe}.stdout", work / f"{probe}.stderr",
                              the_farm)
            per = 1000 / args.n
            out[probe] = {"wall_s": round(r.wall_s, 2), "cpu_s": round(r.cpu_s, 2),
                          "peak_rss_mib": round(r.rss_mib, 1), "exit_code": r.exit_code,
                          "wall_s_per_1000": round(r.wall_s * per, 2),
                          "cpu_s_per_1000": round(r.cpu_s * per, 2),
                          **judge(db, probe, args.n)}
            log(f"{probe}: {out[probe]}")
        out["command"] = (f"sudo {sys.executable} {Path(__file__).resolve()} -n {args.n} "
                          f"--timeout {args.timeout:g}")
        print(json.dumps(out) if args.json else json.dumps(out, indent=2))
        ok = out["ech"]["exit_code"] == 0 and not out["ech"]["wrong"]
        return 0 if ok else 1
    finally:
        the_farm.stop()
        if mounted:
            subprocess.run([farm.tool("umount") or "umount", "/etc/resolv.conf"],
                           capture_output=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-tls":
        serve_tls(sys.argv[2], sys.argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1000, help="names (https URLs)")
    ap.add_argument("--timeout", type=float, default=2.0, help="blockwatch's timeouts (s)")
    ap.add_argument("--keep", metavar="DIR", help="keep the work directory")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (a private network namespace is made): sudo "
                 f"{sys.executable} {__file__} -n {args.n}")
    if os.environ.get(ENV) != "1":
        unshare = farm.tool("unshare") or "unshare"
        os.execve(unshare, [unshare, "--net", "--mount", "--propagation", "private", "--",
                            sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]],
                  {**os.environ, ENV: "1"})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return inside(args)


if __name__ == "__main__":
    sys.exit(main())
