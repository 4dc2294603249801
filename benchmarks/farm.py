"""The target farm of benchmarks/sweep.py: N web sites inside a private network namespace.

Everything here runs inside a network namespace that benchmarks/sweep.py created for itself
(``unshare --net --mount``): it has only ``lo``, no route out, and disappears with the process.
Nothing in this module is meant to run anywhere else; ``check_private_namespace`` refuses to
set anything up when an interface other than ``lo`` is visible.

* Addresses: the whole prefix 10.77.0.0/16 is made local with one AnyIP route (``ip route add
  local 10.77.0.0/16 dev lo``), so a server bound to 0.0.0.0 answers on every address of it.
  10.77.0.0/24 is infrastructure (10.77.0.53: the DNS server, 10.77.0.1: blockwatch's
  baseline endpoint); site i (1-based) is ``site-<i>.farm.test`` at 10.77.X.Y with X >= 1 and
  Y in 1..254 (no .0 and no .255): at most 255 * 254 = 64,770 sites.
* DNS: a real dnsmasq serving the names from a hosts file (A only: AAAA queries get NOERROR
  without an answer, unknown names in farm.test get NXDOMAIN, anything else REFUSED: nothing
  is forwarded). /etc/resolv.conf is bind-mounted (in the private mount namespace) to point at
  it, so ``system`` resolvers find it.
* HTTP: one lean asyncio.Protocol server on 0.0.0.0:80 answering every request after a fixed
  delay with ``200 OK``, a ~1 KB HTML page with a <title>, ``Connection: close``
  (``python farm.py http --delay S`` runs it).
* Blackholes: nftables ``table inet farm`` drops TCP to a seeded random set of site addresses
  in the input hook (which loopback traffic traverses), so a connect to them times out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "10.77.0.0/16"
DNS_IP = "10.77.0.53"
BASELINE_IP = "10.77.0.1"  # in the infrastructure /24: never a site, never blackholed
DOMAIN = "farm.test"
HTTP_PORT = 80
MAX_SITES = 255 * 254
SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


def name(i: int) -> str:
    return f"site-{i}.{DOMAIN}"


def address(i: int) -> str:
    """Site i's address (1-based): 10.77.1.1, 10.77.1.2, ..., 10.77.1.254, 10.77.2.1, ..."""
    if not 1 <= i <= MAX_SITES:
        raise ValueError(f"site index {i} outside 1..{MAX_SITES}")
    k = i - 1
    return f"10.77.{1 + k // 254}.{1 + k % 254}"


def blackholed(n: int, fraction: float, seed: int) -> frozenset[int]:
    """The sites (1-based indexes) whose address drops TCP: round(n * fraction) of them, the
    same for the same n, fraction and seed."""
    return frozenset(random.Random(seed).sample(range(1, n + 1), round(n * fraction)))


def tool(cmd: str) -> str | None:
    """The path of a system tool, also where sudo's PATH may not look."""
    found = shutil.which(cmd)
    if found:
        return found
    for d in SBIN:
        p = Path(d) / cmd
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the benchmark process dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: "
                           f"{(done.stderr or done.stdout).strip()}")


# --- the namespace ----------------------------------------------------------------------------


def check_private_namespace() -> None:
    """Refuse to touch a network namespace that is not the fresh one we made: it must have no
    interface but ``lo`` and no nftables ruleset."""
    interfaces = sorted(n for _, n in socket.if_nameindex())
    if interfaces != ["lo"]:
        raise RuntimeError(f"not inside a fresh network namespace (interfaces: "
                           f"{', '.join(interfaces)}); refusing to change anything")
    ruleset = subprocess.run([tool("nft") or "nft", "list", "ruleset"], capture_output=True,
                             text=True).stdout.strip()
    if ruleset:
        raise RuntimeError("the network namespace already has an nftables ruleset; refusing")


def _sysctl(key: str, value: str) -> None:
    """A per-namespace sysctl (these live in the namespace, the host's are not changed)."""
    with contextlib.suppress(OSError):
        Path("/proc/sys", *key.split(".")).write_text(value)


def setup_namespace(workdir: Path) -> None:
    """lo up, 10.77.0.0/16 local (AnyIP), listen queues and ports for thousands of flows, and
    /etc/resolv.conf pointing at the farm's DNS server (bind mount, private mount namespace)."""
    check_private_namespace()
    ip = tool("ip") or "ip"
    run(ip, "link", "set", "lo", "up")
    run(ip, "route", "add", "local", PREFIX, "dev", "lo")
    # dnsmasq --bind-interfaces binds addresses that an interface carries
    run(ip, "addr", "add", f"{DNS_IP}/32", "dev", "lo")
    # all per network namespace (the host keeps its own values)
    _sysctl("net.core.somaxconn", "65535")
    _sysctl("net.ipv4.tcp_max_syn_backlog", "65535")
    _sysctl("net.ipv4.ip_local_port_range", "1024 65000")
    resolv = workdir / "resolv.conf"
    resolv.write_text(f"# blockwatch benchmark farm (private mount namespace)\n"
                      f"nameserver {DNS_IP}\n")
    if not Path("/etc/resolv.conf").exists():
        Path("/etc/resolv.conf").touch()  # only when missing: an empty mount point
    run(tool("mount") or "mount", "--bind", str(resolv), "/etc/resolv.conf")
    # the file descriptor limit is inherited by every child: a burst of N flows needs ~2N
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- dnsmasq's receive buffer -----------------------------------------------------------------

