"""A real strongSwan IKEv2 responder (Debian's charon) on loopback for tests.

Started in a private mount namespace with its own /run, so its pid file and control sockets
never meet another charon (the lab's, or the host's). It listens on two free UDP ports; with a
port other than 500, charon expects the non-ESP marker on both (it treats them as NAT-T ports),
so tests probe it with ``natt=yes``. With no connection configured it answers IKE_SA_INIT with
NO_PROPOSAL_CHOSEN, which is an IKE reply like any other.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CHARON = "/usr/lib/ipsec/charon" if os.path.exists("/usr/lib/ipsec/charon") else None
UNSHARE = shutil.which("unshare")
AVAILABLE = CHARON is not None and UNSHARE is not None and os.geteuid() == 0


@dataclass
class Responder:
    port: int
    natt_port: int
    log: Path


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def strongswan_responder(directory: Path) -> Iterator[Responder]:
    assert AVAILABLE, "needs root and Debian's strongswan-charon"
    port, natt = _free_udp_port(), _free_udp_port()
    log = directory / "charon.log"
    conf = directory / "strongswan.conf"
    conf.write_text(f"""
charon {{
  port = {port}
  port_nat_t = {natt}
  install_routes = no
  install_virtual_ip = no
  interfaces_use = lo
  load_modular = yes
  filelog {{
    test {{
      path = {log}
      flush_line = yes
      default = 1
      ike = 2
    }}
  }}
  plugins {{
    include /etc/strongswan.d/charon/*.conf
  }}
}}
""")
    proc = subprocess.Popen(
        [str(UNSHARE), "-m", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs tmpfs /run && exec {CHARON}"],
        env={**os.environ, "STRONGSWAN_CONF": str(conf)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if log.exists() and "spawning" in log.read_text(errors="replace"):
                break
            if proc.poll() is not None:
                raise RuntimeError("charon exited")
            time.sleep(0.05)
        else:
            raise RuntimeError("charon did not start")
        yield Responder(port, natt, log)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
