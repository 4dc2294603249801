"""VPN endpoints from the config, end to end through `blockwatch run`: a real OpenVPN server
with tls-auth on loopback, the key given by file path, and the key nowhere in the results."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from openvpn_server import OPENVPN, openvpn_server

from blockwatch.config import ConfigError, parse_config

BLOCKWATCH = str(Path(sys.executable).parent / "blockwatch")
needs_openvpn = pytest.mark.skipif(
    OPENVPN is None and not os.environ.get("BLOCKWATCH_REQUIRE_LAB"),
    reason="Debian package openvpn not installed (bash scripts/install-lab-deps.sh)")


def config(tmp: Path, port: int, key: Path | None, **extra: str) -> Path:
    key_line = f'key_file = "{key}"\n' if key else ""
    opts = ", ".join(f'{k} = "{v}"' for k, v in extra.items())
    path = tmp / "vpn.toml"
    path.write_text(f"""consent = true
[storage]
url = "sqlite:///{tmp / 'r.db'}"
[timeouts]
tcp = 1.5
[dns]
resolvers = ["udp://127.0.0.1:9"]
controls = []
[probes]
scope = ["127.0.0.0/8"]
services = ["myvpn"]
probes = ["vpn"]
[baseline]
endpoints = []
[[vpn]]
name = "myvpn"
protocol = "openvpn"
host = "127.0.0.1"
port = {port}
transport = "udp"
options = {{ {opts} }}
{key_line}""")
    return path


@needs_openvpn
def test_openvpn_with_tls_auth_key_from_config(tmp_path: Path) -> None:
    with openvpn_server(tmp_path, tls_auth=True) as server:
        assert server.tls_auth_key is not None
        cfg = config(tmp_path, server.port, server.tls_auth_key, tls_auth="yes")
        done = subprocess.run([BLOCKWATCH, "run", "--config", str(cfg), "--json"],
                              capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["probe"], r["failure"], r["verdict"]) for r in rows] == [("openvpn", None, "ok")]
    vpn = rows[0]["observations"][-1]
    assert (vpn["layer"], vpn["result"]) == ("vpn", "reachable")
    key_hex = "".join(line for line in server.tls_auth_key.read_text().splitlines()
                      if line and not line.startswith(("#", "-")))[:32]
    with sqlite3.connect(tmp_path / "r.db") as conn:
        dump = "\n".join(conn.iterdump())
    assert key_hex not in dump and key_hex not in done.stdout + done.stderr
    assert str(server.tls_auth_key) not in dump  # not even the path


@needs_openvpn
def test_tls_auth_without_key_is_unverifiable(tmp_path: Path) -> None:
    with openvpn_server(tmp_path, tls_auth=True) as server:
        cfg = config(tmp_path, server.port, None, tls_auth="yes")
        done = subprocess.run([BLOCKWATCH, "run", "--config", str(cfg), "--json"],
                              capture_output=True, text=True, timeout=60, check=False)
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["failure"], r["verdict"], r["rule_id"]) for r in rows] == [
        ("vpn_unverifiable_without_key", "inconclusive", "vpn.unverifiable")]


@pytest.mark.parametrize(("body", "message"), [
    ('protocol = "ipsec"\nhost = "a"', "protocol must be"),
    ('protocol = "openvpn"\nhost = "a"\nkey_file = "/nonexistent/ta.key"', "not a readable"),
    ('protocol = "openvpn"\nhost = "a"\npassword = "x"', "unknown key 'password'"),
])
def test_bad_vpn_config(body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(f"[[vpn]]\nname = \"v\"\n{body}\n", "my.toml")


def _readme_vpn_block() -> str:
    text = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### VPN endpoints (`[[vpn]]`)"):]
    return section[section.index("```toml\n") + 8: section.index("```\n", section.index(
        "```toml\n") + 8)]


def test_the_readmes_vpn_examples_load_one_per_protocol(tmp_path: Path) -> None:
    block = _readme_vpn_block()
    for name in ("ta.key", "wg-peer.conf"):
        (tmp_path / name).write_text("key material\n")
        block = block.replace(f"/etc/blockwatch/{name}", str(tmp_path / name))
    cfg = parse_config(block, str(tmp_path / "bw.toml"))
    catalogue = cfg.catalogue()
    endpoints = [*catalogue["myvpn"].vpn, *catalogue["tor-bridges"].vpn]
    assert {e.protocol for e in endpoints} == {"openvpn", "ikev2", "wireguard", "pptp", "l2tp",
                                               "tor", "obfs4"}
    tcp = next(e for e in endpoints if e.name == "ovpn-tcp-tls-auth")
    assert dict(tcp.options) == {"tls_auth": "yes", "key_direction": "1", "auth": "sha256"}


@pytest.mark.parametrize(("table", "says"), [
    ('options = { tls_auth = "maybe" }', "vpn[0]: options.tls_auth must be one of yes, no"),
    ('options = { natt = "yes" }', "options.natt is not an option of openvpn (openvpn has auth, "
                                   "key_direction, tls_auth, tls_crypt)"),
    ('secret = "x"', "vpn[0]: unknown key 'secret' (the keys are "),
])
def test_a_bad_vpn_table_says_what_is_allowed(table: str, says: str) -> None:
    text = f'[[vpn]]\nname = "v"\nprotocol = "openvpn"\nhost = "vpn.test"\n{table}\n'
    with pytest.raises(ConfigError) as info:
        parse_config(text, "bw.toml").catalogue()
    assert says in str(info.value)


def test_two_vpn_entries_on_one_address_each_get_their_own_key(tmp_path: Path) -> None:
    """Issue #15: an OpenVPN and a WireGuard entry on the same address, port and transport each
    get the key material of their own key_file (once, the WireGuard entry was handed the
    OpenVPN key: secrets were looked up by address alone)."""
    from blockwatch.app import vpn_secrets
    from blockwatch.config import load_config
    from blockwatch.probes.context import secret_key
    from blockwatch.scheduler.plan import vpn_target

    ta, wg = tmp_path / "ta.key", tmp_path / "wg.conf"
    ta.write_bytes(b"openvpn static key")
    wg.write_bytes(b"[Interface]\nPrivateKey = x\n")
    cfg_path = config(tmp_path, 51820, ta)
    cfg_path.write_text(cfg_path.read_text() + f"""
[[vpn]]
name = "myvpn"
protocol = "wireguard"
host = "127.0.0.1"
port = 51820
transport = "udp"
key_file = "{wg}"
""")
    cfg = load_config(str(cfg_path))
    secrets = vpn_secrets(cfg)
    by_protocol = {}
    for service in cfg.catalogue().values():
        for ep in service.vpn:
            if ep.key_file is not None:  # the catalogue's own endpoints have none
                by_protocol[ep.protocol] = secrets[secret_key(vpn_target(service.name, ep))]
    assert by_protocol == {"openvpn": ta.read_bytes(), "wireguard": wg.read_bytes()}
    assert len(secrets) == 2
