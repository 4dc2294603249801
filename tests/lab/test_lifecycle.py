"""The lab's own promises: ``up`` twice and ``down`` twice are harmless, ``down`` leaves no
namespace, process or file behind, a crash during ``up`` leaves nothing, and bad input (a
scenario file with a mistake) is a one-line error, not a traceback. Each test uses a lab of its
own, apart from the session's."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from blockwatch.lab.state import STATE_ROOT, Manifest, Proc, alive
from blockwatch.lab.topology import existing_namespaces

from .conftest import BLOCKWATCH, blockwatch


def _leftovers(name: str, procs: list[Proc]) -> list[str]:
    left = [n for n in existing_namespaces() if n.startswith(f"{name}-")]
    left += [f"pid {p.pid} ({p.role})" for p in procs if alive(p)]
    left += [str(p) for p in (STATE_ROOT / name, *Path("/etc/netns").glob(f"{name}-*"))
             if p.exists()]
    return left


def test_up_twice_down_twice_and_nothing_left(lab) -> None:
    name = f"bwl{os.getpid() % 100000}"
    first = blockwatch("lab", "--name", name, "up")
    assert f"lab {name} is up" in first.stdout
    m = Manifest.load(name)
    assert m is not None and len(m.procs) >= 5 and all(alive(p) for p in m.procs)
    again = blockwatch("lab", "--name", name, "up")
    assert "already up" in again.stdout
    m2 = Manifest.load(name)
    assert m2 is not None and [p.pid for p in m2.procs] == [p.pid for p in m.procs]
    status = blockwatch("lab", "--name", name, "status").stdout
    assert "NOT RUNNING" not in status and "running" in status
    assert "is down" in blockwatch("lab", "--name", name, "down").stdout
    assert _leftovers(name, m.procs) == []
    assert "not up" in blockwatch("lab", "--name", name, "down").stdout
    # the session's lab was never touched by another lab's up and down
    assert f"{lab.name}-censor" in existing_namespaces()


def test_crash_during_up_leaves_nothing(lab) -> None:
    name = f"bwc{os.getpid() % 100000}"
    child = subprocess.Popen([BLOCKWATCH, "lab", "--name", name, "up"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[Proc] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # interrupt once namespaces and a daemon exist
        m = Manifest.load(name) if (STATE_ROOT / name / "manifest.json").exists() else None
        if m is not None and m.procs:
            seen = list(m.procs)
            break
        time.sleep(0.01)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert seen, "up finished before it could be interrupted"
    assert child.returncode != 0
    assert "Traceback" not in err
    assert _leftovers(name, seen) == []


def test_bad_scenario_file_is_a_clear_error(lab, tmp_path: Path) -> None:
    bad = tmp_path / "mine.toml"
    bad.write_text('[services]\ntwitter = "dns_telepathy"\n')
    done = blockwatch("lab", "--name", lab.name, "up", "--scenario", str(bad), check=False)
    assert done.returncode == 2
    assert "services.twitter: unknown method 'dns_telepathy'" in done.stderr
    assert "Traceback" not in done.stderr
    bad.write_text('[services]\nnosuchapp = "dns_nxdomain"\n')
    done = blockwatch("lab", "--name", lab.name, "up", "--scenario", str(bad), check=False)
    assert done.returncode == 2 and "services.nosuchapp: unknown service" in done.stderr


def test_exec_runs_in_the_censored_client(lab) -> None:
    done = blockwatch("lab", "--name", lab.name, "exec", "--", "ip", "-brief", "addr")
    assert "10.201.1.2" in done.stdout and "10.201.3.2" not in done.stdout
    done = blockwatch("lab", "--name", lab.name, "exec", "--control", "--", "ip", "-brief",
                      "addr")
    assert "10.201.3.2" in done.stdout


def test_client_namespaces_route_only_into_the_lab(lab) -> None:
    for role in ("client", "control"):
        routes = subprocess.run(["ip", "-n", lab.ns(role), "route", "show"], capture_output=True,
                                text=True, check=True).stdout
        links = subprocess.run(["ip", "-n", lab.ns(role), "-brief", "link"],
                               capture_output=True, text=True, check=True).stdout
        assert len(links.splitlines()) == 2, links  # lo and the one veth into the lab
        assert routes.startswith("default via 10.201."), routes
