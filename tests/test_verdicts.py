"""Verdict rules: blocking only on evidence, never without a control, never when offline."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from judging import judge_run

from blockwatch.analysis.evidence import consistent
from blockwatch.analysis.fingerprints import FingerprintSet, parse_entry
from blockwatch.analysis.http import http_matches_control
from blockwatch.analysis.verdicts import ANALYZER_VERSION, RULES
from blockwatch.probes import failures as F
from blockwatch.probes import registry
from blockwatch.probes.model import (
    DNSAnswer,
    DNSObservation,
    DNSResponse,
    HTTPObservation,
    Measurement,
    Service,
    Target,
    TCPObservation,
    TLSObservation,
    Verdict,
)
from blockwatch.probes.runner import new_id

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


# --- analyzer v2 ------------------------------------------------------------------------------

TH = "control-vantage"
NEWS = Service(name="news", title="News", category="news", domains=("news.test",))
CDNSVC = Service(name="cdnsvc", title="CDN service", category="news", domains=("cdn.test",),
                 prefixes=("198.51.0.0/16",))


def measured(service: str, probe: str, *obs: object, failure: str | None = None,
             op: str | None = None, vantage: str = "v", host: str = "news.test",
             port: int | None = 443, url: str | None = None) -> Measurement:
    return Measurement(id=new_id(), run_id="r", vantage=vantage,
                       target=Target(service=service, probe=probe, host=host, port=port, url=url),
                       probe_version="1", started_at=dt.datetime.now(dt.UTC), runtime_s=0.1,
                       observations=tuple(obs), failure=failure,  # type: ignore[arg-type]
                       failed_operation=op)


def tls(address: str, *, sni: str = "news.test", failure: str | None = None) -> TLSObservation:
    return TLSObservation(address=address, port=443, sni=sni, t0=0, t=0.1,
                          verified=failure is None, failure=failure)


def page(url: str, status: int = 200, length: int = 1000, title: str = "Daily news",
         sample: str | None = None) -> HTTPObservation:
    return HTTPObservation(url=url, t0=0, t=0.1, status=status, body_length=length, title=title,
                           body_sample=sample)


def verdict_of(out: list, m: Measurement) -> tuple[str, str]:
    v = by_measurement(out, m)
    return v.verdict, v.rule_id


def test_analyzer_version_and_every_rule_verdict_is_known() -> None:
    assert ANALYZER_VERSION == "10"
    known = {"ok", "dns_blocked", "tcp_blocked", "tls_blocked", "http_blocked",
             "blocked", "partial", "down", "inconclusive", "network_unavailable", "error",
             *(f"{spec.layer}_blocked" for spec in registry.SPECS)}  # vpn_blocked, stun_blocked
    assert {r.verdict for r in RULES.values()} <= known
    v1 = {"baseline.network_unavailable", "ok.no_failure", "dns.injection.multiple_responses",
          "dns.nxdomain_vs_control", "dns.bogon_vs_control", "dns.outside_expected_prefixes",
          "dns.same_as_control", "failure.no_control", "scope.refused", "probe.bug",
          "service.ok", "service.blocked", "service.partial", "service.down",
          "service.inconclusive", "service.network_unavailable"}
    assert v1 <= set(RULES), "rule ids of v1 stay stable"


def test_consistency_rules() -> None:
    assert consistent(["1.2.3.4"], ["1.2.3.4", "5.6.7.8"])
    assert consistent(["1.2.3.9"], ["1.2.3.4"])  # same /24
    assert not consistent(["1.2.4.9"], ["1.2.3.4"])
    assert consistent(["2a00:1:2:ff::1"], ["2a00:1:2::5"])  # same /48
    assert consistent(["9.9.9.9"], ["1.1.1.1"], prefixes=["9.9.0.0/16"])
    assert consistent(["9.9.9.9"], ["1.1.1.1"], verified=["9.9.9.9"])


def test_known_forged_answer_is_blocking_without_control() -> None:
    m = dns("news", "news.test", "system", resp("8.7.198.45"))
    out = judge_run([m], {"news": NEWS}, [])
    assert verdict_of(out, m) == ("dns_blocked", "dns.fingerprint")


def test_forged_answer_that_a_control_also_gives_is_a_stale_fingerprint() -> None:
    m = dns("news", "news.test", "system", resp("8.7.198.45"))
    control = dns("news", "news.test", CONTROL, resp("8.7.198.45"))
    out = judge_run([m, control], {"news": NEWS}, [CONTROL])
    assert verdict_of(out, m) == ("ok", "ok.no_failure")


def test_inconsistent_answer_when_control_is_in_the_services_networks() -> None:
    m = dns("cdnsvc", "cdn.test", "system", resp("203.0.114.7"))
    control = dns("cdnsvc", "cdn.test", CONTROL, resp("198.51.7.7"))
    out = judge_run([m, control], {"cdnsvc": CDNSVC}, [CONTROL])
    assert verdict_of(out, m) == ("dns_blocked", "dns.inconsistent_vs_control")


def test_different_cdn_answers_are_inconclusive_not_blocked() -> None:
    m = dns("news", "news.test", "system", resp("203.0.114.7"))
    control = dns("news", "news.test", CONTROL, resp("192.0.3.1"))
    out = judge_run([m, control], {"news": NEWS}, [CONTROL])
    assert verdict_of(out, m) == ("inconclusive", "dns.inconsistent.cdn")


def test_different_answer_with_a_valid_certificate_there_is_consistent() -> None:
    m = dns("news", "news.test", "system", resp("203.0.114.7"))
    control = dns("news", "news.test", CONTROL, resp("192.0.3.1"))
    handshake = measured("news", "tls", tls("203.0.114.7"))
    out = judge_run([m, control, handshake], {"news": NEWS}, [CONTROL])
    assert verdict_of(out, m) == ("ok", "ok.no_failure")


def test_different_answer_with_an_invalid_certificate_there_is_blocking() -> None:
    m = dns("news", "news.test", "system", resp("203.0.114.7"))
    control = dns("news", "news.test", CONTROL, resp("192.0.3.1"))
    handshake = measured("news", "tls", tls("203.0.114.7", failure=F.SSL_UNKNOWN_AUTHORITY),
                         failure=F.SSL_UNKNOWN_AUTHORITY, op="tls_handshake")
    out = judge_run([m, control, handshake], {"news": NEWS}, [CONTROL])
    assert verdict_of(out, m) == ("dns_blocked", "dns.inconsistent.corroborated")
    assert verdict_of(out, handshake) == ("inconclusive", "failure.no_control")


def test_answer_for_a_name_the_control_says_does_not_exist() -> None:
    m = dns("news", "news.test", "system", resp("83.224.65.41"))
    control = dns("news", "news.test", CONTROL, resp(rcode="NXDOMAIN"), failure=F.DNS_NXDOMAIN)
    out = judge_run([m, control], {"news": NEWS}, [CONTROL])
    assert verdict_of(out, m) == ("dns_blocked", "dns.answer_vs_control_nxdomain")


def test_certificate_invalid_where_the_control_address_is_valid_is_interception() -> None:
    control = dns("news", "news.test", CONTROL, resp("192.0.3.1"))
    good = measured("news", "tls", tls("192.0.3.1"))
    bad = measured("news", "tls", tls("203.0.114.7", failure=F.SSL_INVALID_HOSTNAME),
                   failure=F.SSL_INVALID_HOSTNAME, op="tls_handshake")
    out = judge_run([control, good, bad], {"news": NEWS}, [CONTROL])
    assert verdict_of(out, bad) == ("tls_blocked", "tls.invalid_cert_vs_control")
    # the same bad certificate on one of the control's own addresses is the server's doing
    own = measured("news", "tls", tls("192.0.3.1", failure=F.SSL_INVALID_HOSTNAME),
                   failure=F.SSL_INVALID_HOSTNAME, op="tls_handshake")
    out = judge_run([control, good, own], {"news": NEWS}, [CONTROL])
    assert verdict_of(out, own)[0] == "inconclusive"


def test_failures_against_a_control_vantage() -> None:
    url = "https://news.test/"
    tcp_t = measured("news", "tcp", TCPObservation(address="192.0.3.1", port=443, t0=0, t=1,
                                                   failure=F.GENERIC_TIMEOUT),
                     failure=F.GENERIC_TIMEOUT, op="connect")
    tcp_c = measured("news", "tcp", TCPObservation(address="192.0.3.1", port=443, t0=0, t=1),
                     vantage=TH)
    tls_t = measured("news", "tls", tls("192.0.3.2", failure=F.CONNECTION_RESET),
                     failure=F.CONNECTION_RESET, op="tls_handshake")
    tls_c = measured("news", "tls", tls("192.0.3.2"), vantage=TH)
    http_t = measured("news", "http", HTTPObservation(url=url, t0=0, t=1,
                                                      failure=F.CONNECTION_RESET),
                      failure=F.CONNECTION_RESET, op="http_round_trip", url=url)
    http_c = measured("news", "http", page(url), vantage=TH, url=url)
    out = judge_run([tcp_t, tcp_c, tls_t, tls_c, http_t, http_c], {"news": NEWS}, [],
                    control_vantages=[TH])
    assert verdict_of(out, tcp_t) == ("tcp_blocked", "tcp.failure_vs_control")
    assert verdict_of(out, tls_t) == ("tls_blocked", "tls.failure_vs_control")
    assert verdict_of(out, http_t) == ("http_blocked", "http.failure_vs_control")
    assert {v.measurement_id for v in out} >= {tcp_t.id, tls_t.id, http_t.id}
    assert not {tcp_c.id, tls_c.id, http_c.id} & {v.measurement_id for v in out}


def test_failure_the_control_vantage_shares_is_down() -> None:
    refused = TCPObservation(address="192.0.3.1", port=444, t0=0, t=1,
                             failure=F.CONNECTION_REFUSED)
    t = measured("news", "tcp", refused, failure=F.CONNECTION_REFUSED, op="connect", port=444)
    c = measured("news", "tcp", refused, vantage=TH, port=444)
    out = judge_run([t, c], {"news": NEWS}, [], control_vantages=[TH])
    assert verdict_of(out, t) == ("down", "failure.same_as_control")
    assert service_verdict(out, "news").verdict == "down"


def test_server_side_failures_are_not_blocking_even_if_the_control_fetched() -> None:
    url = "http://news.test/"
    t = measured("news", "http", HTTPObservation(url=url, t0=0, t=1, status=302,
                                                 failure=F.TOO_MANY_REDIRECTS),
                 failure=F.TOO_MANY_REDIRECTS, op="http_round_trip", url=url)
    c = measured("news", "http", page(url), vantage=TH, url=url)
    out = judge_run([t, c], {"news": NEWS}, [], control_vantages=[TH])
    assert verdict_of(out, t) == ("inconclusive", "failure.no_control")


def test_http_comparison_with_control_uses_oonis_thresholds() -> None:
    base = page("u", length=1000, title="Daily news today")
    assert http_matches_control(page("u", length=800), base)  # 0.8 > 0.7
    assert http_matches_control(page("u", length=100, title="Daily news today"), base)
    assert not http_matches_control(page("u", length=100, title="Access Denied"), base)
    assert not http_matches_control(page("u", status=403), base)


def test_http_fingerprints_and_diff() -> None:
    fps = FingerprintSet([
        parse_entry({"name": "strong", "location_found": "body", "pattern": "BLOCKED-BY-LAW",
                     "pattern_type": "contains", "scope": "nat"}, "t"),
        parse_entry({"name": "vague", "location_found": "body", "pattern": "Access Denied",
                     "pattern_type": "contains", "scope": "vbw"}, "t"),
        parse_entry({"name": "cdn", "location_found": "header.server", "pattern": "cdnx",
                     "pattern_type": "full", "scope": "fp"}, "t"),
    ])
    url = "http://news.test/"
    control = measured("news", "http", page(url), vantage=TH, url=url)

    def fetched(obs: HTTPObservation) -> Measurement:
        return measured("news", "http", obs, url=url)

    strong = fetched(page(url, length=90, sample="<p>BLOCKED-BY-LAW</p>"))
    vague = fetched(page(url, length=90, title="Access Denied", sample="Access Denied"))
    diff = fetched(page(url, status=403, length=90, title="Oops"))
    same = fetched(page(url, length=990))
    cdn = HTTPObservation(url=url, t0=0, t=1, status=403, headers=(("Server", "cdnx"),),
                          body_sample="Access Denied BLOCKED-BY-LAW")
    fp = fetched(cdn)
    out = judge_run([control, strong, vague, diff, same, fp], {"news": NEWS}, [],
                    control_vantages=[TH], fingerprints=fps)
    assert verdict_of(out, strong) == ("http_blocked", "http.blockpage_fingerprint")
    assert verdict_of(out, vague) == ("http_blocked", "http.blockpage_weak_vs_control")
    assert verdict_of(out, diff) == ("inconclusive", "http.diff_vs_control")
    assert verdict_of(out, same) == ("ok", "ok.no_failure")
    assert verdict_of(out, fp) == ("ok", "http.fingerprint.false_positive")
    # without the control the vague page proves nothing, the strong one still does
    out = judge_run([strong, vague], {"news": NEWS}, [], fingerprints=fps)
    assert verdict_of(out, vague) == ("inconclusive", "http.blockpage_weak")
    assert verdict_of(out, strong)[0] == "http_blocked"


def silence(service: str, host: str, resolver: str, *, probe: str = "dns",
            confirmed: bool = True) -> Measurement:
    """A name unanswered at ``resolver``: asked, and (``confirmed``) asked again."""
    attempts = (1, 2) if confirmed else (1,)
    obs = tuple(DNSObservation(resolver=resolver, transport="udp", qname=host, qtype="A",
                               t0=0.0, failure=F.GENERIC_TIMEOUT, attempt=n, transmissions=3)
                for n in attempts)
    return Measurement(id=new_id(), run_id="r", vantage="v",
                       target=Target(service=service, probe=probe, host=host,
                                     resolver=resolver if probe == "dns" else None,
                                     url=f"http://{host}/" if probe == "http" else None),
                       probe_version="2", started_at=dt.datetime.now(dt.UTC), runtime_s=0.1,
                       observations=obs, failure=F.GENERIC_TIMEOUT, failed_operation="resolve")


def test_dns_timeout_counts_only_if_repeated_at_a_resolver_that_answers_other_names() -> None:
    control = dns("news", "news.test", CONTROL, resp("192.0.3.1"))
    other = dns("news", "other.test", "system", resp("192.0.3.9"))
    # asked once without an answer: one lost packet (or two) is no evidence
    once = silence("news", "news.test", "system", confirmed=False)
    out = judge_run([once, control, other], {"news": NEWS}, [CONTROL])
    assert verdict_of(out, once) == ("inconclusive", "dns.timeout.unconfirmed")
    assert "not repeated" in by_measurement(out, once).evidence
    # repeated, but the resolver answered nothing else in the run: it may just be broken
    twice = silence("news", "news.test", "system")
    out = judge_run([twice, control], {"news": NEWS}, [CONTROL])
    assert verdict_of(out, twice) == ("inconclusive", "dns.timeout.unconfirmed")
    assert "answered no other name" in by_measurement(out, twice).evidence
    # an answer for the same name (its AAAA, say) is not another name
    same = dns("news", "news.test", "system", resp("192.0.3.1"))
    out = judge_run([twice, control, same], {"news": NEWS}, [CONTROL])
    assert verdict_of(out, twice) == ("inconclusive", "dns.timeout.unconfirmed")
    # repeated, and the same resolver answers other names (of any service in the run):
    # name-specific dropping
    elsewhere = dns("elsewhere", "other.test", "system", resp("192.0.3.9"))
    out = judge_run([twice, control, elsewhere], {"news": NEWS}, [CONTROL])
    assert verdict_of(out, twice) == ("dns_blocked", "dns.failure_vs_control")
    assert service_verdict(out, "news").verdict == "blocked"


def test_a_fetch_that_could_not_resolve_follows_the_same_rule() -> None:
    other = dns("news", "other.test", "system", resp("192.0.3.9"))
    fetched = HTTPObservation(url="http://news.test/", t0=0.0, t=0.2, status=200,
                              body_length=100)
    control = Measurement(id=new_id(), run_id="c", vantage="vps",
                          target=Target(service="news", probe="http", host="news.test",
                                        url="http://news.test/"),
                          probe_version="3", started_at=dt.datetime.now(dt.UTC), runtime_s=0.2,
                          observations=(fetched,))
    once = silence("news", "news.test", "system", probe="http", confirmed=False)
    out = judge_run([once, other, control], {"news": NEWS}, [], control_vantages=["vps"])
    assert verdict_of(out, once) == ("inconclusive", "dns.timeout.unconfirmed")
    twice = silence("news", "news.test", "system", probe="http")
    out = judge_run([twice, other, control], {"news": NEWS}, [], control_vantages=["vps"])
    assert verdict_of(out, twice) == ("dns_blocked", "dns.failure_vs_control")


def test_working_dns_below_blocked_tcp_is_not_partial() -> None:
    from blockwatch.analysis.service import judge_service

    def v(verdict: str, layer: str | None, mid: str) -> Verdict:
        return Verdict(verdict=verdict, rule_id="x", analyzer_version="3", service="line",
                       measurement_id=mid, layer=layer)

    probes = {"d": "dns", "t": "tcp", "t2": "tcp", "h": "http"}
    # DNS answers, TCP to the answer is blocked: the service is blocked, not partial
    assert judge_service("line", [v("ok", None, "d"), v("tcp_blocked", "tcp", "t")],
                         probes).verdict == "blocked"
    # another TCP endpoint works: partial
    assert judge_service("line", [v("ok", None, "d"), v("tcp_blocked", "tcp", "t"),
                                  v("ok", None, "t2")], probes).verdict == "partial"
    # DNS blocked while an HTTP fetch (through another name) works: partial
    assert judge_service("line", [v("dns_blocked", "dns", "d"), v("ok", None, "h")],
                         probes).verdict == "partial"


def vpn_m(vantage: str, result: str, failure: str | None) -> Measurement:
    from blockwatch.probes.model import VPNObservation

    obs = VPNObservation(protocol="openvpn", address="192.0.2.7", port=1194, transport="udp",
                         t0=0.0, t=1.0, result=result, failure=failure)
    return Measurement(id=new_id(), run_id="r", vantage=vantage,
                       target=Target(service="myvpn", probe="openvpn", host="vpn.example",
                                     port=1194, transport="udp"),
                       probe_version="1", started_at=dt.datetime.now(dt.UTC), runtime_s=1.0,
                       observations=(obs,), failure=failure,
                       failed_operation="vpn_handshake" if failure else None)


def test_vpn_verdicts_need_a_control_vantage() -> None:
    tested = vpn_m("home", "no_reply", F.GENERIC_TIMEOUT)
    alone = judge_run([tested], {}, [])
    assert by_measurement(alone, tested).verdict == "inconclusive"
    control = vpn_m("vps", "reachable", None)
    out = judge_run([tested, control], {}, [], control_vantages=["vps"])
    v = by_measurement(out, tested)
    assert (v.verdict, v.rule_id, v.layer) == ("vpn_blocked", "vpn.failure_vs_control", "vpn")
    assert service_verdict(out, "myvpn").verdict == "blocked"
    dead = judge_run([tested, vpn_m("vps", "no_reply", F.GENERIC_TIMEOUT)], {}, [],
                     control_vantages=["vps"])
    assert by_measurement(dead, tested).verdict == "down"
    unverifiable = vpn_m("home", "unverifiable", "vpn_unverifiable_without_key")
    out = judge_run([unverifiable, control], {}, [], control_vantages=["vps"])
    assert by_measurement(out, unverifiable).rule_id == "vpn.unverifiable"


def test_app_rule_blocks_the_app_when_every_chat_endpoint_is_blocked() -> None:
    from blockwatch.probes.catalogue import service_from_dict
    from blockwatch.probes.model import TCPObservation

    wa = service_from_dict("wa", {
        "urls": ["https://web.wa.example/"],
        "endpoints": ["chat.wa.example:443", "chat.wa.example:5222"],
        "app": {"chat_endpoints": ["chat.wa.example:443", "chat.wa.example:5222"]}})

    def tcp(vantage: str, port: int, failure: str | None) -> Measurement:
        obs = TCPObservation(address="157.240.1.35", port=port, t0=0.0, t=0.1, failure=failure)
        return Measurement(id=new_id(), run_id="r", vantage=vantage,
                           target=Target(service="wa", probe="tcp", host="chat.wa.example",
                                         port=port),
                           probe_version="1", started_at=dt.datetime.now(dt.UTC),
                           runtime_s=0.1, observations=(obs,), failure=failure,
                           failed_operation="connect" if failure else None)

    web = Measurement(id=new_id(), run_id="r", vantage="home",
                      target=Target(service="wa", probe="http", host="web.wa.example",
                                    url="https://web.wa.example/"),
                      probe_version="2", started_at=dt.datetime.now(dt.UTC), runtime_s=0.1)
    controls = [tcp("vps", 443, None), tcp("vps", 5222, None)]
    both = [tcp("home", 443, F.CONNECTION_RESET), tcp("home", 5222, F.GENERIC_TIMEOUT)]
    out = judge_run([web, *both, *controls], {"wa": wa}, [], control_vantages=["vps"])
    v = service_verdict(out, "wa")
    assert (v.verdict, v.rule_id) == ("blocked", "service.app_blocked"), v
    # one chat port still works: the app rule does not apply; web + one chat ok = partial
    one = [tcp("home", 443, F.CONNECTION_RESET), tcp("home", 5222, None)]
    out = judge_run([web, *one, *controls], {"wa": wa}, [], control_vantages=["vps"])
    assert service_verdict(out, "wa").rule_id == "service.partial"
    # no control: nothing is blocked, so the app rule cannot say so either
    out = judge_run([web, *both], {"wa": wa}, [])
    assert service_verdict(out, "wa").verdict == "inconclusive"


def test_every_rule_is_documented_in_docs_verdicts() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "verdicts.md").read_text(encoding="utf-8")
    assert f"analyzer version {ANALYZER_VERSION}" in doc
    missing = sorted(r for r in RULES if f"`{r}`" not in doc)
    assert not missing, f"rules without a line in docs/verdicts.md: {missing}"


def test_a_quiet_silent_address_does_not_make_dns_blocking_partial() -> None:
    """Issue #13 (1): the silent address's quiet answer is ``ok`` for that query, but says
    nothing about whether the service's names resolve: it only adds blocking evidence."""
    nx = dns("news", "news.test", "system", resp(rcode="NXDOMAIN"), failure=F.DNS_NXDOMAIN)
    control = dns("news", "news.test", CONTROL, resp("192.0.3.1"))
    quiet = dns("news", "news.test", "udp://127.0.0.9", failure=F.GENERIC_TIMEOUT)
    quiet = dataclasses.replace(quiet, target=dataclasses.replace(
        quiet.target, options=(("silent", "yes"),)))
    out = judge_run([nx, control, quiet], {"news": NEWS}, [CONTROL])
    assert by_measurement(out, quiet).rule_id == "dns.silent.quiet"
    v = service_verdict(out, "news")
    assert (v.verdict, v.layer) == ("blocked", "dns"), v


