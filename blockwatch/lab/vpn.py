"""The lab's real VPN servers: Debian's OpenVPN and strongSwan's charon, in the server namespace.

They serve the lab-only service ``labvpn`` (one address of its own in the server namespace):

* OpenVPN over UDP 1194 and over TCP 1194 (443 is nginx's), and one with tls-auth over UDP 1195
  whose static key is generated at ``up`` (its path is in the manifest, ``info.vpn_key``);
  each runs in server mode (``--mode server``, many clients at once) on a tun device that exists
  only inside the server namespace, with the lab CA's certificate;
* a strongSwan IKEv2 responder (charon) on UDP 500 and 4500, in a private mount namespace with
  its own /run (pid file and control sockets never meet another charon). With no connection
  configured it answers IKE_SA_INIT with NO_PROPOSAL_CHOSEN, an IKE reply like any other;
* coturn as a plain STUN server (``--stun-only``) on UDP 3478, for the opt-in ``stun`` probe
  (labvpn's ``udp://`` endpoint in the clients' ``[[services]]`` table).

The clients' configs name these endpoints as ``[[vpn]]`` entries of service ``labvpn``
(:func:`vpn_entries`), so ``blockwatch run`` probes them from either client.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

LABVPN = "labvpn"
CHARON = "/usr/lib/ipsec/charon"
IKE_PORTS = (500, 4500)
STUN_PORT = 3478  # coturn as a plain STUN server on labvpn's address (the stun probe)


@dataclass(frozen=True, slots=True)
class OpenVPNServer:
    name: str  # the [[vpn]] entry's name and the daemon's role in the manifest
    transport: str
    port: int
    tls_auth: bool = False


OPENVPN_SERVERS = (
    OpenVPNServer("openvpn-udp", "udp", 1194),
    OpenVPNServer("openvpn-tcp", "tcp", 1194),
    OpenVPNServer("openvpn-tls-auth", "udp", 1195, tls_auth=True),
)
UDP_PORTS = sorted({*(s.port for s in OPENVPN_SERVERS if s.transport == "udp"), *IKE_PORTS,
                    STUN_PORT})


def openvpn_argv(server: OpenVPNServer, index: int, address: str, pki: Mapping[str, Path],
                 key: Path) -> list[str]:
    argv = ["openvpn", "--dev", f"bwovpn{index}", "--dev-type", "tun", "--mode", "server",
            "--tls-server", "--ca", str(pki["lab_ca"]), "--cert", str(pki["lab_cert"]),
            "--key", str(pki["lab_key"]), "--dh", "none", "--local", address,
            "--port", str(server.port),
            "--proto", "udp" if server.transport == "udp" else "tcp-server", "--verb", "3"]
    if server.tls_auth:
        argv += ["--tls-auth", str(key), "0"]
    return argv


def charon_conf() -> str:
    """charon on the standard ports, logging to stderr (the lab's log file for it)."""
    return f"""charon {{
  port = {IKE_PORTS[0]}
  port_nat_t = {IKE_PORTS[1]}
  install_routes = no
  install_virtual_ip = no
  load_modular = yes
  # every lab client shares one address and never completes a handshake: with charon's
  # default (5 half-open IKE_SAs per peer for 30 s) back-to-back sweeps would have their
  # IKE_SA_INIT dropped silently, an outage of the lab's own making
  block_threshold = 10000
  cookie_threshold = 10000
  filelog {{
    stderr {{
      flush_line = yes
      default = 1
      ike = 2
    }}
  }}
  plugins {{
    include /etc/strongswan.d/charon/*.conf
  }}
}}
"""


def charon_argv(conf: Path) -> list[str]:
    """``env`` and ``unshare`` exec in turn, so the recorded PID is charon's own. The conf must
    live outside /run, which the private tmpfs hides."""
    return ["env", f"STRONGSWAN_CONF={conf}", "unshare", "-m", "--propagation", "private",
            "sh", "-c", f"mount -t tmpfs tmpfs /run && exec {CHARON}"]


TOR_PORT = 9001


def turnserver_argv(address: str, directory: Path) -> list[str]:
    """coturn answering STUN Binding requests only (no TURN relay, no TLS), its files in the
    lab's directory."""
    return ["turnserver", "--stun-only", "--listening-ip", address, "--listening-port",
            str(STUN_PORT), "--no-tls", "--no-dtls", "--no-cli", "--simple-log",
            "--log-file", "stdout", "--pidfile", str(directory / "turnserver.pid"),
            "--userdb", str(directory / "turndb")]


def stun_service_toml(address: str) -> list[str]:
    """The clients' ``[[services]]`` table of labvpn: its STUN endpoint (the [[vpn]] entries
    join it), swept when the config selects the opt-in ``stun`` probe."""
    return ["[[services]]", f'name = "{LABVPN}"', 'category = "vpn"',
            f'endpoints = ["udp://{address}:{STUN_PORT}"]']


def tor_argv(data_dir: Path, torrc: Path, address: str) -> list[str]:
    """A Tor relay that never leaves the lab: no descriptor published, no exit, no SOCKS; it
    still serves TLS on its OR port, which is what the tor probe tests (it tries to reach the
    directory authorities too, but the server namespace has no route out of the lab)."""
    # everything is on the command line; tor insists on a regular (here empty) torrc file
    return ["tor", "--defaults-torrc", str(torrc), "-f", str(torrc),
            "--DataDirectory", str(data_dir), "--ORPort", f"{address}:{TOR_PORT}",
            "--SocksPort", "0", "--ExitRelay", "0", "--PublishServerDescriptor", "0",
            "--AssumeReachable", "1", "--Nickname", "blockwatchlab", "--ContactInfo", "lab",
            "--RunAsDaemon", "0", "--Log", "notice stdout"]


def vpn_entries(address: str, key: str | None) -> list[dict[str, object]]:
    """The ``[[vpn]]`` entries the lab's client configs carry (the tls-auth one only with its
    key: without it the probe can only say "unverifiable")."""
    out: list[dict[str, object]] = []
    for s in OPENVPN_SERVERS:
        entry: dict[str, object] = {"service": LABVPN, "name": s.name, "protocol": "openvpn",
                                    "host": address, "port": s.port, "transport": s.transport}
        if s.tls_auth:
            if key is None:
                continue
            entry["key_file"] = key
            entry["options"] = {"tls_auth": "yes", "key_direction": "1"}
        out.append(entry)
    for port in IKE_PORTS:
        out.append({"service": LABVPN, "name": f"ikev2-{port}", "protocol": "ikev2",
                    "host": address, "port": port, "transport": "udp"})
    out.append({"service": LABVPN, "name": "tor-relay", "protocol": "tor", "host": address,
                "port": TOR_PORT})
    return out


def toml_entries(entries: list[dict[str, object]]) -> list[str]:
    """``[[vpn]]`` tables as TOML lines (JSON strings and integers are valid TOML values)."""
    lines: list[str] = []
    for e in entries:
        lines.append("[[vpn]]")
        for k, v in e.items():
            if isinstance(v, dict):
                body = ", ".join(f"{ok} = {json.dumps(ov)}" for ok, ov in v.items())
                lines.append(f"{k} = {{ {body} }}")
            else:
                lines.append(f"{k} = {json.dumps(v)}")
    return lines
