"""Real PPTP (Debian's pptpd) and L2TP (Debian's xl2tpd) servers on loopback for tests.

Only their control channels are exercised: the probes send SCCRQ and the servers' own code
answers. pptpd listens on its fixed port 1723 (on 127.0.0.1 only).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

PPTPD = shutil.which("pptpd") or ("/usr/sbin/pptpd" if Path("/usr/sbin/pptpd").exists()
                                  else None)
XL2TPD = shutil.which("xl2tpd") or ("/usr/sbin/xl2tpd" if Path("/usr/sbin/xl2tpd").exists()
                                    else None)


def _wait_listening(check: object, proc: subprocess.Popen[bytes], what: str) -> None:
    for _ in range(100):
        if check():  # type: ignore[operator]
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tcp_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def pptpd(directory: Path) -> Iterator[int]:
    assert PPTPD is not None
    conf = directory / "pptpd.conf"
    (directory / "pptpd-options").write_text("")
    conf.write_text(f"option {directory / 'pptpd-options'}\nlocalip 10.98.0.1\n"
                    "remoteip 10.98.0.2-20\n")
    proc = subprocess.Popen([PPTPD, "-f", "-c", str(conf), "-p", str(directory / "pptpd.pid"),
                             "-l", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(lambda: _tcp_open(1723), proc, "pptpd")
        yield 1723
    finally:
        _stop(proc)


@contextlib.contextmanager
def xl2tpd(directory: Path) -> Iterator[int]:
    assert XL2TPD is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = directory / "xl2tpd.conf"
    conf.write_text(f"[global]\nlisten-addr = 127.0.0.1\nport = {port}\n"
                    "[lns default]\nip range = 10.99.0.2-10.99.0.20\nlocal ip = 10.99.0.1\n")
    log = directory / "xl2tpd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([XL2TPD, "-D", "-c", str(conf), "-p",
                                 str(directory / "xl2tpd.pid"), "-C",
                                 str(directory / "l2tp-control")], stdout=out, stderr=out)
    try:
        _wait_listening(lambda: b"Listening on IP address" in log.read_bytes(), proc, "xl2tpd")
        yield port
    finally:
        _stop(proc)