@pytest.mark.parametrize(("protocol", "says"), [
    ("openvpn", "tls-auth or tls-crypt"), ("ikev2", "a dead server is silent too"),
    ("wireguard", "does not know our key")])
def test_a_silent_vpn_server_is_explained_in_its_protocols_words(protocol: str,
                                                                 says: str) -> None:
    m = vpn_m("home", "no_reply", F.GENERIC_TIMEOUT)
    obs = dataclasses.replace(m.observations[0], protocol=protocol)  # type: ignore[arg-type]
    m = dataclasses.replace(m, observations=(obs,),
                            target=dataclasses.replace(m.target, probe=protocol))
    v = by_measurement(judge_run([m], {}, []), m)
    assert v.verdict == "inconclusive" and says in v.evidence
    assert protocol == "openvpn" or "tls-auth" not in v.evidence


def test_a_forged_address_claims_dns_not_tcp_against_a_control_vantage() -> None:
    """Issue #13 (2, 3): this vantage's resolver gives 45.33.1.2 (where nothing answers), the
    control resolver 192.0.3.1, where the control vantage connects and fetches. The fetch that
    timed out at the forged address is not tcp blocking (the control never used it); the DNS
    answer is blocking, corroborated by the control vantage's connection (the service has no
    catalogued prefixes, so without that it would look like a CDN's answer)."""
    url = "https://news.test/"
    ours = dns("news", "news.test", "system", resp("45.33.1.2"))
    theirs = dns("news", "news.test", CONTROL, resp("192.0.3.1"))
    forged = DNSObservation(resolver="system", transport="udp", qname="news.test", qtype="A",
                            t0=0.0, responses=(resp("45.33.1.2"),))
    fetch = measured("news", "http", forged, HTTPObservation(url=url, t0=0, t=5.0,
                                                             failure=F.GENERIC_TIMEOUT),
                     failure=F.GENERIC_TIMEOUT, op="connect", url=url)
    connect = measured("news", "tcp", TCPObservation(address="45.33.1.2", port=443, t0=0,
                                                     t=5.0, failure=F.GENERIC_TIMEOUT),
                       failure=F.GENERIC_TIMEOUT, op="connect")
    th = "vps"
    control_tcp = measured("news", "tcp", TCPObservation(address="192.0.3.1", port=443, t0=0,
                                                         t=0.1), vantage=th)
    control_fetch = measured("news", "http", dataclasses.replace(page(url), address="192.0.3.1"),
                             vantage=th, url=url)
    out = judge_run([ours, theirs, fetch, connect, control_tcp, control_fetch],
                    {"news": NEWS}, [CONTROL], control_vantages=[th])
    assert verdict_of(out, ours) == ("dns_blocked", "dns.inconsistent.corroborated")
    assert verdict_of(out, fetch) == ("inconclusive", "failure.no_control")
    v = service_verdict(out, "news")
    assert (v.verdict, v.layer) == ("blocked", "dns"), v