DNSMASQ_RCVBUF = 32 << 20
_SYS_PIDFD_OPEN, _SYS_PIDFD_GETFD = 434, 438  # the same number on every architecture
_SO_RCVBUFFORCE = 33


def raise_rcvbuf(pid: int, size: int) -> str:
    """Give every socket of process ``pid`` (our dnsmasq) a ``size`` receive buffer.

    dnsmasq leaves SO_RCVBUF alone, so its UDP socket gets net.core.rmem_default (208 KiB: a
    few hundred queued queries), and that sysctl cannot be changed inside a network namespace
    on this kernel (the host's must not be). Instead the socket itself is enlarged: pidfd_getfd
    (Linux 5.6) copies dnsmasq's descriptors into this process, SO_RCVBUFFORCE (root) sets the
    buffer of the shared socket, and the copy is closed. Returns what was done, for the log."""
    libc = ctypes.CDLL(None, use_errno=True)
    fds = []
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(entry).startswith("socket:"):
                fds.append(int(entry.name))
    pidfd = libc.syscall(_SYS_PIDFD_OPEN, pid, 0)
    if pidfd < 0:
        return f"not raised (pidfd_open: {os.strerror(ctypes.get_errno())})"
    done = 0
    try:
        for fd in fds:
            local = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
            if local < 0:
                return f"not raised (pidfd_getfd: {os.strerror(ctypes.get_errno())})"
            sock = None
            try:
                sock = socket.socket(fileno=local)
                if sock.type == socket.SOCK_DGRAM:
                    sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
                    done += 1
            except OSError:
                pass
            finally:  # closes our copy only: dnsmasq's descriptor stays open
                if sock is not None:
                    sock.close()
                else:
                    os.close(local)
    finally:
        os.close(pidfd)
    return f"{done} UDP socket(s) given a {size >> 20} MiB receive buffer"


# --- counters: whether the farm dropped anything ---------------------------------------------


def kernel_counters() -> dict[str, int]:
    """This namespace's UDP receive-buffer drops and TCP listen-queue overflows (a query or a
    SYN the farm, or a client, dropped because it could not keep up)."""
    out: dict[str, int] = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        with contextlib.suppress(OSError):
            lines = Path(path).read_text().splitlines()
            for head, values in zip(lines[::2], lines[1::2], strict=False):
                proto, keys = head.split(":", 1)
                for k, v in zip(keys.split(), values.split(":", 1)[1].split(), strict=False):
                    out[f"{proto}.{k}"] = int(v)
    wanted = ("Udp.RcvbufErrors", "TcpExt.ListenOverflows", "TcpExt.ListenDrops")
    return {k: out.get(k, 0) for k in wanted}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the farm -----------------------------------------------------------------------------------


