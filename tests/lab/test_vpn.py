"""The lab's real VPN servers (service ``labvpn``: Debian's OpenVPN over UDP 1194 and TCP 1194,
OpenVPN with tls-auth over UDP 1195, strongSwan's charon on UDP 500 and 4500), probed through
the real ``blockwatch run`` CLI from both clients and read back from the stored results.

Under scenario ``vpn`` the censor drops UDP to those ports and resets the first data segment
of a TCP connection to labvpn's address: from the censored client the handshakes get no reply
or a reset; with the control client's sweep in the same database and ``[analysis]
control_vantages = ["lab-control"]`` each is ``vpn_blocked`` and the service ``blocked`` at
layer vpn. A tls-auth server probed without its key is ``unverifiable``, never blocked."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from blockwatch.lab.runner import service_verdicts
from blockwatch.lab.services import lab_catalogue
from blockwatch.lab.vpn import LABVPN, toml_entries

from .conftest import BLOCKWATCH, Lab, blockwatch

ADDRESS = lab_catalogue().address[LABVPN]
TARGETS = {f"udp://{ADDRESS}:1194": "openvpn", f"tcp://{ADDRESS}:1194": "openvpn",
           f"udp://{ADDRESS}:1195": "openvpn", f"udp://{ADDRESS}:500": "ikev2",
           f"udp://{ADDRESS}:4500": "ikev2", f"tcp://{ADDRESS}:9001": "tor"}
CONTROL = '\n[analysis]\ncontrol_vantages = ["lab-control"]\n'


def run_labvpn(lab: Lab, client: str, cfg: Path) -> tuple[str, list[dict[str, Any]]]:
    """`blockwatch run --service labvpn` inside the client's namespace; the stored rows."""
    role = "client" if client == "censored" else "control"
    done = subprocess.run(["ip", "netns", "exec", lab.ns(role), BLOCKWATCH, "run", "--config",
                           str(cfg), "--service", LABVPN, "--json"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    run_id = str(json.loads(done.stdout.splitlines()[0])["run_id"])
    rows = [json.loads(line) for line in blockwatch(
        "export", "--config", str(cfg), "--format", "jsonl", "--run", run_id).stdout.splitlines()]
    return run_id, rows


def results(rows: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """target -> (probe, the VPN observation's result)."""
    out = {}
    for r in rows:
        obs = [o for o in r["observations"] if o.get("layer") == "vpn"]
        assert len(obs) == 1, r
        out[r["target"]] = (r["probe"], obs[0]["result"])
    return out


def test_vpn_servers_reachable_from_both_clients(lab: Lab) -> None:
    lab.use("none")
    for client in ("censored", "control"):
        db = lab.tmp / f"vpn-none-{client}.db"
        run_id, rows = run_labvpn(lab, client, lab.config(client, db))
        assert results(rows) == {t: (p, "reachable") for t, p in TARGETS.items()}, client
        tls_auth = next(r for r in rows if r["target"] == f"udp://{ADDRESS}:1195")
        assert ["tls_auth", "yes"] in tls_auth["observations"][0]["details"]
        assert {r["failure"] for r in rows} == {None}
        v = service_verdicts(db, run_id)[LABVPN]
        assert (v.verdict, v.layer or None) == ("ok", None), (client, v)


def test_dropped_and_reset_vpn_is_blocked_against_the_control(lab: Lab) -> None:
    lab.use("vpn")
    alone = lab.tmp / "vpn-alone.db"
    run_id, rows = run_labvpn(lab, "censored", lab.config("censored", alone))
    want = {t: (p, "reset" if t.startswith("tcp://") else "no_reply")
            for t, p in TARGETS.items()}
    assert results(rows) == want
    # without a control a silent or resetting server could be a dead one
    assert {r["verdict"] for r in rows} == {"inconclusive"}
    v = service_verdicts(alone, run_id)[LABVPN]
    assert (v.verdict, v.layer) == ("inconclusive", "vpn"), v

    shared = lab.tmp / "vpn-shared.db"
    _, control_rows = run_labvpn(lab, "control", lab.config("control", shared))
    assert results(control_rows) == {t: (p, "reachable") for t, p in TARGETS.items()}
    censored = lab.config("censored", shared)
    censored.write_text(censored.read_text() + CONTROL)
    run_id, rows = run_labvpn(lab, "censored", censored)
    assert results(rows) == want
    assert {(r["verdict"], r["rule_id"]) for r in rows} == {
        ("vpn_blocked", "vpn.failure_vs_control")}, rows
    v = service_verdicts(shared, run_id)[LABVPN]
    assert (v.verdict, v.layer) == ("blocked", "vpn"), v


def test_tls_auth_server_without_key_is_unverifiable_never_blocked(lab: Lab) -> None:
    """Even with its port dropped and a control that completed the keyed handshake there."""
    lab.use("vpn")
    db = lab.tmp / "vpn-nokey.db"
    _, control_rows = run_labvpn(lab, "control", lab.config("control", db))
    assert results(control_rows)[f"udp://{ADDRESS}:1195"] == ("openvpn", "reachable")
    cfg = lab.config("censored", db, vpn_key=None)
    nokey = toml_entries([{"service": LABVPN, "name": "openvpn-tls-auth-nokey",
                           "protocol": "openvpn", "host": ADDRESS, "port": 1195,
                           "transport": "udp", "options": {"tls_auth": "yes"}}])
    cfg.write_text(cfg.read_text() + "\n".join(nokey) + "\n" + CONTROL)
    run_id, rows = run_labvpn(lab, "censored", cfg)
    row = next(r for r in rows if r["target"] == f"udp://{ADDRESS}:1195")
    assert results([row])[row["target"]] == ("openvpn", "unverifiable")
    assert (row["verdict"], row["rule_id"]) == ("inconclusive", "vpn.unverifiable"), row
    # the other (dropped) labvpn endpoints are blocked against the control; this one is not
    others = {r["verdict"] for r in rows if r is not row}
    assert others == {"vpn_blocked"}
    assert service_verdicts(db, run_id)[LABVPN].verdict == "blocked"