ANY_CHAT = ["a.chat.example:443", "a.chat.example:5222", "b.chat.example:443"]


def any_chat_run(home: list[str | None]) -> list:
    """A run of an app with the any_chat rule: this vantage's failures at ``ANY_CHAT``'s
    endpoints (None: connected), a control vantage connecting to every one."""
    from blockwatch.probes.catalogue import service_from_dict
    from blockwatch.probes.model import TCPObservation

    app = service_from_dict("im", {"endpoints": ANY_CHAT, "app": {
        "chat_endpoints": ANY_CHAT, "rule": "any_chat_fail_with_working_control"}})

    def tcp(vantage: str, endpoint: str, failure: str | None) -> Measurement:
        host, _, port = endpoint.rpartition(":")
        obs = TCPObservation(address="203.0.113.9" if host.startswith("a") else "203.0.113.10",
                             port=int(port), t0=0.0, t=0.1, failure=failure)
        return Measurement(id=new_id(), run_id="r", vantage=vantage,
                           target=Target(service="im", probe="tcp", host=host, port=int(port)),
                           probe_version="1", started_at=dt.datetime.now(dt.UTC),
                           runtime_s=0.1, observations=(obs,), failure=failure,
                           failed_operation="connect" if failure else None)

    ms = [*(tcp("home", e, f) for e, f in zip(ANY_CHAT, home, strict=True)),
          *(tcp("vps", e, None) for e in ANY_CHAT)]
    return judge_run(ms, {"im": app}, [], control_vantages=["vps"])


