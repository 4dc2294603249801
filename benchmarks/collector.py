"""Benchmark the collector's ingestion into PostgreSQL: concurrent submitters, sustained rate and
submission latency.

Starts a throwaway PostgreSQL (Debian's binaries; as root it runs as the ``postgres`` user) with
its default durability (fsync and synchronous_commit on: a 2xx is a commit on disk), and the real
``blockwatch collector serve`` in front of it. ``--submitters`` threads, each a vantage with its
own token, send pre-built batches (``--per-batch`` measurements of realistic runs: DNS, TCP,
TLS and HTTP observations, with their verdicts) as fast as the answers come, for
``--seconds``. Prints the stored measurements a second, the latency percentiles of the
submissions, and checks in PostgreSQL that every measurement sent is stored once.

Two phases: a closed loop (each submitter sends its next batch as soon as the last is
answered) measures the capacity; an open loop (each submitter on a fixed schedule, together
``--rate`` measurements a second) measures the latency a volunteer sees at that load. In a
closed loop latency is set by Little's law (50 batches in flight / batches a second), so it
says nothing about a collector's responsiveness below its capacity.

    .venv/bin/python benchmarks/collector.py                      # 50 submitters, 2 x 15 s
    .venv/bin/python benchmarks/collector.py --submitters 10 --seconds 10 --rate 0
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from blockwatch.collector import tokens
from blockwatch.collector.batch import encode
from blockwatch.collector.client import json_row
from blockwatch.probes.model import (
    DNSAnswer,
    DNSObservation,
    DNSResponse,
    HTTPObservation,
    Measurement,
    Run,
    Target,
    TCPObservation,
    TLSObservation,
    Verdict,
)
from blockwatch.probes.runner import new_id
from blockwatch.storage import open_store
from blockwatch.storage.convert import measurement_to_row, run_to_row, verdict_to_row

BLOCKWATCH = str(Path(sys.executable).with_name("blockwatch"))
T0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_by_process(collector: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the collector's service process, its judging
    worker(s) and every PostgreSQL process (its backends included), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"collector": 0.0, "judging worker": 0.0, "PostgreSQL": 0.0}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
            comm = Path(stat).with_name("comm").read_text().strip()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        pid, ppid = int(stat.split("/")[2]), int(fields[1])
        used = (int(fields[11]) + int(fields[12])) / tick
        if pid == collector:
            out["collector"] += used
        elif ppid == collector:
            out["judging worker"] += used
        elif comm.startswith("postgres"):
            out["PostgreSQL"] += used
    return out


class Postgres:
    def __init__(self, extra: str = "") -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            sys.exit("PostgreSQL server binaries not found (scripts/install-lab-deps.sh)")
        self.bindir = Path(found[-1]).parent
        self.tmp = Path(tempfile.mkdtemp(prefix="bw-bench-pg-"))
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.run_as: list[str] = []
        if os.getuid() == 0:
            self.user = "postgres"
            self.run_as = ["runuser", "-u", "postgres", "--"]
            owner = pwd.getpwnam("postgres")
            os.chown(self.tmp, owner.pw_uid, owner.pw_gid)
        self.port = free_port()
        data = self.tmp / "data"
        subprocess.run([*self.run_as, str(self.bindir / "initdb"), "-D", str(data), "-U",
                        self.user, "--auth=trust", "-E", "UTF8", "--locale=C"],
                       check=True, capture_output=True)
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} "
                f"-c unix_socket_directories={self.tmp} -c max_connections=200 {extra}")
        subprocess.run([*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(data), "-l",
                        str(self.tmp / "log"), "-o", opts, "-w", "start"], check=True,
                       capture_output=True)
        self.data = data

    def url(self) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        subprocess.run([*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m",
                        "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


def batch(vantage: str, n: int) -> tuple[bytes, int]:
    """One run of ``n`` measurements (a quarter each DNS, TCP, TLS, HTTP) with a verdict each
    and a service verdict, gzip-encoded as a vantage sends it."""
    run = Run(id=new_id(), vantage=vantage, started_at=T0, status="complete", finished_at=T0,
              summary={"measurements": n})
    rows, verdicts = [], []
    for i in range(n):
        kind = ("dns", "tcp", "tls", "http")[i % 4]
        host = f"site{i}.example"
        if kind == "dns":
            obs: Any = DNSObservation(resolver="udp://192.0.2.53:53", transport="udp", qname=host,
                                      qtype="A", t0=0.0, responses=(DNSResponse(
                                          t=0.02, source="192.0.2.53:53", id=i, flags=0x8180,
                                          rcode="NOERROR", answers=(DNSAnswer(
                                              rtype="A", value="198.51.100.7", ttl=300),)),))
            target = Target(service=host, probe="dns", host=host, resolver="udp://192.0.2.53")
        elif kind == "tcp":
            obs = TCPObservation(address="198.51.100.7", port=443, t0=0.0, t=0.03)
            target = Target(service=host, probe="tcp", host=host, port=443)
        elif kind == "tls":
            obs = TLSObservation(address="198.51.100.7", port=443, sni=host, t0=0.0, t=0.08,
                                 verified=True, version="TLSv1.3",
                                 cipher="TLS_AES_128_GCM_SHA256", cert_subject=host,
                                 cert_sans=(host, f"www.{host}"),
                                 peer_chain_sha256=("ab" * 32, "cd" * 32))
            target = Target(service=host, probe="tls", host=host, port=443)
        else:
            obs = HTTPObservation(url=f"https://{host}/", t0=0.0, t=0.2, status=200,
                                  body_length=12345, title="A page")
            target = Target(service=host, probe="http", host=host, url=f"https://{host}/")
        m = Measurement(id=new_id(), run_id=run.id, vantage=vantage, target=target,
                        probe_version="1", started_at=T0, runtime_s=0.2, observations=(obs,))
        rows.append(json_row(measurement_to_row(m)))
        v = verdict_to_row(Verdict(verdict="ok", rule_id="ok.no_failure", analyzer_version="8",
                                   service=host, measurement_id=m.id), run_id=run.id,
                           created_at=T0)
        v.pop("created_at")
        verdicts.append(v)
    return encode(vantage, [json_row(run_to_row(run))], rows, verdicts), n


# A realistic history already in the database (--prefill): runs of 200 measurements of the
# benchmark's 200 services by 50 earlier vantages, spread over the 30 days before T0, with
# time-ordered ids (as blockwatch's, UUIDv7) and one verdict each, generated by PostgreSQL.
_ID = ("substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-7' || substr(h, 14, 3) || '-8' || "
       "substr(h, 18, 3) || '-' || substr(h, 21, 12)")
PREFILL_RUNS = f"""
INSERT INTO runs (id, vantage, country, started_at, finished_at, status, software_version,
                  config_hash, baseline, summary)
