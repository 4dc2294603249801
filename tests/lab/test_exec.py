"""``sudo blockwatch lab exec -- blockwatch run ...`` as the README says it: sudo's secure_path
has no virtualenv in it, and the lab runs this blockwatch in the namespace all the same."""

from __future__ import annotations

import os
import subprocess

from .conftest import BLOCKWATCH, Lab


def test_exec_runs_this_blockwatch_under_sudos_path(lab: Lab) -> None:
    env = {**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # sudo's secure_path
    done = subprocess.run([BLOCKWATCH, "lab", "--name", lab.name, "exec", "--", "blockwatch",
                           "--version"], capture_output=True, text=True, timeout=60,
                          check=False, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("blockwatch ")
    # and the namespace is the client's: its own addresses, not this machine's
    addresses = subprocess.run([BLOCKWATCH, "lab", "--name", lab.name, "exec", "--", "ip",
                                "-o", "addr"], capture_output=True, text=True, timeout=60,
                               check=True, env=env).stdout
    assert "10.201." in addresses
