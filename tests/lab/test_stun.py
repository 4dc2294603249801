"""The opt-in stun probe end to end: coturn (a real STUN server) on labvpn's address, UDP 3478,
probed through ``blockwatch run`` with ``[probes] probes = ["stun"]`` from both clients.

Scenario ``none``: both clients get a Binding success, ``ok``. Scenario ``vpn`` drops UDP 3478
to labvpn (among its VPN ports): alone, the censored client's silent server is
``inconclusive`` (a dead server is silent too); with the control client's sweep in the same
database and ``[analysis] control_vantages``, ``stun_blocked`` and the service blocked at
layer stun. The probe never stores the address the server saw (the vantage's own)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blockwatch.lab.runner import service_verdicts
from blockwatch.lab.services import lab_catalogue
from blockwatch.lab.topology import CLIENT
from blockwatch.lab.topology import CONTROL as CONTROL_CLIENT
from blockwatch.lab.vpn import LABVPN, STUN_PORT

from .conftest import Lab
from .test_vpn import CONTROL, run_labvpn

ADDRESS = lab_catalogue().address[LABVPN]
TARGET = f"udp://{ADDRESS}:{STUN_PORT}"
CLIENT_ADDRESSES = (CLIENT, CONTROL_CLIENT)  # what the server sees (the vantage's address)


def stun_rows(lab: Lab, client: str, db: Path, extra: str = "") -> tuple[str, list[Any]]:
    cfg = lab.config(client, db, probes=["stun"])
    cfg.write_text(cfg.read_text() + extra)
    run_id, rows = run_labvpn(lab, client, cfg)
    assert [r["target"] for r in rows] == [TARGET], rows  # only the STUN endpoint is swept
    return run_id, rows


def observation(row: dict[str, Any]) -> dict[str, Any]:
    [o] = [o for o in row["observations"] if o["layer"] == "stun"]
    return o


def test_stun_server_answers_both_clients_and_their_addresses_are_not_kept(lab: Lab) -> None:
    lab.use("none")
    for client in ("censored", "control"):
        db = lab.tmp / f"stun-none-{client}.db"
        run_id, [row] = stun_rows(lab, client, db)
        o = observation(row)
        assert (o["result"], row["failure"], row["verdict"]) == ("binding_success", None, "ok")
        assert "XOR-MAPPED-ADDRESS" in o["attributes"]
        assert not any(a in str(row) for a in CLIENT_ADDRESSES), row
        v = service_verdicts(db, run_id)[LABVPN]
        assert (v.verdict, v.layer or None) == ("ok", None), v


def test_dropped_stun_is_blocked_against_the_control(lab: Lab) -> None:
    lab.use("vpn")
    alone = lab.tmp / "stun-alone.db"
    run_id, [row] = stun_rows(lab, "censored", alone)
    assert (observation(row)["result"], row["failure"]) == ("no_reply", "generic_timeout_error")
    assert (row["verdict"], row["rule_id"]) == ("inconclusive", "stun.no_control"), row
    assert service_verdicts(alone, run_id)[LABVPN].verdict == "inconclusive"

    shared = lab.tmp / "stun-shared.db"
    _, [control] = stun_rows(lab, "control", shared)
    assert observation(control)["result"] == "binding_success"
    run_id, [row] = stun_rows(lab, "censored", shared, CONTROL)
    assert (row["verdict"], row["rule_id"]) == ("stun_blocked", "stun.failure_vs_control"), row
    v = service_verdicts(shared, run_id)[LABVPN]
    assert (v.verdict, v.layer) == ("blocked", "stun"), v
