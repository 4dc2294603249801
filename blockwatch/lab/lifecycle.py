"""Bringing one lab up, switching its scenario, and taking it down.

``up`` checks every prerequisite before touching anything, records each namespace, file and
process in the manifest before creating it, and on any failure (or Ctrl-C/SIGTERM) tears down
what it had made before re-raising. ``up`` on a healthy lab only switches the scenario;
``down`` on a lab that does not exist says so and succeeds. The results database the configs of
``up`` write to is kept: ``down`` (and an ``up`` that rebuilds a broken lab) moves it out of the
lab's state directory, which it removes, to ``KEEP_ROOT`` and says where; only
``delete_results`` deletes it.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from blockwatch.lab import censor, vpn
from blockwatch.lab.runner import write_configs
from blockwatch.lab.scenario import Scenario, load
from blockwatch.lab.services import (
    NATIONAL_PORT,
    Catalogue,
    dnsmasq_public_conf,
    lab_catalogue,
    make_pki,
    nginx_censor_conf,
    nginx_server_conf,
)
from blockwatch.lab.state import LabError, Manifest, alive, check_name
from blockwatch.lab.topology import (
    PUBLIC_RESOLVER,
    SERVER_UP,
    SOCKS_PORT,
    create_topology,
    existing_namespaces,
    missing_prerequisites,
    ns,
    run,
    start,
    stop,
    teardown,
    wait_alive,
)

VPN_UDP_PORTS = (51820,)  # WireGuard's (OpenVPN's 1194 has a real server: blockwatch.lab.vpn)


@dataclass(frozen=True, slots=True)
class Lab:
    manifest: Manifest
    catalogue: Catalogue

    @property
    def directory(self) -> Path:
        return self.manifest.directory

    def ns(self, role: str) -> str:
        return ns(self.manifest.name, role)


def healthy(m: Manifest) -> list[str]:
    """What is wrong with a lab that claims to be up (empty: nothing)."""
    present = existing_namespaces()
    problems = [f"namespace {n} is gone" for n in m.namespaces if n not in present]
    problems += [f"process {p.role} ({p.pid}) is not running" for p in m.procs if not alive(p)]
    return problems


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# where `down` keeps the lab's results database (the lab's own state is in /run, gone at reboot)
KEEP_ROOT = Path(os.environ.get("BLOCKWATCH_LAB_KEEP", "/var/lib/blockwatch-lab"))


def keep_results(m: Manifest) -> Path | None:
    """The lab's results database moved to ``KEEP_ROOT`` (its WAL folded in first); None if
    nothing was ever stored there."""
    db = m.directory / "results.db"
    if not db.is_file():
        return None
    try:
        conn = sqlite3.connect(db)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    except sqlite3.Error:
        pass  # moved as it is, with its -wal beside it
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = KEEP_ROOT / f"{m.name}-results-{stamp}.db"
    try:
        KEEP_ROOT.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{db}{suffix}").exists():
                shutil.move(f"{db}{suffix}", f"{target}{suffix}")
    except OSError as exc:
        raise LabError(f"could not keep the lab's results database {db} in {KEEP_ROOT} "
                       f"({exc.strerror}); the lab is left up: copy it yourself, or "
                       "`blockwatch lab down --delete-results`") from None
    return target


def up(name: str, scenario_name: str | None = None, sites: int = 0) -> tuple[Lab, str]:
    """Bring lab ``name`` up (or switch the scenario of a running one); says which it did."""
    check_name(name)
    problems = missing_prerequisites()
    if problems:
        raise LabError("cannot start the lab:\n  " + "\n  ".join(problems))
    cat = lab_catalogue(sites)
    scenario = load(scenario_name or "none", cat.known())
    old = Manifest.load(name)
    if old is not None:
        if old.status == "up" and not healthy(old) and old.info.get("sites") == sites:
            lab = Lab(old, cat)
            if scenario.name != old.scenario or scenario_name is not None:
                switch(lab, scenario)
                return lab, f"lab {name} was up; scenario now {scenario.name}"
            return lab, f"lab {name} is already up (scenario {old.scenario})"
        keep_results(old)
        teardown(old)  # half-made or broken: start clean
    clash = [n for n in (ns(name, r) for r in ("client", "control", "censor", "server"))
             if n in existing_namespaces()]
    if clash:
        raise LabError(f"namespace {clash[0]} exists but no lab {name!r} manifest records it; "
                       f"not touching it. Remove it with `ip netns del {clash[0]}` or use "
                       "another --name")
    m = Manifest(name=name, info={"sites": sites})
    m.save()
    try:
        with _sigterm_interrupts():
            lab = Lab(m, cat)
            _build(lab, scenario)
    except BaseException:
        teardown(m)
        raise
    return lab, f"lab {name} is up (scenario {scenario.name})"


def _build(lab: Lab, scenario: Scenario) -> None:
    m, d, cat = lab.manifest, lab.directory, lab.catalogue
    t0 = time.monotonic()
    create_topology(m, cat.all_addresses(), cat.all_addresses6())
    hosts = sorted(cat.owner)
    pki = make_pki(d / "pki", hosts)
    m.info["pki"] = {k: str(v) for k, v in pki.items()}
    (d / "dnsmasq-public.conf").write_text(dnsmasq_public_conf(cat, PUBLIC_RESOLVER))
    (d / "nginx-server.conf").write_text(nginx_server_conf(d, pki))
    (d / "nginx-censor.conf").write_text(nginx_censor_conf(d, pki))
    _daemon(lab, "dns-public", "server", ["dnsmasq", "-k", "--pid-file=", "--log-facility=-",
                                          "-C", str(d / "dnsmasq-public.conf")])
    for who in ("server", "censor"):
        _daemon(lab, f"nginx-{who}", who, ["nginx", "-e", str(d / f"nginx-{who}.err"),
                                           "-p", str(d), "-c", str(d / f"nginx-{who}.conf")])
    # a stand-in VPN port, so a UDP drop there is observable (see blockwatch.lab.udpecho)
    _daemon(lab, "udp-echo", "server", [sys.executable, "-m", "blockwatch.lab.udpecho",
                                        *(str(p) for p in VPN_UDP_PORTS)])
    # HTTP/3 on every service address (blockwatch.lab.h3server), the lab CA's certificate
    _daemon(lab, "h3server", "server", [sys.executable, "-m", "blockwatch.lab.h3server",
                                        str(pki["lab_cert"]), str(pki["lab_key"]), "443",
                                        *cat.all_addresses(), *cat.all_addresses6()])
    _start_vpn(lab, pki)
    # a SOCKS5 proxy beside the servers, reached through the censor but resolving and
    # connecting on the server's side: the censored client's control path ([analysis]
    # control_proxy); its names come from the lab's public resolver (resolv.conf below)
    (Path("/etc/netns", lab.ns("server")) / "resolv.conf").write_text(
        f"nameserver {PUBLIC_RESOLVER}\n", encoding="utf-8")
    _daemon(lab, "socks", "server", ["microsocks", "-i", SERVER_UP, "-p", str(SOCKS_PORT)])
    censor.apply_server(lab.ns("server"), scenario, cat)
    censor.setup_iptables(lab.ns("censor"))
    censor.apply(lab.ns("censor"), scenario, cat, d)
    _daemon(lab, "injector", "censor", [sys.executable, "-m", "blockwatch.lab.inject",
                                        str(censor.INJECT_QUEUE), str(d / "inject.json")])
    _daemon(lab, "delay", "censor", [sys.executable, "-m", "blockwatch.lab.delay",
                                     str(censor.DELAY_QUEUE), str(d / "delay.json")])
    _daemon(lab, "quicsni", "censor", [sys.executable, "-m", "blockwatch.lab.quicsni",
                                       str(censor.QUIC_SNI_QUEUE), str(d / "quicsni.json")])
    _daemon(lab, "echblock", "censor", [sys.executable, "-m", "blockwatch.lab.echblock",
                                        str(censor.ECH_QUEUE)])
    _start_isp(lab, scenario)
    _wait_listening(lab.ns("server"), [":53", ":443", ":80", f":{vpn.TOR_PORT}",
                                       f":{SOCKS_PORT}",
                                       *(f":{p}" for p in vpn.UDP_PORTS)])
    _wait_listening(lab.ns("censor"), [":53", ":8443", f":{NATIONAL_PORT}"])
    _wait_udp(lab.ns("server"), 443)  # the HTTP/3 server
    write_configs(lab.manifest, cat)
    m.scenario = scenario.name
    m.status = "up"
    m.info["up_seconds"] = round(time.monotonic() - t0, 2)
    m.save()


def _daemon(lab: Lab, role: str, where: str, argv: list[str]) -> None:
    log = lab.directory / f"{role}.log"
    wait_alive(start(lab.manifest, role, lab.ns(where), argv, log), log)


def _start_vpn(lab: Lab, pki: dict[str, Path]) -> None:
    """The real OpenVPN servers, strongSwan responder, Tor relay and STUN server (coturn) of
    service labvpn."""
    m, d = lab.manifest, lab.directory
    key = d / "vpn-tls-auth.key"
    run(["openvpn", "--genkey", "secret", str(key)])
    key.chmod(0o600)
    m.info["vpn_key"] = str(key)
    address = lab.catalogue.address[vpn.LABVPN]
    for i, server in enumerate(vpn.OPENVPN_SERVERS):
        _daemon(lab, server.name, "server", vpn.openvpn_argv(server, i, address, pki, key))
    # charon's conf must be readable under its private /run: it lives in /etc/netns/<server>
    etc = Path("/etc/netns", lab.ns("server"))
    m.paths.append(str(etc))
    m.save()
    etc.mkdir(parents=True, exist_ok=True)
    conf = etc / "strongswan.conf"
    conf.write_text(vpn.charon_conf(), encoding="utf-8")
    _daemon(lab, "charon", "server", vpn.charon_argv(conf))
    tor_data = d / "tor-data"
    tor_data.mkdir(mode=0o700, exist_ok=True)
    torrc = d / "torrc"
    torrc.write_text("", encoding="utf-8")
    _daemon(lab, "tor", "server", vpn.tor_argv(tor_data, torrc, address))
    _daemon(lab, "turnserver", "server", vpn.turnserver_argv(address, d))


def _start_isp(lab: Lab, scenario: Scenario) -> None:
    conf = lab.directory / "dnsmasq-isp.conf"
    conf.write_text(censor.dnsmasq_isp_conf(scenario, lab.catalogue))
    _daemon(lab, "dns-isp", "censor",
            ["dnsmasq", "-k", "--pid-file=", "--log-facility=-", "-C", str(conf)])


def _wait_udp(namespace: str, port: int, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not run(["ip", "netns", "exec", namespace, "ss", "-Hlun", "sport", "=", f":{port}"],
                  check=False).stdout.strip():
        if time.monotonic() > deadline:
            raise LabError(f"nothing in {namespace} listens on UDP {port} after {seconds:.0f} s")
        time.sleep(0.05)


def _wait_listening(namespace: str, ports: list[str], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        out = run(["ip", "netns", "exec", namespace, "ss", "-Hltun"], check=False).stdout
        local = {line.split()[4].rsplit(":", 1)[-1] for line in out.splitlines()
                 if len(line.split()) > 4}
        missing = [p for p in ports if p.lstrip(":") not in local]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise LabError(f"servers in {namespace} not listening on {', '.join(missing)} "
                           "after 5 s")
        time.sleep(0.05)


def switch(lab: Lab, scenario: Scenario) -> None:
    """Reconfigure the censor (and the server's outages) for ``scenario`` without rebuilding
    anything else."""
    m = lab.manifest
    censor.apply_server(lab.ns("server"), scenario, lab.catalogue)
    censor.apply(lab.ns("censor"), scenario, lab.catalogue, lab.directory)
    for p in [p for p in m.procs if p.role == "dns-isp"]:
        stop(p)
        m.procs.remove(p)
    m.save()
    _start_isp(lab, scenario)
    _wait_listening(lab.ns("censor"), [":53"])
    m.scenario = scenario.name
    m.save()


def get(name: str, sites: int | None = None) -> Lab:
    """The running lab ``name``; a clear error if it is not up."""
    check_name(name)
    m = Manifest.load(name)
    if m is None or m.status != "up":
        named = f" --name {name}" if name != "bw" else ""  # an option of `lab`, not of `up`
        raise LabError(f"lab {name!r} is not up: start it with `sudo blockwatch lab{named} up`")
    return Lab(m, lab_catalogue(int(m.info.get("sites", 0)) if sites is None else sites))


def down(name: str, *, delete_results: bool = False) -> str:
    check_name(name)
    m = Manifest.load(name)
    if m is None:
        leftovers = [n for n in (ns(name, r) for r in ("client", "control", "censor", "server"))
                     if n in existing_namespaces()]
        if leftovers:
            raise LabError(f"no manifest for lab {name!r}, but namespace {leftovers[0]} exists; "
                           f"not touching what the lab did not record (`ip netns del "
                           f"{leftovers[0]}` removes it)")
        return f"lab {name} is not up; nothing to do"
    kept = None if delete_results else keep_results(m)
    problems = teardown(m)
    if problems:
        raise LabError("could not remove everything:\n  " + "\n  ".join(problems))
    if kept is not None:
        return (f"lab {name} is down; its results database is kept: {kept}\n"
                f"  read it: blockwatch runs --db {kept}")
    if delete_results:
        return f"lab {name} is down; its results database was deleted (--delete-results)"
    return f"lab {name} is down (nothing was stored in its results database)"
