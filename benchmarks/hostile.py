"""Benchmark: `blockwatch run` against hostile servers on loopback (issue #15), measured as a
child process with os.wait4 (wall time, peak RSS) and by what it stored.

    .venv/bin/python benchmarks/hostile.py [--gib 1]

The servers (threads of this process, 127.0.0.1 only):

* HTTP: ``/gzip`` a single gzip layer over ``--gib`` GiB of zeros (about 1 MiB sent per GiB),
  ``/gzip2`` the same gzipped twice (``Content-Encoding: gzip, gzip``, a few KiB sent),
  ``/deflate`` raw deflate, ``/endless`` an endless identity body, ``/drip`` a body trickled one
  byte a second (slowloris in reverse);
* DNS (UDP): every query for ``flood.test`` answered 5,000 times.

One service per case; the run uses blockwatch's default timeouts except HTTP's (5 s, so the
drip ends sooner). Prints each measurement's failure, runtime and stored bytes, the run's
wall time and peak RSS, and the goals (each case within its timeouts plus a second, peak RSS
<= 150 MB, <= 1 MB stored per measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dns_server import Behaviour, DNSServer  # the tests' real DNS server

BLOCKWATCH = str(Path(sys.executable).with_name("blockwatch"))


def deflate(gib: float, wbits: int) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, wbits)
    chunk = bytes(2**20)
    return b"".join(c.compress(chunk) for _ in range(int(gib * 1024))) + c.flush()


def bodies(gib: float) -> dict[str, tuple[str, bytes]]:
    single = deflate(gib, 16 + zlib.MAX_WBITS)
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return {"gzip": ("gzip", single),
            "gzip2": ("gzip, gzip", c.compress(single) + c.flush()),
            "deflate": ("deflate", deflate(gib, -zlib.MAX_WBITS))}


def serve_http(port_box: list[int], ready: threading.Event, gib: float) -> None:
    sent = bodies(gib)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            while (await reader.readline()).strip():
                pass
            path = line.split()[1].decode().strip("/") if len(line.split()) > 1 else ""
            if path in sent:
                coding, body = sent[path]
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n"
                             f"Content-Encoding: {coding}\r\n\r\n".encode() + body)
            elif path == "endless":
                writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
                while True:
                    writer.write(b"x" * 65536)
                    await writer.drain()
            elif path == "drip":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
                while True:
                    writer.write(b"x")
                    await writer.drain()
                    await asyncio.sleep(1)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(client, "127.0.0.1", 0)
        port_box.append(server.sockets[0].getsockname()[1])
        ready.set()
        await server.serve_forever()

    asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0, help="GiB each bomb decodes to")
    args = ap.parse_args()
    print(f"building bombs of {args.gib:g} GiB...", flush=True)
    port_box: list[int] = []
    ready = threading.Event()
    threading.Thread(target=serve_http, args=(port_box, ready, args.gib), daemon=True).start()
    ready.wait(300)
    port = port_box[0]
    flood = Behaviour(addresses=("127.0.0.1",), flood=5000)
    with DNSServer({"flood.test": flood, "bomb.test": Behaviour(addresses=("127.0.0.1",))}
                   ) as dns, tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "r.db"
        services = "".join(
            f'[[services]]\nname = "{p}"\nurls = ["http://bomb.test:{port}/{p}"]\n\n'
            for p in ("gzip", "gzip2", "deflate", "endless", "drip"))
        config = Path(tmp) / "bw.toml"
        config.write_text(f"""consent = true
[storage]
url = "sqlite:///{db}"
[timeouts]
http = 5.0
[dns]
resolvers = ["{dns.udp}"]
controls = []
[probes]
scope = ["127.0.0.0/8"]
probes = ["dns", "http"]
services = ["gzip", "gzip2", "deflate", "endless", "drip", "flood"]
[baseline]
endpoints = ["127.0.0.1:{port}"]
{services}[[services]]
name = "flood"
domains = ["flood.test"]
""")
        started = time.monotonic()
        proc = subprocess.Popen([BLOCKWATCH, "run", "--config", str(config), "--quiet"])
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        rows = sqlite3.connect(db).execute(
            "SELECT service, probe, failure, runtime_s, length(observations) FROM measurements "
            "ORDER BY service, probe").fetchall()
    print(f"\n{'service':<9} {'probe':<5} {'runtime':>8} {'stored':>9}  failure")
    for service, probe, failure, runtime, size in rows:
        print(f"{service:<9} {probe:<5} {runtime:>7.1f}s {size:>8,}B  {failure or '-'}")
    peak = usage.ru_maxrss / 1024
    biggest = max(r[4] for r in rows)
    slowest = max(r[3] for r in rows)
    print(f"\nexit status {os.waitstatus_to_exitcode(status)}; wall {wall:.1f} s; peak RSS "
          f"{peak:.0f} MiB (goal <= 150); largest measurement stored {biggest:,} bytes (goal "
          f"<= 1 MB); slowest measurement {slowest:.1f} s (goal: its timeouts, dns 4 + tcp 10 "
          f"+ tls 10 + http 5 at most, plus 1)")
    print(f"command: {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
