"""Evidence that needs no control vantage, seen end to end in the lab (scenario ``methods``):

* a DNS query to the lab's *silent* address (``[dns] silent``: no host has it) is answered for
  names the censor injects, and only for those, and only on the censored path: the injection is
  attributed to the path, not to a resolver;
* the TLS control SNI tells SNI filtering (``tls_sni_rst``: blocked from one run) from a reset
  of every handshake to an address (``tcp_rst_data``: the control SNI is reset too, so the
  verdict stays inconclusive and says why).
"""

from __future__ import annotations

from typing import Any

from blockwatch.lab.scenario import DNS_METHODS, expected, load
from blockwatch.lab.services import lab_catalogue
from blockwatch.lab.topology import SILENT

CATALOGUE = lab_catalogue()
BY_METHOD = {ms[0]: svc for svc, ms in load("methods", CATALOGUE.services).blocks.items()}
INJECTED, SNI, RST_DATA = (BY_METHOD[m] for m in ("dns_injection", "tls_sni_rst",
                                                  "tcp_rst_data"))
UNTOUCHED = "facebook"


def _silent_rows(sweep: Any, service: str) -> list[dict[str, Any]]:
    return [r for r in sweep.measurements(service)
            if r["probe"] == "dns" and r["target"].endswith(f"@udp://{SILENT}")]


def test_silent_address_attributes_injection_to_the_path(sweeps) -> None:
    kw: dict[str, Any] = {"silent": [SILENT], "probes": ["dns"],
                          "services": [INJECTED, UNTOUCHED]}
    censored = sweeps("methods", "censored", "silent", **kw)
    injected = _silent_rows(censored, INJECTED)
    assert injected, "no query to the silent address was planned"
    for row in injected:
        assert (row["verdict"], row["rule_id"]) == ("dns_blocked",
                                                    "dns.injection.silent_address"), row
        (obs,) = row["observations"]
        (response,) = obs["responses"]
        # the forged answer claims to come from the silent address itself
        assert response["source"] == f"{SILENT}:53"
        assert response["ip_ttl"] == 64  # sent by the censor, one hop away, not forwarded
    quiet = _silent_rows(censored, UNTOUCHED)
    assert quiet and {(r["verdict"], r["rule_id"]) for r in quiet} == {("ok",
                                                                        "dns.silent.quiet")}
    assert censored.services[INJECTED].verdict == "blocked"
    assert censored.services[UNTOUCHED].verdict == "ok"
    # the control client's path has no injector: the same names meet silence there
    control = sweeps("methods", "control", "silent", **kw)
    rows = _silent_rows(control, INJECTED)
    assert rows and {r["rule_id"] for r in rows} == {"dns.silent.quiet"}


def _tls_rows(sweep: Any, service: str) -> list[dict[str, Any]]:
    return [r for r in sweep.measurements(service) if r["probe"] == "tls"]


def test_control_sni_tells_sni_filtering_from_address_blocking(sweeps) -> None:
    got = sweeps("methods", "censored", "sni", probes=["dns", "tcp", "tls"],
                 services=[SNI, RST_DATA, UNTOUCHED])
    sni = _tls_rows(got, SNI)
    assert sni and {(r["verdict"], r["rule_id"]) for r in sni} == {
        ("tls_blocked", "tls.sni_vs_control_sni")}
    for row in sni:
        tls = [o for o in row["observations"] if o["layer"] == "tls"]
        assert tls, row
        for address in {o["address"] for o in tls}:  # each address (the lab is dual-stack)
            real, control = [o for o in tls if o["address"] == address]
            assert (real["failure"], real["control"]) == ("connection_reset", False)
            assert (control["sni"], control["control"], control["failure"]) == (
                "example.com", True, None)
    assert (got.services[SNI].verdict, got.services[SNI].layer) == ("blocked", "tls")
    # every data segment to the address is reset: the harmless name too, so not SNI filtering,
    # and from the TLS measurement alone an address-wide reset cannot be told from a broken
    # server; the follow-up trace (the lab runs as root) sees the reset is not the server's
    rst = _tls_rows(got, RST_DATA)
    assert rst and {(r["verdict"], r["rule_id"]) for r in rst} == {
        ("inconclusive", "failure.no_control")}
    assert all("control SNI example.com failed too" in r["evidence"] for r in rst)
    traces = [r for r in got.measurements(RST_DATA) if r["probe"] == "trace"]
    assert traces and {r["rule_id"] for r in traces} == {"raw.forged_rst.tls"}, traces
    assert (got.services[RST_DATA].verdict, got.services[RST_DATA].layer) == ("blocked", "tls")
    assert {r["verdict"] for r in _tls_rows(got, UNTOUCHED)} == {"ok"}


def test_silent_address_leaves_each_dns_method_its_verdict(sweeps) -> None:
    """Issue #13 (1): with ``[dns] silent`` configured, the quiet answers there (``ok`` for
    that query) do not make DNS blocking ``partial``: every DNS method keeps the verdict and
    layer it has without a silent address."""
    services = [BY_METHOD[m] for m in sorted(DNS_METHODS)]
    got = sweeps("methods", "censored", "silentall", silent=[SILENT], probes=["dns"],
                 services=services)
    for method in sorted(DNS_METHODS):
        service = BY_METHOD[method]
        assert _silent_rows(got, service), method  # the silent address was asked
        exp = expected((method,), CATALOGUE.services[service].exclusive_prefixes)
        v = got.services[service]
        assert (v.verdict, v.layer or None) == (exp.verdict, exp.layer), (method, v)
