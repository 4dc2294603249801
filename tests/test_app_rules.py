"""Issue #13 (8): the messaging apps judged part by part, as OONI's experiments judge them.

Runs built by hand with the shipped catalogue's WhatsApp, Telegram, Signal and Messenger: this
vantage ("home") fails where the test says, a control vantage ("vps") connects and fetches
everywhere, so every failure is blocking evidence at its endpoint; the service verdict then
says which part of the app is blocked.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import pytest
from judging import judge_run

from blockwatch.probes import failures as F
from blockwatch.probes.catalogue import load_catalogue
from blockwatch.probes.model import (
    DNSAnswer,
    DNSObservation,
    DNSResponse,
    HTTPObservation,
    Measurement,
    Target,
    TCPObservation,
)
from blockwatch.probes.runner import new_id

CAT = load_catalogue()
CONTROL_RESOLVER = "udp://192.0.2.53:53"
ADDRESS = {"telegram": "149.154.167.51", "whatsapp": "157.240.1.53",
           "signal": "13.248.212.111", "messenger": "157.240.1.35"}


def tcp(service: str, endpoint: str, vantage: str, failure: str | None) -> Measurement:
    host, _, port = endpoint.rpartition(":")
    address = host if host[0].isdigit() else ADDRESS[service]
    obs = TCPObservation(address=address, port=int(port), t0=0.0, t=0.1, failure=failure)
    return Measurement(id=new_id(), run_id="r", vantage=vantage,
                       target=Target(service=service, probe="tcp", host=host, port=int(port)),
                       probe_version="1", started_at=dt.datetime.now(dt.UTC), runtime_s=0.1,
                       observations=(obs,), failure=failure,
                       failed_operation="connect" if failure else None)


def fetch(service: str, url: str, vantage: str, failure: str | None) -> Measurement:
    obs = HTTPObservation(url=url, t0=0, t=0.1, failure=failure,
                          **({} if failure else {"status": 200, "body_length": 900,
                                                 "title": "Web"}))
    host = url.split("/")[2]
    return Measurement(id=new_id(), run_id="r", vantage=vantage,
                       target=Target(service=service, probe="http", host=host, url=url),
                       probe_version="2", started_at=dt.datetime.now(dt.UTC), runtime_s=0.1,
                       observations=(obs,), failure=failure,
                       failed_operation="tls_handshake" if failure else None)


def lookup(service: str, host: str, resolver: str, *, nxdomain: bool) -> Measurement:
    response = DNSResponse(t=0.01, source="127.0.0.1:53", id=1, flags=0x8183 if nxdomain
                           else 0x8180, rcode="NXDOMAIN" if nxdomain else "NOERROR",
                           answers=() if nxdomain else (DNSAnswer(rtype="A",
                                                                  value=ADDRESS[service],
                                                                  ttl=60),))
    failure = F.DNS_NXDOMAIN if nxdomain else None
    obs = DNSObservation(resolver=resolver, transport="udp", qname=host, qtype="A", t0=0.0,
                         responses=(response,), failure=failure)
    return Measurement(id=new_id(), run_id="r", vantage="home",
                       target=Target(service=service, probe="dns", host=host, resolver=resolver),
                       probe_version="3", started_at=dt.datetime.now(dt.UTC), runtime_s=0.1,
                       observations=(obs,), failure=failure,
                       failed_operation="resolve" if nxdomain else None)


def run(service: str, failing: Iterable[str] = (), extra: Iterable[Measurement] = ()) -> object:
    """Every endpoint and URL of ``service`` measured from both vantages; ``failing``: the
    endpoints and URLs that fail from home (a reset: TCP's, or in the TLS handshake)."""
    bad = set(failing)
    s = CAT[service]
    ms = [*extra]
    for endpoint in (str(e) for e in s.endpoints):
        ms.append(tcp(service, endpoint, "home", F.CONNECTION_RESET if endpoint in bad else None))
        ms.append(tcp(service, endpoint, "vps", None))
    for url in s.urls:
        ms.append(fetch(service, url, "home", F.CONNECTION_RESET if url in bad else None))
        ms.append(fetch(service, url, "vps", None))
    out = judge_run(ms, {service: s}, [CONTROL_RESOLVER], control_vantages=["vps"])
    return next(v for v in out if v.measurement_id is None and v.service == service)


def test_telegram_web_blocked_while_its_data_centres_answer_is_partial() -> None:
    """Without the app rule every working measurement (TCP to the data centres) lies below the
    blocked layer and the service would be called blocked; the app works."""
    v = run("telegram", ["https://web.telegram.org/"])
    assert (v.verdict, v.rule_id) == ("partial", "service.app_degraded"), v
    assert v.evidence.startswith("data centres ok; web blocked")
    assert v.details["parts"]["web"] == {"state": "blocked", "blocked_hosts": ["web.telegram.org"]}


def test_telegram_partly_blocked_data_centres_are_named() -> None:
    """ooni/probe#2466: some data centres blocked (both ports), the others answer."""
    dcs = [f"{ip}:{port}" for ip in ("149.154.175.50", "149.154.167.51") for port in (80, 443)]
    v = run("telegram", dcs)
    assert (v.verdict, v.rule_id) == ("partial", "service.app_degraded"), v
    assert v.evidence.startswith("data centres blocked at 2 of 6 hosts "
                                 "(149.154.175.50, 149.154.167.51)"), v.evidence
    # one port of a data centre still answers: that data centre works for the app
    v = run("telegram", ["149.154.175.50:80"])
    assert v.rule_id == "service.partial", v


def test_telegram_with_every_data_centre_blocked_is_blocked_even_if_the_web_loads() -> None:
    v = run("telegram", [str(e) for e in CAT["telegram"].endpoints])
    assert (v.verdict, v.rule_id, v.layer) == ("blocked", "service.app_blocked", "tcp"), v
    assert "Telegram cannot reach any of its data centres" in v.evidence


def test_whatsapp_chat_hosts_blocked_on_both_ports_degrade_the_app() -> None:
    hosts = ["e3.whatsapp.net", "e7.whatsapp.net"]
    v = run("whatsapp", [f"{h}:{p}" for h in hosts for p in (443, 5222)])
    assert (v.verdict, v.rule_id) == ("partial", "service.app_degraded"), v
    assert v.details["parts"]["chat endpoints"] == {"state": "degraded", "blocked_hosts": hosts}
    assert v.details["parts"]["web"]["state"] == "ok"


def test_whatsapp_registration_blocked_alone_is_partial() -> None:
    v = run("whatsapp", ["https://v.whatsapp.net/v2/register"])
    assert (v.verdict, v.rule_id) == ("partial", "service.app_degraded"), v
    assert "registration blocked" in v.evidence


def test_one_signal_backend_host_blocked_blocks_signal() -> None:
    """OONI's signal_backend_status: blocked when any backend endpoint fails."""
    v = run("signal", ["storage.signal.org:443"])
    assert (v.verdict, v.rule_id, v.layer) == ("blocked", "service.app_blocked", "tcp"), v
    assert v.evidence.startswith("backend blocked at storage.signal.org")


def test_messenger_endpoint_whose_name_does_not_resolve_blocks_messenger() -> None:
    """OONI's facebook_dns_blocking: one endpoint's DNS answer is blocking; its TCP works (the
    control's address), but the app's resolver does not give it."""
    host = "edge-mqtt.facebook.com"
    extra = [lookup("messenger", host, "system", nxdomain=True),
             lookup("messenger", host, CONTROL_RESOLVER, nxdomain=False)]
    v = run("messenger", extra=extra)
    assert (v.verdict, v.rule_id, v.layer) == ("blocked", "service.app_blocked", "dns"), v
    assert v.details["parts"]["endpoints"]["blocked_hosts"] == [host]


@pytest.mark.parametrize("service", ["whatsapp", "telegram", "signal", "messenger"])
def test_nothing_blocked_is_ok_and_failures_without_a_control_are_not_blocking(
        service: str) -> None:
    assert run(service).verdict == "ok"
    s = CAT[service]
    alone = [tcp(service, str(e), "home", F.GENERIC_TIMEOUT) for e in s.endpoints]
    out = judge_run(alone, {service: s}, [CONTROL_RESOLVER])
    v = next(v for v in out if v.measurement_id is None)
    assert v.verdict == "inconclusive", v