def test_the_any_chat_app_rule_is_applied_host_by_host() -> None:
    """Issue #13 (8): any_chat_fail_with_working_control is no longer ignored. A chat host
    counts as blocked only if every port measured there is (OONI's WhatsApp: 443 and 5222);
    some hosts blocked while others work is the app degraded (partial)."""
    reset = F.CONNECTION_RESET
    v = service_verdict(any_chat_run([reset, reset, None]), "im")
    assert (v.verdict, v.rule_id) == ("partial", "service.app_degraded"), v
    assert v.details["parts"]["chat"] == {"state": "degraded", "blocked_hosts": ["a.chat.example"]}
    # one port of a host still works: that host is not blocked; the generic rule speaks
    v = service_verdict(any_chat_run([reset, None, None]), "im")
    assert v.rule_id == "service.partial"


def test_every_lab_method_has_its_row_in_docs_verdicts() -> None:
    """Issue #13: docs/verdicts.md says, for each lab method, what one vantage and a control
    vantage tell; a new method must add its row."""
    from pathlib import Path

    from blockwatch.lab.scenario import ALL_METHODS

    doc = (Path(__file__).parents[1] / "docs" / "verdicts.md").read_text(encoding="utf-8")
    table = doc[doc.index("## What one vantage can tell"):doc.index("## Limits")]
    missing = sorted(m for m in ALL_METHODS if f"`{m}`" not in table)
    assert not missing, f"lab methods without a row: {missing}"
