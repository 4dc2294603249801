"""The OONI export's envelope fields a run records (architecture, platform, resolver), the peer
certificates of a TLS handshake, and web_connectivity's control keys: each as ooni/spec and
probe-cli write them, checked against the typed models of ``blockwatch.ooni.spec``."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import trustme

from blockwatch.ooni.export import NO_HELPER, UNKNOWN_RESOLVER, ooni_envelope, with_runs
from blockwatch.ooni.models import OONIError
from blockwatch.ooni.spec import conform
from blockwatch.ooni.transform import from_ooni
from blockwatch.probes.model import TLSObservation
from blockwatch.probes.tls import MAX_CERTS, MAX_CHAIN_BYTES, kept_chain
from blockwatch.scheduler.host import architecture, host_facts, platform_name, resolver_ip

START = "2026-01-01T00:00:00.000000Z"


def _row(probe: str = "tls", **extra: Any) -> dict[str, Any]:
    return {"measurement_id": "m1", "run_id": "r1", "probe": probe, "probe_version": "5",
            "target": "example.test:443", "runtime_s": 0.2, "started_at": START,
            "observations": [], **extra}


@pytest.mark.parametrize(("machine", "goarch"), [
    ("x86_64", "amd64"), ("AMD64", "amd64"), ("aarch64", "arm64"), ("arm64", "arm64"),
    ("armv7l", "arm"), ("armv6l", "arm"), ("i686", "386"), ("riscv64", "riscv64"),
    ("sparc64", "unknown"), ("", "unknown")])
def test_architecture_is_named_as_go_names_it(machine: str, goarch: str) -> None:
    assert architecture(machine) == goarch


@pytest.mark.parametrize(("system", "name"), [
    ("Linux", "linux"), ("Darwin", "macos"), ("Windows", "windows"), ("FreeBSD", "freebsd"),
    ("android", "android"), ("SunOS", "unknown"), ("", "unknown")])
def test_platform_is_named_as_ooni_names_it(system: str, name: str) -> None:
    assert platform_name(system) == name


def test_the_resolver_recorded_is_the_one_queries_go_to(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# a comment\nsearch lan\nnameserver not-an-ip\n"
                    "nameserver fe80::1%eth0\nnameserver 192.0.2.53\n")
    assert resolver_ip(["system"], conf) == "fe80::1"  # the first valid one, zone dropped
    assert resolver_ip(["udp://[2001:db8::53]:53", "system"], conf) == "2001:db8::53"
    assert resolver_ip(["tls://9.9.9.9#dns.quad9.net"], conf) == "9.9.9.9"
    assert resolver_ip(["https://dns.example/dns-query"], conf) is None  # never looked up
    assert resolver_ip(["system"], tmp_path / "missing") is None
    (tmp_path / "empty").write_bytes(b"\xff\xfe garbage\n")
    assert resolver_ip(["system"], tmp_path / "empty") is None
    facts = host_facts(["udp://198.51.100.1:53"])
    assert facts["resolver_ip"] == "198.51.100.1"
    assert facts["architecture"] != "" and facts["platform"] != ""


def test_the_envelope_says_what_the_run_recorded() -> None:
    host = {"architecture": "arm64", "platform": "linux", "resolver_ip": "198.51.100.1"}
    rec = ooni_envelope({**_row(), "run_host": host}, "1.0")
    conform(rec)
    assert rec["annotations"]["architecture"] == "arm64"
    assert rec["annotations"]["platform"] == "linux"
    assert (rec["resolver_ip"], rec["resolver_asn"], rec["resolver_network_name"]) == (
        "198.51.100.1", "AS0", "")  # the resolver's network is not looked up
    assert rec["probe_network_name"] == "" and rec["probe_ip"] == "127.0.0.1"
    # a run stored before blockwatch recorded the machine: OONI's "unknown" values
    old = ooni_envelope(_row(), "1.0")
    conform(old)
    assert old["annotations"]["architecture"] == old["annotations"]["platform"] == "unknown"
    assert old["resolver_ip"] == UNKNOWN_RESOLVER
    bad = {**rec, "annotations": {**rec["annotations"], "architecture": "x86_64"}}
    with pytest.raises(OONIError, match="architecture"):
        conform(bad)  # a machine name where Go's is expected
    with pytest.raises(OONIError, match="resolver_asn"):
        conform({**rec, "resolver_asn": None})


def test_each_run_is_asked_once_for_its_host() -> None:
    asked: list[str] = []

    def host_of(run_id: str) -> dict[str, str]:
        asked.append(run_id)
        return {"platform": run_id}

    rows = [_row(run_id=r) for r in ("a", "a", "b", "b", "a")]
    out = list(with_runs(rows, host_of))
    assert [r["run_host"]["platform"] for r in out] == ["a", "a", "b", "b", "a"]
    assert asked == ["a", "b"]


def _chain(n: int) -> list[bytes]:
    ca = trustme.CA()
    for _ in range(n - 2):
        ca = ca.create_child_ca()
    leaf = ca.issue_cert("example.test")
    return [b.bytes() for b in leaf.cert_chain_pems]


def _der(pem: bytes) -> bytes:
    import ssl

    return ssl.PEM_cert_to_DER_cert(pem.decode())


def test_the_chain_kept_is_bounded() -> None:
    ders = [_der(p) for p in _chain(6)]
    assert len(ders) == 5  # a leaf and four CAs (trustme leaves the root out)
    kept = kept_chain(ders)
    assert len(kept) == MAX_CERTS
    assert [base64.b64decode(k) for k in kept] == ders[:MAX_CERTS]
    huge = b"\x30" + b"\x00" * MAX_CHAIN_BYTES  # a hostile server's 16 KB "certificate"
    assert kept_chain([ders[0], huge, ders[1]]) == kept_chain(ders[:1])
    assert kept_chain([]) == ()


def test_peer_certificates_are_exported_and_imported_back() -> None:
    ders = [_der(p) for p in _chain(3)]
    obs = TLSObservation(address="2001:db8::1", port=443, sni="example.test", t0=0.1, t=0.2,
                         version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256",
                         peer_chain_sha256=tuple(hashlib.sha256(d).hexdigest() for d in ders),
                         peer_chain_der=kept_chain(ders), verified=True)
    from dataclasses import asdict

    rec = ooni_envelope(_row(observations=[asdict(obs)]), "1.0")
    conform(rec)
    (hs,) = rec["test_keys"]["tls_handshakes"]
    assert [c["format"] for c in hs["peer_certificates"]] == ["base64", "base64"]
    assert [base64.b64decode(c["data"]) for c in hs["peer_certificates"]] == ders
    # read as an OONI record (its x_blockwatch part removed): the chain is kept again
    foreign = json.loads(json.dumps(rec))
    foreign["software_name"] = "ooniprobe-cli"
    del foreign["test_keys"]["x_blockwatch"]
    imported = from_ooni(foreign, {})
    (tls,) = [o for m in imported.measurements for o in m.observations
              if isinstance(o, TLSObservation)]
    assert tls.peer_chain_der == obs.peer_chain_der
    assert tls.peer_chain_sha256 == obs.peer_chain_sha256
    # a handshake stored before the chain was kept: null, as df-006 allows
    older = ooni_envelope(_row(observations=[{**asdict(obs), "peer_chain_der": []}]), "1.0")
    assert older["test_keys"]["tls_handshakes"][0]["peer_certificates"] is None
    bad = json.loads(json.dumps(rec))
    bad["test_keys"]["tls_handshakes"][0]["peer_certificates"][0]["data"] = "not base64!"
    with pytest.raises(OONIError, match="peer_certificates"):
        conform(bad)


def test_web_connectivity_says_why_it_has_no_control() -> None:
    rec = ooni_envelope(_row("http", verdict="ok", target="http://example.test/"), "1.0")
    conform(rec)
    tk = rec["test_keys"]
    assert tk["control"] is None and tk["control_failure"] == NO_HELPER
    assert tk["accessible"] is True and tk["blocking"] is False  # blockwatch's own verdict
    with pytest.raises(OONIError, match="control_failure"):
        conform({**rec, "test_keys": {**tk, "control_failure": None}})


async def test_a_sweep_records_the_machine_from_its_start_to_its_end(tmp_path: Path) -> None:
    from blockwatch.probes.context import ProbeContext
    from blockwatch.probes.scope import Scope
    from blockwatch.scheduler.sweep import SweepSettings, sweep
    from blockwatch.storage import open_store

    settings = SweepSettings(vantage="v", resolvers=("udp://192.0.2.53:53",))
    with open_store(f"sqlite:///{tmp_path / 'r.db'}") as store:
        outcome = await sweep(store, [], [], ProbeContext(scope=Scope.loopback()), settings)
        stored = store.get_run(outcome.run.id)
    assert stored is not None and stored.status == "complete"
    assert stored.summary["host"] == {"architecture": architecture(), "platform": platform_name(),
                                      "resolver_ip": "192.0.2.53"}
    assert stored.summary["measurements"] == 0  # the counts beside it, as before
