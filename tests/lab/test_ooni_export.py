"""A real lab sweep (the ``methods`` scenario's, shared with the other lab tests) as the issue
asks: every completed TLS handshake has its version and an IANA cipher suite (nginx speaks
HTTP/2, whose SETTINGS frame follows the handshake at once), and ``blockwatch export --format
ooni`` of the sweep conforms to ooni/spec's models and imports back, every record."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from blockwatch.lab.topology import CENSOR_DOWN
from blockwatch.ooni.models import WebConnectivity, parse
from blockwatch.ooni.spec import conform
from blockwatch.scheduler.host import architecture, platform_name

from .conftest import Lab, Sweep, blockwatch


def test_a_lab_sweep_records_tls_facts_and_exports_to_ooni(
        lab: Lab, sweeps: Callable[..., Sweep], tmp_path: Path) -> None:
    got = sweeps("methods", "censored")
    handshakes = [o for r in got.rows for o in r["observations"] if o["layer"] == "tls"]
    done = [h for h in handshakes if h["failure"] is None or h["verify_error"]]
    assert done, "no completed handshake in the sweep"
    assert all(h["version"] in ("TLSv1.2", "TLSv1.3") for h in done), [
        (h["sni"], h["version"]) for h in done if not h["version"]]
    assert all(h["cipher"].startswith("TLS_") for h in done)

    cfg = lab.config("censored", lab.tmp / "methods-censored.db")
    out = tmp_path / "sweep.ooni"
    blockwatch("export", "--config", str(cfg), "--format", "ooni", "--run", got.run_id,
               "-o", str(out))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(got.rows)
    for r in records:
        conform(r)
        if r["test_name"] == "web_connectivity":
            parse(WebConnectivity, r)
    # the run recorded the machine and its resolver (the censored client's, the censor's
    # downstream address), and the handshakes their certificates (the lab CA's leaf)
    assert {(r["annotations"]["architecture"], r["annotations"]["platform"], r["resolver_ip"])
            for r in records} == {(architecture(), platform_name(), CENSOR_DOWN)}
    certs = [h["peer_certificates"] for r in records for h in r["test_keys"]["tls_handshakes"]
             if h["failure"] is None and not h["x_control_sni"]]
    assert certs and all(c and c[0]["format"] == "base64" for c in certs)
    assert all(r["test_keys"]["control_failure"] for r in records
               if r["test_name"] == "web_connectivity")
    new = tmp_path / "bw.toml"
    new.write_text(f'[storage]\nurl = "sqlite:///{tmp_path / "imported.db"}"\n')
    imported = blockwatch("import", "ooni", "--config", str(new), str(out))
    assert f"imported {len(records)} OONI measurements as {len(records)} blockwatch " \
           "measurements; 0 already imported; 0 skipped" in imported.stderr, imported.stderr