@dataclass
class Farm:
    """dnsmasq + the HTTP server + the nftables blackholes, for sites 1..n."""

    n: int
    black: frozenset[int]
    delay: float
    workdir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    rcvbuf: str = ""  # what raise_rcvbuf did to dnsmasq's sockets

    def start(self) -> None:
        if not 1 <= self.n <= MAX_SITES:
            raise ValueError(f"-n must be 1..{MAX_SITES}")
        hosts = self.workdir / "farm.hosts"
        hosts.write_text("".join(f"{address(i)} {name(i)}\n" for i in range(1, self.n + 1)))
        self._nftables()
        dnsmasq = tool("dnsmasq") or "dnsmasq"
        self._spawn("dnsmasq", [
            dnsmasq, "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            f"--local=/{DOMAIN}/", f"--addn-hosts={hosts}", f"--listen-address={DNS_IP}",
            "--bind-interfaces", "--port=53",
            # hosts-file names are kept apart from the cache: cache-size only bounds what would
            # be forwarded (nothing), so 0 costs nothing and takes no memory
            "--cache-size=0", "--log-facility=-",
        ])
        self._spawn("http", [sys.executable, str(Path(__file__).resolve()), "http",
                             "--delay", str(self.delay), "--port", str(HTTP_PORT)])
        deadline = time.monotonic() + 15
        while not (self._dns_ready() and self._http_ready()):
            for label, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{label} exited ({p.returncode}): {self.log(label)}")
            if time.monotonic() > deadline:
                raise RuntimeError("the farm did not come up within 15 s: "
                                   f"{self.log('dnsmasq')} {self.log('http')}")
            time.sleep(0.05)
        self.rcvbuf = raise_rcvbuf(self.procs["dnsmasq"].pid, DNSMASQ_RCVBUF)

    def _nftables(self) -> None:
        elements = ", ".join(address(i) for i in sorted(self.black))
        ruleset = ("table inet farm {\n"
                   "  set blackhole {\n    type ipv4_addr\n"
                   + (f"    elements = {{ {elements} }}\n" if elements else "")
                   + "  }\n"
                   "  chain input {\n"
                   "    type filter hook input priority filter; policy accept;\n"
                   "    ip daddr @blackhole meta l4proto tcp drop\n"
                   "  }\n}\n")
        path = self.workdir / "farm.nft"
        path.write_text(ruleset)
        run(tool("nft") or "nft", "-f", str(path))

    def _spawn(self, label: str, argv: list[str]) -> None:
        log = open(self.workdir / f"{label}.log", "wb")  # noqa: SIM115 (kept for the process)
        self.procs[label] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT,
                                             preexec_fn=die_with_parent)
        log.close()

    def log(self, label: str) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / f"{label}.log").read_text(errors="replace")[-2000:].strip()
        return ""

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs.values())

    def cpu(self) -> dict[str, float]:
        return {label: cpu_seconds(p.pid) for label, p in self.procs.items()}

    def _dns_ready(self) -> bool:
        try:
            return dns_query(name(1), "A", timeout=0.2)[1] == [address(1)]
        except (OSError, TimeoutError):
            return False

    def _http_ready(self) -> bool:
        try:
            with socket.create_connection((BASELINE_IP, HTTP_PORT), timeout=0.2):
                return True
        except OSError:
            return False

    # --- checks: the farm does what the benchmark assumes ---------------------------------

    def check(self, burst: bool = True) -> list[str]:
        """Assert the farm's behaviour; return lines describing what was measured."""
        out: list[str] = []
        first_live = next((i for i in range(1, self.n + 1) if i not in self.black), None)
        last = self.n
        rc, addrs = dns_query(name(last), "A")
        _expect(rc == "NOERROR" and addrs == [address(last)], f"A {name(last)}: {rc} {addrs}")
        rc, addrs = dns_query(name(1), "AAAA")
        _expect(rc == "NOERROR" and addrs == [], f"AAAA {name(1)}: {rc} {addrs}")
        rc, addrs = dns_query(f"site-{self.n + 1}.{DOMAIN}", "A")
        _expect(rc == "NXDOMAIN", f"unknown name: {rc} {addrs}")
        out.append("dns: A answered, AAAA NOERROR without answer, unknown name NXDOMAIN; "
                   f"dnsmasq: {self.rcvbuf}")
        # AnyIP: a server bound to 0.0.0.0 answers on any address of the prefix
        if first_live is not None:
            status, body = http_get(address(first_live), name(first_live))
            _expect(status == 200 and b"<title>" in body, f"GET {address(first_live)}: {status}")
        status, _ = http_get(BASELINE_IP, "baseline")
        _expect(status == 200, f"GET {BASELINE_IP}: {status}")
        out.append(f"http: 200 from {BASELINE_IP} and from a site address (AnyIP on {PREFIX})")
        if self.black:
            b = min(self.black)
            t0 = time.perf_counter()
            try:
                socket.create_connection((address(b), HTTP_PORT), timeout=0.3).close()
                _expect(False, f"blackholed {address(b)} accepted a connection")
            except TimeoutError:
                pass
            out.append(f"blackhole: connect to {address(b)} timed out "
                       f"({time.perf_counter() - t0:.1f} s); {len(self.black)} addresses "
                       "in the nft set")
        if burst:
            out += dns_burst(self.n)
        return out


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise RuntimeError(f"farm check failed: {what}")


def dns_query(qname: str, rdtype: str, timeout: float = 2.0) -> tuple[str, list[str]]:
    import dns.message
    import dns.query
    import dns.rcode

    r = dns.query.udp(dns.message.make_query(qname, rdtype), DNS_IP, timeout=timeout)
    return dns.rcode.to_text(r.rcode()), [rd.to_text() for rrset in r.answer for rd in rrset]


def http_get(ip: str, host: str, timeout: float = 5.0) -> tuple[int, bytes]:
    with socket.create_connection((ip, HTTP_PORT), timeout=timeout) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data


