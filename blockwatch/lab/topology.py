"""Namespaces, links, routes and processes of one lab.

::

    client (censored) --c0/down0-- censor (router, ISP resolver) --up0/s0-- server
    control (uncensored) --k0/k1---------------------------------------------- server

The lab is dual-stack: every link, namespace and service has an IPv6 address from the lab's ULA
prefix ``LAB_NET6`` beside its IPv4 one (:func:`v6`: 10.201.A.B is fd00:b10c:0:A::B), with
duplicate address detection off so every address is usable at once. The server namespace holds
every service address (one IPv4 and one IPv6 per service, on its loopback) and the "public"
resolver; the control client reaches it directly, never through the censor. Every
namespace is named ``<lab>-<role>`` so two labs never collide; the links are created directly
inside the namespaces (nothing ever exists in the host's namespace). Each step is recorded in
the manifest before it is taken.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from blockwatch.lab.state import LabError, Manifest, Proc, alive, proc_start

ROLES = ("client", "control", "censor", "server")
LAB_NET = "10.201.0.0/16"
# a ULA prefix of the lab's own (RFC 4193): never routed anywhere, and nothing outside the lab
# has an address in it; 10.201.A.B's twin is fd00:b10c:0:A::B (the digits read the same)
LAB_NET6 = "fd00:b10c::/48"
CLIENT, CENSOR_DOWN = "10.201.1.2", "10.201.1.1"  # the censor's address is the ISP resolver
CENSOR_UP, SERVER_UP = "10.201.2.1", "10.201.2.2"
CONTROL, SERVER_CONTROL = "10.201.3.2", "10.201.3.1"
PUBLIC_RESOLVER = "10.201.53.53"
SINKHOLE = "10.201.9.66"  # where poisoned/injected answers point: black-holed at the censor
SINKHOLE_NET = "10.201.9.0/24"
# no host has this address (it is on the censor-server link): a DNS query to it crosses the
# censor, and any answer was forged on the way ([dns] silent)
SILENT = "10.201.2.99"


def v6(address: str) -> str:
    """The IPv6 twin of a lab IPv4 address (10.201.A.B -> fd00:b10c:0:A::B)."""
    parts = address.split(".")
    if len(parts) != 4 or parts[:2] != ["10", "201"]:
        raise ValueError(f"{address} is not a lab IPv4 address (10.201.0.0/16)")
    return f"fd00:b10c:0:{int(parts[2])}::{int(parts[3])}"


SINKHOLE6 = v6(SINKHOLE)
SINKHOLE6_NET = "fd00:b10c:0:9::/64"

BINARIES = {  # binary -> Debian package
    "ip": "iproute2", "nft": "nftables", "iptables": "iptables", "dnsmasq": "dnsmasq-base",
    "nginx": "nginx-light", "openvpn": "openvpn", "unshare": "util-linux", "tor": "tor",
    "/usr/lib/ipsec/charon": "strongswan-charon", "microsocks": "microsocks",
    "turnserver": "coturn",
}
SOCKS_PORT = 1080  # microsocks on SERVER_UP: the censored client's SOCKS5 control path
INSTALL_HINT = "sudo bash scripts/install-lab-deps.sh (or apt-get install {pkgs})"


def ns(name: str, role: str) -> str:
    return f"{name}-{role}"


def missing_prerequisites() -> list[str]:
    """Every reason the lab cannot start here, each with what to do about it."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the lab needs root (network namespaces, nftables): run it with sudo")
    absent = sorted({pkg for b, pkg in BINARIES.items()
                     if shutil.which(b) is None and not Path("/usr/sbin", b).exists()})
    if not Path("/dev/net/tun").exists():
        problems.append("no /dev/net/tun: the lab's OpenVPN servers need a tun device inside "
                        "the server namespace (modprobe tun, or a kernel with CONFIG_TUN)")
    if absent:
        problems.append("missing Debian packages: " + " ".join(absent) + "; install with "
                        + INSTALL_HINT.format(pkgs=" ".join(absent)))
    try:
        import netfilterqueue  # noqa: F401
    except ImportError:
        problems.append("missing Python package netfilterqueue (the censor's DNS injector): "
                        "pip install 'blockwatch-censorship[lab]' (needs libnetfilter-queue-dev, "
                        "build-essential, python3-dev)")
    return problems


def run(cmd: Sequence[str], *, stdin: str | None = None, check: bool = True
        ) -> subprocess.CompletedProcess[str]:
    """Run a command; a failure becomes a LabError quoting the command and its stderr."""
    done = subprocess.run(list(cmd), input=stdin, capture_output=True, text=True, timeout=60,
                          check=False)
    if check and done.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed ({done.returncode}): "
                       f"{(done.stderr or done.stdout).strip()[:500]}")
    return done


