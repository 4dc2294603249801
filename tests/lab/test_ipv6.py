"""IPv6 in the lab, end to end through the real ``blockwatch run`` inside the client namespaces.

The lab is dual-stack (``blockwatch.lab.topology``): every service has an AAAA record at both
resolvers and an IPv6 address on the server, the censor's address-based methods hit that address
too, the DNS methods answer AAAA queries, and ``ipv6_broken`` (scenario ``ipv6``: the server's
side drops a service's IPv6 address for everybody while IPv4 works) is never called blocked.
The sweeps of scenarios ``none`` and ``methods`` are the session's shared ones
(tests/lab/conftest.py).
"""

from __future__ import annotations

import ipaddress
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from blockwatch.analysis.verdicts import BLOCKED
from blockwatch.lab.censor import BOGON6
from blockwatch.lab.runner import service_verdicts
from blockwatch.lab.scenario import IPV6, METHODS, expected, expected_control, load
from blockwatch.lab.services import lab_catalogue
from blockwatch.lab.state import Manifest
from blockwatch.lab.topology import CENSOR_DOWN, LAB_NET, LAB_NET6, PUBLIC_RESOLVER, SINKHOLE6

from .conftest import BLOCKWATCH, Lab

CATALOGUE = lab_catalogue()
METHODS_SCENARIO = load("methods", CATALOGUE.services)
BY_METHOD = {ms[0]: svc for svc, ms in METHODS_SCENARIO.blocks.items()}
IPV6_SCENARIO = load("ipv6", CATALOGUE.known())
BROKEN = next(s for s, ms in IPV6_SCENARIO.blocks.items() if "ipv6_broken" in ms)
CLIENTS = ("censored", "control")
# the methods that act on a service's addresses, and the layer where their failure shows
ADDRESS_METHODS = ("tcp_syn_drop", "tcp_rst_syn", "tcp_rst_data", "http_blockpage")
SWEPT = sorted(s for s in CATALOGUE.services if CATALOGUE.hosts_of(s))  # labvpn has no names


def _family(address: str) -> int:
    return ipaddress.ip_address(address).version


def _connections(rows: list[dict[str, Any]], layer: str) -> list[dict[str, Any]]:
    """The TCP connects or TLS handshakes (not the control-SNI ones) of some measurements."""
    return [o for r in rows if r["probe"] in ("tcp", "tls") for o in r["observations"]
            if o["layer"] == layer and not o.get("control")]


def _by_family(observations: list[dict[str, Any]]) -> dict[int, set[str | None]]:
    out: dict[int, set[str | None]] = {4: set(), 6: set()}
    for o in observations:
        out[_family(o["address"])].add(o["failure"])
    return out


# --- AAAA records at both resolvers -----------------------------------------------------------


def _aaaa(rows: list[dict[str, Any]], resolver: str) -> dict[str, list[list[str]]]:
    """host -> the AAAA answers (one list per response) the resolver gave, from dns rows."""
    out: dict[str, list[list[str]]] = {}
    for r in rows:
        if r["probe"] != "dns":
            continue
        for o in r["observations"]:
            if o["layer"] == "dns" and o["qtype"] == "AAAA" and o["resolver"] == f"{resolver}:53":
                out[o["qname"]] = [[a["value"] for a in resp["answers"] if a["rtype"] == "AAAA"]
                                   for resp in o["responses"]]
    return out


@pytest.mark.parametrize("client", CLIENTS)
def test_both_resolvers_answer_aaaa_for_every_name(sweeps, client: str) -> None:
    rows = sweeps("none", client).rows
    tested = f"udp://{CENSOR_DOWN if client == 'censored' else PUBLIC_RESOLVER}"
    for resolver in (tested, f"tcp://{PUBLIC_RESOLVER}"):
        got = _aaaa(rows, resolver)
        want = {h: [[CATALOGUE.address6(CATALOGUE.owner[h])]] for h in got}
        assert got == want, resolver
        # every name the sweep resolved was asked for AAAA at this resolver
        names = {r["target"].split("@")[0] for r in rows if r["probe"] == "dns"}
        assert names and names <= set(got), (resolver, names - set(got))