def dns_burst(n: int) -> list[str]:
    """How dnsmasq copes with bursts: (1) every name's A query blasted from one socket as fast
    as Python sends, (2) every name concurrently with dns.asyncquery.udp (one socket per query,
    the reference prober's pattern). Losses are queries dropped at dnsmasq's receive buffer."""
    import dns.asyncquery
    import dns.message

    out: list[str] = []
    wires = []
    for i in range(1, n + 1):
        q = dns.message.make_query(name(i), "A")
        q.id = i % 65536
        wires.append(q.to_wire())
    before = kernel_counters()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        with contextlib.suppress(OSError):  # SO_RCVBUFFORCE (root): our side never drops
            s.setsockopt(socket.SOL_SOCKET, 33, max(1 << 20, n * 4096))
        t0 = time.perf_counter()
        for w in wires:
            s.sendto(w, (DNS_IP, 53))
        sent = time.perf_counter() - t0
        s.settimeout(0.5)
        got, t_last = 0, t0
        with contextlib.suppress(TimeoutError):
            while True:
                s.recv(4096)
                got += 1
                t_last = time.perf_counter()
    drops = kernel_counters()["Udp.RcvbufErrors"] - before["Udp.RcvbufErrors"]
    rmem = "?"
    with contextlib.suppress(OSError, ValueError):
        rmem = f"{int(Path('/proc/sys/net/core/rmem_default').read_text()) // 1024} KiB"
    out.append(f"dns blast (one socket, {n} queries sent in {sent * 1000:.0f} ms = "
               f"{n / max(sent, 1e-9) / 1000:.0f}k/s): {got} answered in "
               f"{(t_last - t0) * 1000:.0f} ms ({got / max(t_last - t0, 1e-9) / 1000:.0f}k "
               f"answers/s), {drops} dropped at a receive buffer (rmem_default {rmem})")

    async def burst() -> tuple[int, float]:
        async def one(i: int) -> bool:
            try:
                await dns.asyncquery.udp(dns.message.make_query(name(i), "A"), DNS_IP,
                                         timeout=2.0)
                return True
            except Exception:
                return False

        t0 = time.perf_counter()
        ok = await asyncio.gather(*(one(i) for i in range(1, n + 1)))
        return sum(ok), time.perf_counter() - t0

    time.sleep(0.2)
    before = kernel_counters()
    got, took = asyncio.run(burst())
    drops = kernel_counters()["Udp.RcvbufErrors"] - before["Udp.RcvbufErrors"]
    out.append(f"dns burst (dns.asyncquery.udp x {n}, all concurrent): {got}/{n} answered "
               f"in {took:.2f} s, {drops} dropped at a receive buffer")
    if got < n:
        raise RuntimeError(f"farm check failed: dnsmasq answered {got} of {n} concurrent "
                           "queries (the farm would be the bottleneck)")
    return out


# --- the HTTP server ----------------------------------------------------------------------------


def page() -> bytes:
    filler = " ".join(["The quick brown fox jumps over the lazy dog."] * 20)
    body = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>blockwatch benchmark farm</title></head>\n<body><h1>It works</h1>\n"
            f"<p>{filler}</p>\n</body></html>\n").encode()
    head = (f"HTTP/1.1 200 OK\r\nServer: farm\r\nContent-Type: text/html; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return head + body


def serve_http(delay: float, port: int, hosts: Sequence[str] = ("0.0.0.0",)) -> None:
    """Answer every request on ``port`` after ``delay`` seconds, then close. One process,
    one event loop, no framework: each connection costs one Protocol object and one timer."""
    response = page()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    class Handler(asyncio.Protocol):
        __slots__ = ("buf", "timer", "transport")

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            self.buf = b""
            self.timer: asyncio.TimerHandle | asyncio.Handle | None = None

        def data_received(self, data: bytes) -> None:
            if self.timer is not None:
                return
            self.buf += data
            if b"\r\n\r\n" in self.buf:
                self.timer = (loop.call_later(delay, self.respond) if delay > 0
                              else loop.call_soon(self.respond))
            elif len(self.buf) > 65536:
                self.transport.close()

        def respond(self) -> None:
            self.transport.write(response)
            self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.timer is not None:
                self.timer.cancel()

    loop = asyncio.new_event_loop()
    servers = [loop.run_until_complete(loop.create_server(Handler, h, port, backlog=65535,
                                                          reuse_address=True))
               for h in hosts]
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_signal_handler(signal.SIGINT, loop.stop)
    try:
        loop.run_forever()
    finally:
        for s in servers:
            s.close()


def main(argv: Iterable[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="farm helper (run by benchmarks/sweep.py)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("http", help="the farm's HTTP server")
    h.add_argument("--delay", type=float, default=0.05)
    h.add_argument("--port", type=int, default=HTTP_PORT)
    args = ap.parse_args(list(argv) if argv is not None else None)
    if args.cmd == "http":
        serve_http(args.delay, args.port)


if __name__ == "__main__":
    main()
