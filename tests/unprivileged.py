"""Run a check as an unprivileged user even when the tests run as root (as in CI), where a
permission test would otherwise prove nothing: root may write anywhere.

The check runs in a forked child that drops to ``nobody`` (uid/gid 65534): no new interpreter
is executed, so it works where Python lives under root's private home. Everything the check
needs must be imported before, and its files must be reachable by ``nobody`` (see
``scratch_dir``). The child's failure comes back as the parent's AssertionError.
"""

from __future__ import annotations

import os
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

NOBODY = 65534


def scratch_dir() -> Path:
    """A fresh directory anyone may enter and write (pytest's tmp_path is root's own)."""
    path = Path(tempfile.mkdtemp(prefix="bw-unpriv-"))
    path.chmod(0o777)
    return path


def as_unprivileged(check: Callable[[], None]) -> None:
    """Run ``check`` as ``nobody`` if we are root, else as ourselves."""
    if os.geteuid() != 0:
        check()
        return
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges for good, run, report, leave without cleanup
        os.close(read)
        code = 0
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            check()
        except BaseException:
            os.write(write, traceback.format_exc().encode()[-4000:])
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"as nobody:\n{message}"


def without_net_raw(argv: list[str]) -> list[str]:
    """``argv`` run without CAP_NET_RAW even as root (util-linux's setpriv drops it from the
    bounding set); pytest.skip without setpriv."""
    import shutil

    import pytest

    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop CAP_NET_RAW")
    return [setpriv, "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-net_raw", *argv]


def run_without_net_raw(script: str, cwd: Path, timeout: float = 120) -> Any:
    """``python -c script`` without CAP_NET_RAW (``without_net_raw``), its output captured."""
    import subprocess
    import sys

    return subprocess.run(without_net_raw([sys.executable, "-c", script]), capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, check=False)


def raw_sockets_allowed() -> bool:
    import socket

    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP).close()
    except OSError:
        return False
    return True


def _needs_raw() -> object:
    import pytest

    return pytest.mark.skipif(not raw_sockets_allowed(),
                              reason="needs raw sockets (root or CAP_NET_RAW)")


needs_raw = _needs_raw()  # a test marker: skipped without raw sockets

