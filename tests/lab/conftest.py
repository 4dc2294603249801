"""One censorship lab per test session, driven through the real ``blockwatch`` CLI.

The lab needs root and the Debian packages of ``scripts/install-lab-deps.sh``. Without them the
lab tests are skipped with the reason; with ``BLOCKWATCH_REQUIRE_LAB=1`` (CI) they fail instead.
Scenarios are switched by reconfiguring the censor (``blockwatch lab up --scenario``), never by
rebuilding the namespaces; each (scenario, client) sweep runs once and is shared by the tests.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BLOCKWATCH = str(Path(sys.executable).with_name("blockwatch"))
HOW = ("run them as root after `sudo bash scripts/install-lab-deps.sh`: "
       "sudo .venv/bin/python -m pytest tests/lab")


def lab_unavailable() -> str | None:
    from blockwatch.lab.topology import missing_prerequisites

    problems = missing_prerequisites()
    return "; ".join(problems) if problems else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    lab_items = [i for i in items if here in Path(str(i.fspath)).parents]
    for item in lab_items:
        item.add_marker(pytest.mark.lab)
    reason = lab_unavailable() if lab_items else None
    if reason and os.environ.get("BLOCKWATCH_REQUIRE_LAB") != "1":
        skip = pytest.mark.skip(reason=f"lab tests need the namespace lab: {reason}. {HOW}")
        for item in lab_items:
            item.add_marker(skip)


def blockwatch(*args: str, check: bool = True, timeout: float = 300
               ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([BLOCKWATCH, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"blockwatch {' '.join(args)} exited {done.returncode}:\n"
                             f"{done.stdout}\n{done.stderr}")
    return done


UDP_PROBE = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM); s.settimeout(1.0)
got = 0
for _ in range(3):
    s.sendto(b"vpn?", (sys.argv[1], int(sys.argv[2])))
    try:
        got += s.recv(64) == b"vpn?"
    except TimeoutError:
        pass
print(got)
"""


@dataclass
class Sweep:
    """One stored run: service verdicts and measurement rows, read back from the database."""

    run_id: str
    services: dict[str, Any]  # service -> Verdict (analyzer's per-service verdict)
    rows: list[dict[str, Any]]  # `blockwatch export --format jsonl --run` records

    def measurements(self, service: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["service"] == service]


@dataclass
class Lab:
    name: str
    tmp: Path
    ca: str
    scenario: str = "none"
    vpn_key: str | None = None  # the tls-auth key of the lab's OpenVPN server (made at `up`)

    def ns(self, role: str) -> str:
        return f"{self.name}-{role}"

    def use(self, scenario: str) -> None:
        if scenario != self.scenario:
            blockwatch("lab", "--name", self.name, "up", "--scenario", scenario)
            self.scenario = scenario

    def config(self, client: str, db: Path, **kw: Any) -> Path:
        from blockwatch.lab.runner import config_text
        from blockwatch.lab.services import lab_catalogue

        path = self.tmp / f"{client}-{db.stem}.toml"
        if "probes" not in kw and self.scenario in WITHOUT_NEW_PROBES:
            kw["probes"] = CLASSIC_PROBES  # every config of the scenario, whoever sweeps it
        kw.setdefault("vpn_key", self.vpn_key)
        path.write_text(config_text(client, lab_catalogue(), self.ca, db, **kw))
        return path

    def udp_echoes(self, role: str, address: str, port: int) -> int:
        """How many of 3 datagrams sent from ``role``'s namespace to ``address:port`` (IPv4 or
        IPv6) the lab's UDP echo sent back."""
        done = subprocess.run(["ip", "netns", "exec", self.ns(role), sys.executable, "-c",
                               UDP_PROBE, address, str(port)], capture_output=True, text=True,
                              timeout=30, check=True)
        return int(done.stdout)

    @contextlib.contextmanager
    def link_down(self) -> Iterator[None]:
        """The censored client's link down (no route out at all), then back with its routes."""
        from blockwatch.lab.topology import CENSOR_DOWN, v6

        client = self.ns("client")
        subprocess.run(["ip", "-n", client, "link", "set", "c0", "down"], check=True)
        try:
            yield
        finally:
            subprocess.run(["ip", "-n", client, "link", "set", "c0", "up"], check=True)
            for gateway in (CENSOR_DOWN, v6(CENSOR_DOWN)):
                subprocess.run(["ip", "-n", client, "route", "replace", "default", "via",
                                gateway], check=True)

    def sweep(self, client: str, scenario: str, *, label: str = "", **kw: Any) -> Sweep:
        """`blockwatch run` inside the client's namespace, then the stored results."""
        import json

        from blockwatch.lab.runner import service_verdicts

        self.use(scenario)
        db = self.tmp / f"{scenario}{label}-{client}.db"
        cfg = self.config(client, db, **kw)
        role = "client" if client == "censored" else "control"
        done = subprocess.run(["ip", "netns", "exec", self.ns(role), BLOCKWATCH, "run",
                               "--config", str(cfg), "--quiet"],
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        rows = [json.loads(line) for line in blockwatch(
            "export", "--config", str(cfg), "--format", "jsonl").stdout.splitlines()]
        run_id = rows[0]["run_id"]
        return Sweep(run_id, service_verdicts(db, run_id), rows)


# The quic and ech probes (on by default) are left out of the sweeps of these scenarios,
# whose tests are about the older layers: with them every silent address costs several more
# timeouts, and CI must stay under 20 minutes. They are swept everywhere else: none (ok
# everywhere), methods and its variants (ech_block; nothing else called QUIC blocking; the
# lossy copy of methods), quic, loss.
WITHOUT_NEW_PROBES = frozenset({"evidence", "ipv6", "outages", "cn-2014", "vpn", "apps"})
CLASSIC_PROBES = ("dns", "tcp", "tls", "http", "vpn")


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = lab_unavailable()
    if reason:
        pytest.fail(f"BLOCKWATCH_REQUIRE_LAB=1 but the lab cannot run: {reason}")
    name = f"bwt{os.getpid() % 100000}"
    blockwatch("lab", "--name", name, "up", "--scenario", "none")
    try:
        from blockwatch.lab.state import Manifest

        m = Manifest.load(name)
        assert m is not None
        yield Lab(name, tmp_path_factory.mktemp("lab"), m.info["pki"]["lab_ca"],
                  vpn_key=m.info["vpn_key"])
    finally:
        blockwatch("lab", "--name", name, "down")


@pytest.fixture(scope="session")
def sweeps(lab: Lab) -> Callable[..., Sweep]:
    """Memoised sweeps: each (scenario, client, label) runs once per session."""
    cache: dict[tuple[str, str, str], Sweep] = {}

    def get(scenario: str, client: str, label: str = "", **kw: Any) -> Sweep:
        key = (scenario, client, label)
        if key not in cache:
            cache[key] = lab.sweep(client, scenario, label=label, **kw)
        return cache[key]

    return get