def test_dns_methods_answer_aaaa_too(sweeps) -> None:
    rows = sweeps("methods", "censored").rows
    isp = f"udp://{CENSOR_DOWN}"

    def answers(method: str) -> tuple[set[str | None], list[list[list[str]]]]:
        svc_rows = [r for r in rows if r["service"] == BY_METHOD[method]]
        obs = [o for r in svc_rows if r["probe"] == "dns" for o in r["observations"]
               if o["qtype"] == "AAAA" and o["resolver"] == f"{isp}:53"]
        assert obs, method
        return {o["failure"] for o in obs}, list(_aaaa(svc_rows, isp).values())

    failures, got = answers("dns_nxdomain")
    assert failures == {"dns_nxdomain_error"} and all(g == [[]] for g in got), got
    failures, got = answers("dns_bogon")  # the answer is stored; the analysis calls it a bogon
    assert failures == {None} and all(g == [[BOGON6]] for g in got), got
    failures, got = answers("dns_poison")
    assert failures == {None} and all(g == [[SINKHOLE6]] for g in got), got
    # the injector answers first with the sinkhole; the real answer follows
    failures, got = answers("dns_injection")
    service = BY_METHOD["dns_injection"]
    assert all(g == [[SINKHOLE6], [CATALOGUE.address6(service)]] for g in got), got
    # the known forged address is IPv4 only: AAAA gets an empty answer
    failures, got = answers("dns_poison_known")
    assert failures == {None} and all(g == [[]] for g in got), got


# --- untouched: IPv6 works from both clients ----------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_tcp_and_tls_over_ipv6_succeed_when_untouched(sweeps, client: str) -> None:
    got = sweeps("none", client)
    for service in SWEPT:
        rows = got.measurements(service)
        six = [o for layer in ("tcp", "tls") for o in _connections(rows, layer)
               if _family(o["address"]) == 6]
        assert {o["layer"] for o in six} == {"tcp", "tls"}, service
        owners = {CATALOGUE.owner[h] for h in CATALOGUE.hosts_of(service)}
        assert {o["address"] for o in six} == {CATALOGUE.address6(o) for o in owners}, service
        assert {o["failure"] for o in six} == {None}, (service, six)
        assert all(o["verified"] for o in six if o["layer"] == "tls"), service


# --- the censor's address-based methods hit both families ---------------------------------------


@pytest.mark.parametrize("method", ADDRESS_METHODS)
def test_address_methods_hit_ipv6_too(sweeps, method: str) -> None:
    m = METHODS[method]
    assert m.layer is not None and m.failure is not None
    service = BY_METHOD[method]
    censored = _connections(sweeps("methods", "censored").measurements(service), m.layer)
    control = _connections(sweeps("methods", "control").measurements(service), m.layer)
    assert _by_family(censored) == {4: {m.failure}, 6: {m.failure}}, censored
    assert _by_family(control) == {4: {None}, 6: {None}}, control


def test_sni_reset_hits_ipv6_too(sweeps) -> None:
    m = METHODS["tls_sni_rst"]
    service = BY_METHOD["tls_sni_rst"]
    rows = sweeps("methods", "censored").measurements(service)
    handshakes = _connections(rows, "tls")
    assert _by_family(handshakes) == {4: {m.failure}, 6: {m.failure}}, handshakes
    # the same addresses complete a handshake for the control name, over both families
    control_sni = [o for r in rows for o in r["observations"] if o.get("control")]
    assert _by_family(control_sni) == {4: {None}, 6: {None}}, control_sni


def test_delay_holds_ipv6_back_too(sweeps) -> None:
    service = BY_METHOD["delay"]
    delay_s = METHODS_SCENARIO.option("delay_ms") / 1000
    for client, slow in (("censored", True), ("control", False)):
        connects = [o for o in _connections(sweeps("methods", client).measurements(service),
                                            "tcp") if o["failure"] is None]
        for family in (4, 6):
            times = [o["t"] - o["t0"] for o in connects if _family(o["address"]) == family]
            assert times, (client, family)
            if slow:
                assert min(times) >= 2 * delay_s * 0.9, (family, times)
            else:
                assert max(times) < delay_s, (family, times)




