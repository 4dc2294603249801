"""Sweeps in the lab: configs for the two clients, ``blockwatch run`` inside a namespace, and
the stored verdicts read back.

The configs keep blockwatch inside the lab: the scope is the lab's prefixes only, the baseline
is the lab's public resolver, the tested resolver is the ISP's (censored client) or the public
one (control client), the control resolver is the public one over TCP (the censor never touches
DNS over TCP), and the lab CA is the extra CA bundle. The lab's own VPN servers are ``[[vpn]]``
entries of service ``labvpn`` (the tls-auth one with the key generated at ``up``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blockwatch.lab.services import Catalogue, opt_in_toml
from blockwatch.lab.state import LabError, Manifest
from blockwatch.lab.topology import CENSOR_DOWN, PUBLIC_RESOLVER, ns
from blockwatch.lab.vpn import LABVPN, stun_service_toml, toml_entries, vpn_entries

CLIENTS = {"censored": "client", "control": "control"}


def config_text(client: str, cat: Catalogue, ca_bundle: str, db: Path, *,
                sites: int = 0,
                timeouts: tuple[float, float, float, float] | None = (2, 3, 3, 5),
                dns_retries: int | None = None, vpn_key: str | None = None,
                silent: Sequence[str] = (), probes: Sequence[str] = (),
                services: Sequence[str] = (), extra: str = "") -> str:
    """A client's config; ``probes``/``services`` narrow the sweep, ``silent`` are [dns] silent
    addresses, ``extra`` is TOML appended as is (e.g. an [analysis] table). ``timeouts`` and
    ``dns_retries`` None: blockwatch's defaults (the lab's own are shorter, for quick tests)."""
    resolver = CENSOR_DOWN if client == "censored" else PUBLIC_RESOLVER
    timed = []
    if timeouts is not None:
        dns_t, tcp_t, tls_t, http_t = timeouts
        timed = ["[timeouts]", f"dns = {dns_t}", f"tcp = {tcp_t}", f"tls = {tls_t}",
                 f"http = {http_t}"]
        # a QUIC exchange as long as a TLS handshake: a dropped flow costs three of them
        timed += ["[probe.quic]", f"timeout = {tls_t}"]
    lines = [
        f"# blockwatch lab: the {client} client's config (generated; scope is the lab only)",
        "# every packet stays inside the lab's namespaces: nobody outside can observe the run",
        "consent = true",
        "[vantage]", f'name = "lab-{client}"',
        "[storage]", f'url = "sqlite:///{db}"',
        *timed,
        "[dns]", f'resolvers = ["udp://{resolver}"]', f'controls = ["tcp://{PUBLIC_RESOLVER}"]',
        *([f"retries = {dns_retries}"] if dns_retries is not None else []),
        f"silent = {json.dumps(list(silent))}",
        "[tls]", f'ca_bundle = "{ca_bundle}"',
        "[probes]", f"scope = {json.dumps(cat.scope())}",
        *([f"probes = {json.dumps(list(probes))}"] if probes else []),
        *([f"services = {json.dumps(list(services))}"] if services else []),
        "[baseline]", f'endpoints = ["{PUBLIC_RESOLVER}:53"]', "timeout = 3.0",
    ]
    for i in range(sites):
        s = cat.services[f"site{i}"]
        lines += ["[[services]]", f'name = "{s.name}"', 'category = "lab"',
                  f"domains = {json.dumps(list(s.domains))}", f"urls = {json.dumps(list(s.urls))}"]
    if LABVPN in cat.address:
        lines += stun_service_toml(cat.address[LABVPN])
        lines += toml_entries(vpn_entries(cat.address[LABVPN], vpn_key))
    return "\n".join(lines) + "\n" + extra


def write_configs(m: Manifest, cat: Catalogue) -> None:
    for client in CLIENTS:
        path = m.directory / f"{client}.toml"
        path.write_text(config_text(client, cat, m.info["pki"]["lab_ca"],
                                    m.directory / "results.db",
                                    vpn_key=m.info.get("vpn_key"), extra=opt_in_toml()),
                        encoding="utf-8")
        m.info[f"{client}_config"] = str(path)
    m.save()


def blockwatch_argv() -> list[str]:
    exe = Path(sys.executable).with_name("blockwatch")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "blockwatch"]


def in_namespace(lab_name: str, client: str, argv: Sequence[str], **kw: Any
                 ) -> subprocess.CompletedProcess[str]:
    if client not in CLIENTS:
        raise LabError(f"client must be one of {', '.join(CLIENTS)}")
    return subprocess.run(["ip", "netns", "exec", ns(lab_name, CLIENTS[client]), *argv],
                          text=True, check=False, **kw)


@dataclass(frozen=True, slots=True)
class SweepResult:
    returncode: int
    run_id: str | None
    stderr: str
    rows: list[dict[str, Any]]  # one per stored measurement, as `blockwatch run --json` prints


def sweep(lab_name: str, client: str, config: Path, services: Sequence[str] = (),
          timeout: float = 300) -> SweepResult:
    """``blockwatch run --json`` from one client; the rows come from the stored run."""
    argv = [*blockwatch_argv(), "run", "--config", str(config), "--json"]
    for s in services:
        argv += ["--service", s]
    done = in_namespace(lab_name, client, argv, capture_output=True, timeout=timeout)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    run_id = rows[0]["run_id"] if rows else None
    return SweepResult(done.returncode, run_id, done.stderr, rows)


def sweep_shown(lab_name: str, client: str, config: Path, db: Path,
                timeout: float = 300) -> tuple[int, Any]:
    """``blockwatch run`` from one client with its own progress bar on this process's stderr (a
    terminal: the demo's), its table dropped; (its exit code, the run it stored, read from
    ``db``, or None)."""
    from blockwatch.storage import open_store

    done = in_namespace(lab_name, client, [*blockwatch_argv(), "run", "--config", str(config)],
                        stdout=subprocess.DEVNULL, timeout=timeout)
    with open_store(f"sqlite:///{db}") as store:
        runs = store.runs(limit=1, vantages=[f"lab-{client}"])
    return done.returncode, runs[0] if runs else None


def service_verdicts(db: Path, run_id: str) -> dict[str, Any]:
    """The stored per-service verdicts of one run."""
    from blockwatch.storage import open_store

    with open_store(f"sqlite:///{db}") as store:
        return {v.service: v for v in store.verdicts(run_id=run_id) if v.measurement_id is None}