SELECT {_ID}, 'history' || lpad((r % 50)::text, 2, '0'), 'ZZ', at, at, 'complete', 'bench',
       '', '{{}}', '{{"measurements": 200}}'
FROM (SELECT r, CAST(:t0 AS timestamptz)
                - make_interval(secs => (CAST(:runs AS bigint) - r) * 2592000.0 / :runs) AS at,
             lpad(to_hex((extract(epoch FROM CAST(:t0 AS timestamptz)) * 1000)::bigint
                         - 2592000000 + (r * 2592000000 / CAST(:runs AS bigint))::bigint),
                  12, '0')
             || md5(r::text) AS h
      FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS r) AS g
"""
PREFILL_MEASUREMENTS = f"""
INSERT INTO measurements (id, run_id, vantage, service, probe, probe_version, target,
                          target_json, started_at, runtime_s, observations, queued_s)
SELECT {_ID.replace("h,", "mh,")}, r.id, r.vantage, 'site' || i || '.example', 'tls', '4',
       'site' || i || '.example:443',
       jsonb_build_object('service', 'site' || i || '.example', 'probe', 'tls',
                          'host', 'site' || i || '.example', 'port', 443),
       r.started_at, 0.08,
       jsonb_build_array(jsonb_build_object(
           'kind', 'tls', 'address', '198.51.100.7', 'port', 443,
           'sni', 'site' || i || '.example', 't0', 0.0, 't', 0.08, 'verified', true,
           'version', 'TLSv1.3', 'cipher', 'TLS_AES_128_GCM_SHA256',
           'cert_subject', 'site' || i || '.example',
           'peer_chain_sha256', jsonb_build_array(repeat('ab', 32), repeat('cd', 32)))), 0
