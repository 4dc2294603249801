"""Verdict rules: blocking only on evidence, never without a control, never when offline."""

from __future__ import annotations

import datetime as dt

from probes import failures as F
from probes.model import (
    DNSAnswer,
    DNSObservation,
    DNSResponse,
    Measurement,
    Service,
    Target,
)
from probes.runner import new_id
from probes.verdicts import RULES, judge_run

FB = Service(name="facebook", title="Facebook", category="social", domains=("facebook.com",),
             prefixes=("157.240.0.0/16",), exclusive_prefixes=True)
KAKAO = Service(name="kakaotalk", title="KakaoTalk", category="messaging",
                domains=("kakao.com",))
CONTROL = "https://1.1.1.1/dns-query"


def dns(service: str, host: str, resolver: str, *responses: DNSResponse,
        failure: str | None = None) -> Measurement:
    obs = DNSObservation(resolver=resolver, transport="udp", qname=host, qtype="A", t0=0.0,
                         responses=responses, failure=failure)
    return Measurement(id=new_id(), run_id="r", vantage="v",
                       target=Target(service=service, probe="dns", host=host, resolver=resolver),
                       probe_version="1", started_at=dt.datetime.now(dt.UTC), runtime_s=0.1,
                       observations=(obs,), failure=failure,
                       failed_operation="resolve" if failure else None)


def resp(*ips: str, rcode: str = "NOERROR", t: float = 0.01) -> DNSResponse:
    return DNSResponse(t=t, source="127.0.0.1:53", id=1, flags=0x8180, rcode=rcode,
                       answers=tuple(DNSAnswer(rtype="A", value=ip, ttl=60) for ip in ips))


def by_measurement(verdicts: list, m: Measurement):
    return next(v for v in verdicts if v.measurement_id == m.id)


def service_verdict(verdicts: list, name: str):
    return next(v for v in verdicts if v.measurement_id is None and v.service == name)


def test_rule_ids_are_unique_and_explained() -> None:
    assert all(r.why for r in RULES.values())
    assert len(RULES) == len({r.id for r in RULES.values()})


def test_nxdomain_with_working_control_is_dns_blocking() -> None:
    tested = dns("kakaotalk", "kakao.com", "system", resp(rcode="NXDOMAIN"),
                 failure=F.DNS_NXDOMAIN)
    control = dns("kakaotalk", "kakao.com", CONTROL, resp("203.133.167.16"))
    out = judge_run([tested, control], {"kakaotalk": KAKAO}, [CONTROL])
    v = by_measurement(out, tested)
    assert (v.verdict, v.rule_id) == ("dns_blocked", "dns.nxdomain_vs_control")
    assert service_verdict(out, "kakaotalk").verdict == "blocked"


def test_nxdomain_without_control_is_inconclusive() -> None:
    tested = dns("kakaotalk", "kakao.com", "system", resp(rcode="NXDOMAIN"),
                 failure=F.DNS_NXDOMAIN)
    out = judge_run([tested], {"kakaotalk": KAKAO}, [])
    assert by_measurement(out, tested).verdict == "inconclusive"
    assert service_verdict(out, "kakaotalk").verdict == "inconclusive"


def test_nxdomain_on_both_sides_is_down() -> None:
    tested = dns("kakaotalk", "kakao.com", "system", resp(rcode="NXDOMAIN"),
                 failure=F.DNS_NXDOMAIN)
    control = dns("kakaotalk", "kakao.com", CONTROL, resp(rcode="NXDOMAIN"),
                  failure=F.DNS_NXDOMAIN)
    out = judge_run([tested, control], {"kakaotalk": KAKAO}, [CONTROL])
    assert by_measurement(out, tested).verdict == "down"
    assert service_verdict(out, "kakaotalk").verdict == "down"


def test_bogon_with_control_is_blocking() -> None:
    tested = dns("kakaotalk", "kakao.com", "system", resp("10.10.34.35"), failure=F.DNS_BOGON)
    control = dns("kakaotalk", "kakao.com", CONTROL, resp("203.133.167.16"))
    out = judge_run([tested, control], {"kakaotalk": KAKAO}, [CONTROL])
    assert by_measurement(out, tested).rule_id == "dns.bogon_vs_control"


def test_two_different_responses_to_one_query_is_injection() -> None:
    tested = dns("kakaotalk", "kakao.com", "system", resp("8.7.198.45"),
                 resp("203.133.167.16", t=0.03))
    out = judge_run([tested], {"kakaotalk": KAKAO}, [])
    assert by_measurement(out, tested).rule_id == "dns.injection.multiple_responses"


def test_duplicated_identical_response_is_not_injection() -> None:
    tested = dns("kakaotalk", "kakao.com", "system", resp("203.133.167.16"),
                 resp("203.133.167.16", t=0.03))
    out = judge_run([tested], {"kakaotalk": KAKAO}, [])
    assert by_measurement(out, tested).verdict == "ok"


def test_answer_outside_exclusive_prefixes() -> None:
    tested = dns("facebook", "facebook.com", "system", resp("8.7.198.45"))
    good = dns("facebook", "facebook.com", "system", resp("157.240.1.35"))
    out = judge_run([tested, good], {"facebook": FB}, [])
    assert by_measurement(out, tested).rule_id == "dns.outside_expected_prefixes"
    assert by_measurement(out, good).verdict == "ok"
    assert service_verdict(out, "facebook").verdict == "partial"


def test_outside_prefixes_but_control_agrees_is_not_blocking() -> None:
    # a stale catalogue must not make a false "blocked": the control sees the same address
    tested = dns("facebook", "facebook.com", "system", resp("8.7.198.45"))
    control = dns("facebook", "facebook.com", CONTROL, resp("8.7.198.45"))
    out = judge_run([tested, control], {"facebook": FB}, [CONTROL])
    assert by_measurement(out, tested).verdict == "ok"


def test_network_unavailable_never_blocks() -> None:
    tested = dns("kakaotalk", "kakao.com", "system", resp(rcode="NXDOMAIN"),
                 failure=F.DNS_NXDOMAIN)
    control = dns("kakaotalk", "kakao.com", CONTROL, resp("203.133.167.16"))
    out = judge_run([tested, control], {"kakaotalk": KAKAO}, [CONTROL], network_ok=False)
    assert {v.verdict for v in out} == {"network_unavailable"}


def test_connection_reset_without_control_is_inconclusive() -> None:
    m = Measurement(id=new_id(), run_id="r", vantage="v",
                    target=Target(service="kakaotalk", probe="tcp", host="kakao.com", port=443),
                    probe_version="1", started_at=dt.datetime.now(dt.UTC), runtime_s=0.1,
                    failure=F.CONNECTION_RESET, failed_operation="connect")
    out = judge_run([m], {"kakaotalk": KAKAO}, [])
    v = by_measurement(out, m)
    assert (v.verdict, v.layer) == ("inconclusive", "tcp")
    assert "connection_reset" in v.evidence