def existing_namespaces() -> set[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _ip(namespace: str, *args: str) -> None:
    run(["ip", "-n", namespace, *args])


def create_topology(m: Manifest, service_addresses: Sequence[str],
                    service_addresses6: Sequence[str] = ()) -> None:
    """Namespaces, veth pairs, addresses (IPv4 and IPv6), routes, forwarding; records each
    namespace first."""
    n = {role: ns(m.name, role) for role in ROLES}
    for role in ROLES:
        m.namespaces.append(n[role])
        m.save()
        run(["ip", "netns", "add", n[role]])
        # before any link exists: IPv6 on, no duplicate address detection (an address in DAD is
        # "tentative" for a second or more, unusable), and addresses kept when a link goes down
        # and up again (as IPv4's are), for the links created below too
        run(["ip", "netns", "exec", n[role], "sysctl", "-qw", *(
            f"net.ipv6.conf.{which}.{key}" for which in ("all", "default")
            for key in ("disable_ipv6=0", "accept_dad=0", "keep_addr_on_down=1"))])
        _ip(n[role], "link", "set", "lo", "up")
    links = [("client", "c0", CLIENT, "censor", "down0", CENSOR_DOWN),
             ("censor", "up0", CENSOR_UP, "server", "s0", SERVER_UP),
             ("control", "k0", CONTROL, "server", "k1", SERVER_CONTROL)]
    for a, dev_a, addr_a, b, dev_b, addr_b in links:
        run(["ip", "link", "add", dev_a, "netns", n[a], "type", "veth", "peer", "name", dev_b,
             "netns", n[b]])
        for role, dev, addr in ((a, dev_a, addr_a), (b, dev_b, addr_b)):
            batch = (f"addr add {addr}/24 dev {dev}\n"
                     f"addr add {v6(addr)}/64 dev {dev} nodad\n"
                     f"link set {dev} up\n")
            run(["ip", "-n", n[role], "-batch", "-"], stdin=batch)
    # the service addresses live on the server's loopback (this kernel has no dummy links)
    batch = "".join(f"addr add {a}/32 dev lo\n" for a in [PUBLIC_RESOLVER, *service_addresses])
    batch += "".join(f"addr add {a}/128 dev lo nodad\n"
                     for a in [v6(PUBLIC_RESOLVER), *service_addresses6])
    run(["ip", "-n", n["server"], "-batch", "-"], stdin=batch)
    routes = {
        "client": [("default", CENSOR_DOWN)],
        "control": [("default", SERVER_CONTROL)],
        "censor": [("default", SERVER_UP)],
        "server": [("10.201.1.0/24", CENSOR_UP)],
    }
    for role, table in routes.items():
        batch = "".join(f"route add {dst} via {via}\n"
                        f"route add {dst if dst == 'default' else v6net(dst)} via {v6(via)}\n"
                        for dst, via in table)
        if role == "censor":
            batch += (f"route add blackhole {SINKHOLE_NET}\n"
                      f"route add blackhole {SINKHOLE6_NET}\n")
        run(["ip", "-n", n[role], "-batch", "-"], stdin=batch)
    for role in ("censor", "server"):
        run(["ip", "netns", "exec", n[role], "sysctl", "-qw", "net.ipv4.ip_forward=1",
             "net.ipv4.icmp_ratelimit=0", "net.ipv6.conf.all.forwarding=1",
             "net.ipv6.icmp.ratelimit=0"])
    for role, resolver in (("client", CENSOR_DOWN), ("control", PUBLIC_RESOLVER)):
        # getaddrinfo inside `lab exec` uses the namespace's own resolv.conf
        etc = Path("/etc/netns", n[role])
        m.paths.append(str(etc))
        m.save()
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"nameserver {resolver}\n", encoding="utf-8")


def v6net(network: str) -> str:
    """The IPv6 twin of a lab IPv4 /24 (10.201.A.0/24 -> fd00:b10c:0:A::/64)."""
    address, _, length = network.partition("/")
    if length != "24" or not address.endswith(".0"):
        raise ValueError(f"{network} is not a lab /24")
    return v6(address).removesuffix("0") + "/64"


def start(m: Manifest, role: str, namespace: str, argv: Sequence[str], log: Path) -> Proc:
    """Start a long-running program inside a namespace and record it by PID and start time.

    ``ip netns exec`` execs the program, so the PID is the program's own; a new session keeps
    Ctrl-C at the terminal from reaching it.
    """
    with open(log, "ab") as out:
        child = subprocess.Popen(["ip", "netns", "exec", namespace, *argv],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                 start_new_session=True)
    started = proc_start(child.pid)
    p = Proc(role=role, pid=child.pid, start=started or "?", namespace=namespace)
    m.procs.append(p)
    m.save()
    return p


def wait_alive(p: Proc, log: Path, seconds: float = 0.3) -> None:
    """Fail with the program's own words if it exits right after starting."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(p):
            break
        time.sleep(0.05)
    if not alive(p):
        with _reap(p.pid):
            pass
        tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
        raise LabError(f"{p.role} exited at start; its log ({log}) says:\n{tail.strip()}")


class _reap:
    """Collect a child's exit status if it is ours, so it leaves no zombie."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, os.WNOHANG)


def stop(p: Proc, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; only if the PID is still the same process."""
    if not alive(p):
        return
    os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with _reap(p.pid):
            pass
        if not alive(p):
            return
        time.sleep(0.02)
    if alive(p):
        os.kill(p.pid, signal.SIGKILL)
        with _reap(p.pid):
            pass


def _kill_leftovers(namespace: str) -> None:
    """Anything still running inside one of *our* namespaces was started by the lab."""
    out = run(["ip", "netns", "pids", namespace], check=False).stdout
    for pid_text in out.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_text), signal.SIGKILL)


def teardown(m: Manifest) -> list[str]:
    """Undo everything the manifest records; returns what could not be removed."""
    problems: list[str] = []
    for p in reversed(m.procs):
        try:
            stop(p)
        except OSError as exc:
            problems.append(f"process {p.role} ({p.pid}): {exc}")
    present = existing_namespaces()
    for namespace in m.namespaces:
        if namespace in present:
            _kill_leftovers(namespace)
    for namespace in reversed(m.namespaces):
        if namespace in present:
            done = run(["ip", "netns", "del", namespace], check=False)
            if done.returncode != 0:
                problems.append(f"namespace {namespace}: {done.stderr.strip()}")
    for path in m.paths:
        shutil.rmtree(path, ignore_errors=True)
    if not problems:
        shutil.rmtree(m.directory, ignore_errors=True)
    return problems
