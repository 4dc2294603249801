"""Benchmark of the raw-packet ``trace`` probe: N loopback targets traced in one sweep.

Each target is its own loopback address (127.77.x.y), served by a server process that answers
after a fixed delay; one target in five never answers. Every target is traced (mode http: the
kernel's connection, the GET, raw sockets recording the SYN-ACK and any RST, and for the
targets that never answer the TTL-limited search): the cost of raw-packet evidence per target,
and of the shared capture under many concurrent flows. Needs CAP_NET_RAW (root). Prints the
wall time, CPU seconds per target and peak RSS of the sweeping process, and what the traces
saw. (The sweep engine against a reference prober is benchmarks/sweep.py.)

    sudo .venv/bin/python benchmarks/trace.py [-n 500] [--delay 0.2] [--timeout 2]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from blockwatch.probes.context import ProbeContext, Timeouts
from blockwatch.probes.model import Service, Target
from blockwatch.probes.scope import Scope
from blockwatch.scheduler.sweep import SweepSettings, sweep
from blockwatch.storage import open_store

PORT = 18080


def address(i: int) -> str:
    return f"127.77.{i // 250}.{i % 250 + 1}"


def hangs(local: str) -> bool:
    """One target in five (by its address) never answers."""
    _, _, x, y = (int(p) for p in local.split("."))
    return (x * 250 + y - 1) % 5 == 0


def serve(n: int, delay: float, ready: mp.synchronize.Event) -> None:  # type: ignore[name-defined]
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            if hangs(writer.get_extra_info("sockname")[0]):
                await asyncio.sleep(3600)
            await asyncio.sleep(delay)
            body = b"<html><title>bench</title>ok</html>"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        servers = [await asyncio.start_server(handle, address(i), PORT, backlog=64)
                   for i in range(n)]
        ready.set()
        await asyncio.gather(*(s.serve_forever() for s in servers))

    asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--delay", type=float, default=0.2, help="server delay per answer (s)")
    ap.add_argument("--timeout", type=float, default=2.0, help="probe HTTP timeout (s)")
    ap.add_argument("--concurrency", type=int, default=256, help="names at once")
    args = ap.parse_args()

    ready = mp.Event()
    server = mp.Process(target=serve, args=(args.n, args.delay, ready), daemon=True)
    server.start()
    if not ready.wait(60):
        sys.exit("server did not start")

    targets = [Target(service="bench", probe="trace", host=address(i), port=PORT,
                      options=(("mode", "http"),)) for i in range(args.n)]
    svc = Service(name="bench", title="bench", category="other")
    ctx = ProbeContext(scope=Scope.from_entries(["127.0.0.0/8"]),
                       timeouts=Timeouts(dns=1, tcp=args.timeout, tls=args.timeout,
                                         http=args.timeout))
    settings = SweepSettings(vantage="bench", concurrency=args.concurrency)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{tmp}/bench.db")
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        outcome = asyncio.run(sweep(store, [svc], targets, ctx, settings))
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        measured = list(store.measurements(run_id=outcome.run.id))
        store.close()
    server.terminate()
    from blockwatch.probes.model import RawObservation

    raws = [o for m in measured for o in m.observations if isinstance(o, RawObservation)]
    replies: dict[str, int] = {}
    for o in raws:
        replies[str(o.reply)] = replies.get(str(o.reply), 0) + 1
    longest = max((m.runtime_s for m in measured), default=0.0)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"trace replies      {replies} ({sum(bool(o.hops) for o in raws)} searched hops, "
          f"{sum(not o.capture for o in raws)} without capture)")
    print(f"targets            {args.n} ({replies.get('timeout', 0)} never answered)")
    print(f"stored             {len(measured)} measurements, run status {outcome.run.status}")
    print(f"wall time          {wall:.2f} s (the longest single trace: {longest:.2f} s)")
    print(f"cpu                {cpu:.2f} s ({cpu / args.n * 1000:.2f} ms per target)")
    print(f"peak rss           {rss_mb:.0f} MiB")


if __name__ == "__main__":
    main()