FROM (SELECT id, vantage, started_at, substr(replace(id, '-', ''), 1, 12) AS p
      FROM runs WHERE vantage LIKE 'history%' AND started_at >= :since
      AND started_at < :until) AS r,
     LATERAL (SELECT i, r.p || lpad(to_hex(i), 4, '0') || md5(r.id || i)::text AS mh
              FROM generate_series(0, 199) AS i) AS m
"""
PREFILL_VERDICTS = """
INSERT INTO verdicts (run_id, measurement_id, service, verdict, layer, rule_id,
                      analyzer_version, evidence, details, created_at)
SELECT run_id, id, service, 'ok', NULL, 'ok.no_failure', '9', '', '{}', started_at
FROM measurements WHERE vantage LIKE 'history%' AND started_at >= :since
AND started_at < :until
"""


def prefill(url: str, measurements: int) -> None:
    """About ``measurements`` measurements (and as many verdicts) of earlier runs, generated
    in PostgreSQL a day at a time, then VACUUM ANALYZE: the tables as a collector that ran
    for a while has them, for ingestion measured on top of them."""
    from sqlalchemy import create_engine, text

    runs = max(1, measurements // 200)
    engine = create_engine(url)
    began = time.monotonic()
    with engine.begin() as conn:
        conn.execute(text("SET synchronous_commit = off"))
        for first in range(1, runs + 1, 50_000):
            conn.execute(text(PREFILL_RUNS), {"t0": T0, "runs": runs, "first": first,
                                              "last": min(runs, first + 49_999)})
    day = dt.timedelta(days=1)
    for k in range(30, 0, -1):
        since, until = T0 - k * day, T0 - (k - 1) * day
        with engine.begin() as conn:
            conn.execute(text("SET synchronous_commit = off"))
            conn.execute(text(PREFILL_MEASUREMENTS), {"since": since, "until": until})
            conn.execute(text(PREFILL_VERDICTS), {"since": since, "until": until})
        print(f"  prefill: day {31 - k} of 30 ({time.monotonic() - began:.0f} s)", flush=True)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
        n = conn.execute(text("SELECT count(*) FROM measurements")).scalar_one()
        size = conn.execute(text("SELECT pg_size_pretty(pg_database_size(current_database()))"
                                 )).scalar_one()
    engine.dispose()
    print(f"prefilled {n:,} measurements and as many verdicts ({size}) in "
          f"{time.monotonic() - began:.0f} s", flush=True)


class Load:
    """Submitters sending pre-built batches to the collector; what they saw."""

    def __init__(self, base: str, secrets: dict[str, str],
                 bodies: dict[str, list[tuple[bytes, int]]]) -> None:
        self.base, self.secrets, self.bodies = base, secrets, bodies
        self.latencies: list[float] = []
        self.due: list[float] = []  # when each answered batch was due (time.monotonic())
        self.sent = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def drive(self, seconds: float, rate: float | None) -> float:
        """Every submitter at once for ``seconds``: as fast as the answers come (``rate``
        None: a closed loop, the collector's capacity), or each on a fixed schedule so that
        all together offer ``rate`` measurements a second (an open loop: the latency a
        volunteer sees at that load). Latency is from the moment a batch was due, not sent,
        so a collector that falls behind is not flattered (no coordinated omission)."""
        names = list(self.bodies)
        # the clients first (an httpx.Client loads the CA bundle: 50 of them took about a
        # second of the submitters' CPU, which delayed the first batches by as much), then
        # every submitter starts at once
        clients = {name: httpx.Client(base_url=self.base, timeout=60, headers={
            "Authorization": f"Bearer {self.secrets[name]}", "Content-Encoding": "gzip"})
            for name in names}
        ready = threading.Barrier(len(names) + 1)
        stop = 0.0

        def submitter(i: int, name: str) -> None:
            queue = self.bodies[name]
            per = queue[0][1]
            every = len(names) * per / rate if rate else 0.0
            ready.wait()
            due = time.monotonic() + every * i / len(names)  # spread the phases
            end = due + seconds if rate else stop  # each offers its share for `seconds`
            with clients[name] as client:
                while queue:
                    if rate:
                        time.sleep(max(0.0, due - time.monotonic()))
                    else:
                        due = time.monotonic()
                    if due >= end:
                        return
                    body, n = queue.pop()
                    answer = client.post("/api/v1/submit", content=body)
                    took = time.monotonic() - due
                    due += every
                    with self.lock:
                        if answer.is_success:
                            self.latencies.append(took)
                            self.due.append(due - every)
                            self.sent += n
                        else:
                            self.errors.append(f"{answer.status_code} {answer.text[:100]}")

        threads = [threading.Thread(target=submitter, args=(i, n)) for i, n in enumerate(names)]
        for t in threads:
            t.start()
        started = time.monotonic()
        stop = started + seconds
        ready.wait()
        for t in threads:
            t.join()
        return time.monotonic() - started

    def report(self, title: str, wall: float) -> None:
        lat = self.latencies
        q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [0.0] * 99
        print(f"\n{title}: {self.sent:,} measurements acknowledged in {wall:.1f} s = "
              f"{self.sent / wall:,.0f} measurements/s")
        print(f"  submission latency: p50 {q[49] * 1000:.0f} ms, p90 {q[89] * 1000:.0f} ms, "
              f"p99 {q[98] * 1000:.0f} ms, max {max(lat, default=0) * 1000:.0f} ms "
              f"({len(lat)} batches); errors: {len(self.errors)}"
              f"{' (first: ' + self.errors[0] + ')' if self.errors else ''}")

    def worst(self, k: int) -> None:
        """The ``k`` slowest batches, when each was due (seconds into the phase): slow
        batches due together point at a stall of the whole service (a checkpoint, a pause),
        spread ones at queueing."""
        t0 = min(self.due, default=0.0)
        slow = sorted(zip(self.latencies, self.due, strict=True), reverse=True)[:k]
        print("  slowest: " + ", ".join(f"{lat * 1000:.0f} ms at {due - t0:.2f} s"
                                         for lat, due in sorted(slow, key=lambda x: x[1])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--submitters", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=15.0, help="of each phase")
    ap.add_argument("--per-batch", type=int, default=200)
    ap.add_argument("--controls", type=int, default=5, metavar="K",
                    help="of the submitters, K are control vantages (tokens added with "
                         "--control): the others' runs are judged against theirs")
    ap.add_argument("--rate", type=float, default=5000.0, metavar="N",
                    help="the open loop's offered load, measurements a second (0: skip it)")
    ap.add_argument("--prefill", type=int, default=0, metavar="N",
                    help="first fill the database with about N measurements of earlier runs "
                         "(and as many verdicts): ingestion into tables that are not empty")
    ap.add_argument("--worst", type=int, default=0, metavar="K",
                    help="also print the K slowest batches and when they were due")
    ap.add_argument("--log", metavar="FILE", help="the collector's log lines into FILE")
    ap.add_argument("--profile", metavar="SVG", help="record the collector with py-spy")
    ap.add_argument("--pg-options", default="", metavar="OPTS",
                    help="extra postgres options, e.g. '-c synchronous_commit=off' (then a 2xx "
                         "is no longer a commit on disk: for finding bottlenecks only)")
    args = ap.parse_args()
    pg = Postgres(args.pg_options)
    try:
        with open_store(pg.url()) as store:
            names = [f"vantage{i:02d}" for i in range(args.submitters)]
            secrets = {n: tokens.add(store, n, control=i < args.controls)
                       for i, n in enumerate(names)}
        if args.prefill:
            prefill(pg.url(), args.prefill)
        # enough batches for each phase at 10,000 measurements a second (twice the goal)
        per = max(4, int(10_000 * args.seconds / args.per_batch / args.submitters) + 1)
        print(f"building {2 * per * args.submitters} batches of {args.per_batch} "
              "measurements...", flush=True)
        # the open loop first: the steady state, with the judging worker keeping up, before the
        # closed loop saturates everything (and leaves the worker a backlog)
        phases = [args.rate, None] if args.rate else [None]
        loads = {rate: Load("", secrets, {n: [batch(n, args.per_batch) for _ in range(per)]
                                          for n in names}) for rate in phases}
        port = free_port()
        log = open(args.log, "wb") if args.log else subprocess.DEVNULL  # noqa: SIM115
        server = subprocess.Popen([BLOCKWATCH, "collector", "serve", "--db", pg.url(),
                                   "--port", str(port), "--rate", "10000"],
                                  stdout=log, stderr=log)
        base = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).is_success:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        spy = None
        if args.profile:
            spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record",
                                    "-o", args.profile, "-f", "raw", "-p", str(server.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        print(f"{args.submitters} submitters, {args.per_batch} measurements a batch, "
              f"{args.seconds:g} s a phase, PostgreSQL with fsync and synchronous_commit on "
              "(a 2xx is a commit on disk)")
        cpu0 = os.times()
        tree0 = cpu_by_process(server.pid)
        sent = 0
        for rate, load in loads.items():
            load.base = base
            wall = load.drive(args.seconds, rate)
            if rate:  # the batches due in each submitter's own window (their phases are
                # spread), each standing for one interval of its schedule; every one of them
                # was answered (see errors)
                wall = len(load.latencies) * args.per_batch / rate
            load.report("closed loop (each submitter sends its next batch when the last is "
                        "answered: the collector's capacity)" if rate is None else
                        f"open loop at {rate:,.0f} measurements/s offered (each submitter on "
                        "a schedule)", wall)
            if args.worst:
                load.worst(args.worst)
            sent += load.sent
            time.sleep(2)
        cpu = os.times()
        tree = cpu_by_process(server.pid)
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        server.terminate()
        server.wait(60)
        with open_store(pg.url()) as store, store.engine.connect() as conn:
            from sqlalchemy import text

            # the submitted ones (not the --prefill history)
            stored = conn.execute(text("SELECT count(*), count(DISTINCT id) FROM measurements "
                                       "WHERE vantage NOT LIKE 'history%'")).one()
            runs = conn.execute(text("SELECT count(*) FROM runs "
                                     "WHERE vantage NOT LIKE 'history%'")).scalar_one()
            judged = conn.execute(text(
                "SELECT count(DISTINCT run_id) FROM verdicts "
                "WHERE details->>'judged_by' = 'collector'")).scalar_one()
        print(f"\nin PostgreSQL: {stored[0]:,} measurements ({stored[1]:,} distinct; "
              f"{sent:,} acknowledged)")
        print(f"judged by the collector's worker by the end (it stops after at most 10 s more): "
              f"{judged} of {runs} runs")
        print(f"this process (the submitters) used {cpu.user - cpu0.user:.1f} s of CPU; "
              f"2 cores shared with the collector and PostgreSQL")
        used = {k: tree.get(k, 0.0) - tree0.get(k, 0.0) for k in tree}
        print("CPU per 1,000 measurements acknowledged: " + ", ".join(
            f"{k} {v / max(sent, 1) * 1e6:.0f} ms" for k, v in sorted(used.items())))
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
