"""``blockwatch export --format ooni`` of a lab sweep: every record conforms to ooni/spec's typed
models (``blockwatch.ooni.spec``; web measurements also to the web_connectivity model the
importer reads OONI's with), and ``blockwatch import ooni`` reads every record back, each kind
of measurement as it was stored.

The sweep is the golden lab database (``tests/data/golden``: 5,147 measurements of a lab sweep
with every probe kind, written by blockwatch in the namespace lab), so no lab is built here.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from blockwatch.ooni.export import ooni_envelope
from blockwatch.ooni.export_keys import endpoint, resolver_of
from blockwatch.ooni.models import OONIError, WebConnectivity, parse
from blockwatch.ooni.spec import conform
from blockwatch.probes.model import observation_from_dict
from blockwatch.storage import open_store

GOLDEN = Path(__file__).parent / "data" / "golden" / "blockwatch.db.gz"
BLOCKWATCH = str(Path(sys.executable).parent / "blockwatch")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The golden sweep's database and its OONI export (written by the CLI, as a user would)."""
    d = tmp_path_factory.mktemp("ooni-export")
    db = d / "golden.db"
    with gzip.open(GOLDEN, "rb") as src, db.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    open_store(f"sqlite:///{db}").close()  # brought to today's schema
    cfg = d / "bw.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:///{db}"\n')
    out = d / "sweep.ooni"
    done = subprocess.run([BLOCKWATCH, "export", "-c", str(cfg), "-f", "ooni", "-o", str(out)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return db, out


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_exported_record_conforms(exported: tuple[Path, Path]) -> None:
    _db, out = exported
    found = records(out)
    assert len(found) == 5147
    kinds = Counter(r["test_name"] for r in found)
    assert kinds["web_connectivity"] == 580  # every http measurement
    assert {"blockwatch_dns", "blockwatch_tcp", "blockwatch_tls", "blockwatch_openvpn",
            "blockwatch_tor", "blockwatch_ikev2", "blockwatch_trace"} <= set(kinds)
    for r in found:
        conform(r)  # raises OONIError naming the field
        if r["test_name"] == "web_connectivity":
            parse(WebConnectivity, r)
        assert r["software_version"][:1].isdigit()  # blockwatch's version, never another's
        assert r["test_start_time"] <= r["measurement_start_time"]
    # the golden database holds OONI imports too: their software is named, not claimed
    assert any(r["annotations"].get("measured_by", "").startswith("ooniprobe") for r in found)
    # what the spec's form says, seen in the data: relative DNS times, no scheme, IPv6
    # bracketed, IANA cipher names (the golden sweep stored OpenSSL's), a version per handshake
    queries = [q for r in found for q in r["test_keys"]["queries"]]
    assert queries and all(abs(q["t"]) < 600 for q in queries if q["t"] is not None)
    assert all("://" not in q["resolver_address"] for q in queries if q["engine"] != "doh")
    assert any(q["rcode"] == 3 for q in queries)  # NXDOMAIN from the lab's censor
    tls = [h for r in found for h in r["test_keys"]["tls_handshakes"]]
    assert any(h["address"].startswith("[fd00:") for h in tls)
    assert all(h["cipher_suite"] is None or h["cipher_suite"].startswith("TLS_") for h in tls)
    blocking = Counter(r["test_keys"]["blocking"] for r in found
                       if r["test_name"] == "web_connectivity")
    assert blocking[False] and {"dns", "http-failure"} & set(blocking)
    runs = {r["report_id"] for r in found}
    assert len({r["test_start_time"] for r in found}) <= len(runs)  # one per run


def test_a_record_that_breaks_the_spec_is_named() -> None:
    row = {"measurement_id": "m", "run_id": "r", "probe": "tcp", "probe_version": "1",
           "target": "[::1]:443", "runtime_s": 0.1, "started_at":
           "2026-01-01T00:00:00.000000Z", "observations": [
               {"layer": "tcp", "address": "::1", "port": 443, "t0": 0.0, "t": 0.1}]}
    good = ooni_envelope(row, "1.0")
    conform(good)
    assert good["test_keys"]["tcp_connect"][0]["ip"] == "::1"
    bad = json.loads(json.dumps(good))
    bad["test_keys"]["tcp_connect"][0]["t"] = 1.8e9  # an epoch time where a relative one goes
    with pytest.raises(OONIError, match=r"tcp_connect\.0\.t"):
        conform(bad)
    bad = {**good, "software_version": ""}
    with pytest.raises(OONIError, match="software_version"):
        conform(bad)
    assert endpoint("fd00::1", 443) == "[fd00::1]:443" and endpoint("1.2.3.4", 53) == "1.2.3.4:53"
    assert resolver_of("udp://[fd00::53]:53") == ("udp", "[fd00::53]:53")
    assert resolver_of("tls://9.9.9.9") == ("dot", "9.9.9.9:853")
    assert resolver_of("https://dns.example/dns-query") == ("doh", "https://dns.example/dns-query")
    assert resolver_of("system") == ("system", "")


PER_KIND = 25  # the whole export re-imports too (5,147 of 5,147, 48 s): too long for CI


def test_every_record_kind_imports_back_as_it_was_stored(exported: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    db, out = exported
    taken: Counter[str] = Counter()
    sample = tmp_path / "sample.ooni"  # the .ooni name blockwatch export suggests
    with sample.open("w") as fh:
        for line in out.read_text().splitlines():
            name = json.loads(line)["test_name"]
            if taken[name] < PER_KIND:
                taken[name] += 1
                fh.write(line + "\n")
    cfg = tmp_path / "bw.toml"
    new = tmp_path / "new.db"
    cfg.write_text(f'[storage]\nurl = "sqlite:///{new}"\n')
    done = subprocess.run([BLOCKWATCH, "import", "ooni", "-c", str(cfg), str(sample)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "skipped" not in done.stderr.replace("0 skipped", ""), done.stderr
    with open_store(f"sqlite:///{db}", read_only=True) as before, \
            open_store(f"sqlite:///{new}", read_only=True) as after:
        ids = {json.loads(line)["annotations"]["measurement_id"]
               for line in sample.read_text().splitlines()}
        original = Counter(_same(r) for r in before.export_rows() if r["measurement_id"] in ids)
        imported = Counter(_same(r) for r in after.export_rows())
    assert sum(imported.values()) == sum(taken.values()) == len(ids)
    assert imported == original
    assert {"openvpn", "tor", "ikev2", "trace", "http", "dns", "tcp", "tls"} <= {
        json.loads(k)["probe"] for k in imported}  # VPN and Tor records too


FIELDS = ("probe", "probe_version", "target", "target_json", "started_at", "runtime_s",
          "failure", "failed_operation", "observations")


def _same(row: dict[str, Any]) -> str:
    """What a round trip keeps: everything of the measurement but its ids and vantage (the
    observations as this version reads them: stored JSON lacks fields added since)."""
    kept = {f: row[f] for f in FIELDS}
    kept["observations"] = [dataclasses.asdict(observation_from_dict(o))  # type: ignore[call-overload]
                            for o in row["observations"]]
    return json.dumps(kept, sort_keys=True)