def test_udp_drop_silences_the_ipv6_address_too(lab: Lab) -> None:
    lab.use("methods")
    port = 51820  # the lab's UDP echo (1194 has a real OpenVPN server on labvpn's address only)
    dropped = CATALOGUE.address6(BY_METHOD["udp_drop"])
    untouched = CATALOGUE.address6("torproject")

    assert lab.udp_echoes("client", dropped, port) == 0
    assert lab.udp_echoes("control", dropped, port) == 3
    assert lab.udp_echoes("client", untouched, port) == 3


# --- broken IPv6 is not censorship ------------------------------------------------------------


def test_ipv6_broken_is_ok_from_both_clients_and_never_blocked(lab: Lab) -> None:
    # inside the lab a connect takes well under a millisecond: a 1 s TCP timeout is plenty, and
    # the dead IPv6 address costs each sweep that much
    kw: dict[str, Any] = {"services": [BROKEN], "timeouts": (2, 1, 2, 3)}
    control = lab.sweep("control", "ipv6", **kw)
    alone = lab.sweep("censored", "ipv6", **kw)
    one_run = expected(IPV6_SCENARIO.blocks[BROKEN], CATALOGUE.known()[BROKEN].exclusive_prefixes)
    assert (one_run.verdict, one_run.layer) == ("ok", None)
    for sweep, want in ((alone, one_run), (control, expected_control(IPV6_SCENARIO, BROKEN))):
        v = sweep.services[BROKEN]
        assert (v.verdict, v.layer or None) == (want.verdict, want.layer), v
        rows = sweep.measurements(BROKEN)
        assert not [r for r in rows if r["verdict"] in BLOCKED], rows
        assert not [r for r in rows if r["failure"]], rows
        # IPv6 is really broken (every connection to it timed out), IPv4 really works
        tcp = _connections(rows, "tcp")
        assert _by_family(tcp) == {4: {None}, 6: {"generic_timeout_error"}}, tcp
        assert {o["address"] for o in tcp if _family(o["address"]) == 6} == {
            CATALOGUE.address6(BROKEN)}
        assert _by_family(_connections(rows, "tls"))[4] == {None}
    # judged against the control client's measurements: still ok, nothing blocked
    db = lab.tmp / "ipv6-control.db"  # where the control client's sweep went
    cfg = lab.config("censored", db, **kw,
                     extra='\n[analysis]\ncontrol_vantages = ["lab-control"]\n')
    done = subprocess.run(["ip", "netns", "exec", lab.ns("client"), BLOCKWATCH, "run",
                           "--config", str(cfg), "--quiet"], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    from blockwatch.storage import open_store

    with open_store(f"sqlite:///{db}") as store:
        run_id = store.runs(limit=1)[0].id
        judged = [v for v in store.verdicts(run_id=run_id) if v.measurement_id is not None]
    v = service_verdicts(db, run_id)[BROKEN]
    assert (v.verdict, v.layer or None) == IPV6["ipv6_broken"].with_control, v
    assert judged and not [j for j in judged if j.verdict in BLOCKED], judged


# --- the scope --------------------------------------------------------------------------------


def test_generated_configs_scope_the_ipv6_prefix_and_nothing_more(lab: Lab) -> None:
    m = Manifest.load(lab.name)
    assert m is not None
    literals = sorted({f"{a}/32" for v in CATALOGUE.literals.values() for a in v})
    for client in CLIENTS:
        config = tomllib.loads(Path(m.info[f"{client}_config"]).read_text("utf-8"))
        scope = config["probes"]["scope"]
        assert scope == [LAB_NET, LAB_NET6, *literals], scope
        six = [e for e in scope if ipaddress.ip_network(e).version == 6]
        assert six == [LAB_NET6]


def test_every_lab_address_is_inside_the_scope(lab: Lab) -> None:
    nets = [ipaddress.ip_network(n) for n in (LAB_NET, LAB_NET6)]
    literals = {a for v in CATALOGUE.literals.values() for a in v}
    seen6 = set()
    for role in ("client", "control", "censor", "server"):
        out = subprocess.run(["ip", "-n", lab.ns(role), "-o", "addr", "show", "scope", "global"],
                             capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            address = ipaddress.ip_interface(line.split()[3]).ip
            if address.version == 6:
                seen6.add(str(address))
            assert str(address) in literals or any(
                address.version == n.version and address in n for n in nets), (role, line)
    # and the IPv6 side is really there: every service's address is on the server
    assert {CATALOGUE.address6(s) for s in CATALOGUE.known()} <= seen6
