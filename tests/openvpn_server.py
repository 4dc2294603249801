"""A real OpenVPN server (Debian's ``openvpn``) on loopback for tests.

Point-to-point TLS server mode with ``--dev null``: no tun device and no root needed, yet the
control channel (the hard reset the probe sends) is OpenVPN's own code. Optional tls-auth.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trustme

OPENVPN = shutil.which("openvpn") or ("/usr/sbin/openvpn" if Path("/usr/sbin/openvpn").exists()
                                      else None)


@dataclass
class OpenVPNServer:
    port: int
    proto: str
    log: Path
    tls_auth_key: Path | None


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_static_key(directory: Path) -> Path:
    assert OPENVPN is not None
    path = directory / "ta.key"
    subprocess.run([OPENVPN, "--genkey", "secret", str(path)], check=True, capture_output=True)
    return path


@contextlib.contextmanager
def openvpn_server(directory: Path, *, proto: str = "udp",
                   tls_auth: bool = False) -> Iterator[OpenVPNServer]:
    assert OPENVPN is not None, "Debian package openvpn is not installed"
    ca = trustme.CA()
    cert = ca.issue_cert("openvpn.test")
    ca.cert_pem.write_to_path(str(directory / "ovpn-ca.pem"))
    cert.private_key_pem.write_to_path(str(directory / "ovpn-key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(directory / "ovpn-cert.pem"))
    port = free_port(socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
    log = directory / f"openvpn-{proto}-{port}.log"
    args = [OPENVPN, "--dev", "null", "--tls-server", "--ca", str(directory / "ovpn-ca.pem"),
            "--cert", str(directory / "ovpn-cert.pem"), "--key", str(directory / "ovpn-key.pem"),
            "--dh", "none", "--local", "127.0.0.1", "--port", str(port),
            "--proto", "udp" if proto == "udp" else "tcp-server", "--verb", "4",
            "--log", str(log)]
    key = None
    if tls_auth:
        key = make_static_key(directory)
        args += ["--tls-auth", str(key), "0"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready = "link local (bound)" if proto == "udp" else "Listening for incoming TCP"
        for _ in range(100):
            if log.exists() and ready in log.read_text(errors="replace"):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"openvpn exited: {log.read_text(errors='replace')[-500:]}")
            time.sleep(0.05)
        else:
            raise RuntimeError("openvpn did not start listening")
        yield OpenVPNServer(port, proto, log, key)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
