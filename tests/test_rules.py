"""The rule lists as data: ids unique per list and with one meaning, every rule documented in
docs/verdicts.md, every rule reached by at least one fixture, and the precedence visible in the
lists is the one that decides.

"Reached" is measured, not declared: the golden database (tests/data/golden, a real lab history
re-judged here in-process) plus one small example for each rule the lab history does not show.
A new rule without an example (or a lab scenario) fails ``test_every_rule_is_reached``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from judging import judge_run
from test_ech import EXAMPLES as ECH_EXAMPLES
from test_quic_rules import EXAMPLES as QUIC_EXAMPLES
from test_stun import CALLS
from test_stun import measured as stun_measured
from test_verdicts import (
    CONTROL,
    NEWS,
    TH,
    any_chat_run,
    dns,
    measured,
    page,
    resp,
    silence,
    vpn_m,
)
from test_verdicts_trace import DISTANCE, FORGED, path, raw, trace

from blockwatch.analysis.rules import Finding, Rule, by_id, first
from blockwatch.analysis.verdicts import RULE_LISTS, RULES, AnalysisInputs
from blockwatch.analysis.verdicts import judge_run as judge_inputs
from blockwatch.probes import failures as F
from blockwatch.probes.model import HTTPObservation, RunInputs, Service, Verdict

GOLDEN = Path(__file__).parent / "data" / "golden" / "blockwatch.db.gz"
RESERVED = {"baseline.network_unavailable"}  # documented, never given (kept for old readers)


def _silent(*responses: object) -> list[Verdict]:
    m = dns("news", "news.test", "udp://127.0.0.9", *responses,  # type: ignore[arg-type]
            failure=None if responses else F.GENERIC_TIMEOUT)
    m = dataclasses.replace(m, target=dataclasses.replace(m.target, options=(("silent", "yes"),)))
    return judge_run([m], {"news": NEWS}, [])


def _bug() -> list[Verdict]:
    m = measured("news", "tcp", failure="unknown_failure: ValueError", op="probe")
    return judge_run([m], {"news": NEWS}, [])


def _http_failure_vs_control() -> list[Verdict]:
    url = "http://news.test/"
    tested = measured("news", "http", HTTPObservation(url=url, t0=0, t=1,
                                                      failure=F.CONNECTION_RESET),
                      failure=F.CONNECTION_RESET, op="http_round_trip", url=url)
    control = measured("news", "http", page(url), vantage=TH, url=url)
    return judge_run([tested, control], {"news": NEWS}, [], control_vantages=[TH])


def _weak_page(with_control: bool) -> list[Verdict]:
    from blockwatch.analysis.fingerprints import FingerprintSet, parse_entry

    fps = FingerprintSet([parse_entry({"name": "vague", "location_found": "body",
                                       "pattern": "Access Denied", "pattern_type": "contains",
                                       "scope": "vbw"}, "t")])
    url = "http://news.test/"
    tested = measured("news", "http", page(url, length=90, title="Access Denied",
                                           sample="Access Denied"), url=url)
    control = measured("news", "http", page(url), vantage=TH, url=url)
    return judge_run([tested, *([control] if with_control else [])], {"news": NEWS}, [],
                     control_vantages=[TH], fingerprints=fps)


def _inconsistent_in_networks() -> list[Verdict]:
    svc = Service(name="cdnsvc", title="CDN service", category="news", domains=("cdn.test",),
                  prefixes=("198.51.0.0/16",))
    tested = dns("cdnsvc", "cdn.test", "system", resp("203.0.114.7"))
    control = dns("cdnsvc", "cdn.test", CONTROL, resp("198.51.7.7"))
    return judge_run([tested, control], {"cdnsvc": svc}, [CONTROL])


def _corroborated() -> list[Verdict]:
    tested = dns("news", "news.test", "system", resp("203.0.114.7"))
    control = dns("news", "news.test", CONTROL, resp("192.0.3.1"))
    from test_verdicts import tls

    bad = measured("news", "tls", tls("203.0.114.7", failure=F.SSL_UNKNOWN_AUTHORITY),
                   failure=F.SSL_UNKNOWN_AUTHORITY, op="tls_handshake")
    return judge_run([tested, control, bad], {"news": NEWS}, [CONTROL])


def _trace(mode: str, **kw: object) -> list[Verdict]:
    return judge_run([trace(raw(mode=mode, **kw))], {}, ())


EXAMPLES: dict[str, Callable[[], list[Verdict]]] = {
    "dns.injection.silent_address": lambda: _silent(resp("10.0.0.1")),
    "dns.silent.quiet": lambda: _silent(),
    "dns.answer_vs_control_nxdomain": lambda: judge_run(
        [dns("news", "news.test", "system", resp("83.224.65.41")),
         dns("news", "news.test", CONTROL, resp(rcode="NXDOMAIN"), failure=F.DNS_NXDOMAIN)],
        {"news": NEWS}, [CONTROL]),
    "dns.inconsistent_vs_control": _inconsistent_in_networks,
    "dns.inconsistent.corroborated": _corroborated,
    "dns.same_as_control": lambda: judge_run(
        [dns("news", "news.test", "system", resp(rcode="NXDOMAIN"), failure=F.DNS_NXDOMAIN),
         dns("news", "news.test", CONTROL, resp(rcode="NXDOMAIN"), failure=F.DNS_NXDOMAIN)],
        {"news": NEWS}, [CONTROL]),
    "dns.timeout.unconfirmed": lambda: judge_run(
        [silence("news", "news.test", "system", confirmed=False),
         dns("news", "news.test", CONTROL, resp("192.0.3.1"))], {"news": NEWS}, [CONTROL]),
    "http.blockpage_weak": lambda: _weak_page(False),
    "http.blockpage_weak_vs_control": lambda: _weak_page(True),
    "http.failure_vs_control": _http_failure_vs_control,
    "probe.bug": _bug,
    "service.app_degraded": lambda: any_chat_run([F.CONNECTION_RESET,
                                                   F.CONNECTION_RESET, None]),
    # one chat port of a host still works: no part is blocked, the generic rule speaks
    "service.partial": lambda: any_chat_run([F.CONNECTION_RESET, None, None]),
    "vpn.unverifiable": lambda: judge_run(
        [vpn_m("home", "unverifiable", "vpn_unverifiable_without_key")], {}, []),
    "raw.unavailable": lambda: judge_run([trace(raw(capture=False, synack=None, reply=None,
                                                    failure=F.RAW_UNAVAILABLE),
                                                failure=F.RAW_UNAVAILABLE)], {}, ()),
    **{f"raw.forged_rst.{layer}": (lambda mode=mode: _trace(
        mode, reply="rst", resets=(FORGED,)))
       for mode, layer in (("syn", "tcp"), ("tls", "tls"), ("http", "http"))},
    **{f"raw.before_server.{layer}": (lambda mode=mode: _trace(
        mode, reply="timeout", hops=path(DISTANCE - 1, "silent", "silent", "silent")))
       for mode, layer in (("syn", "tcp"), ("tls", "tls"), ("http", "http"))},
    **{rule: (lambda control=control: judge_run(
        [stun_measured("home", "no_reply", F.GENERIC_TIMEOUT),
         *([stun_measured("vps", control, None if control == "binding_success"
                          else F.GENERIC_TIMEOUT)] if control else [])],
        {"calls": CALLS}, [], control_vantages=["vps"]))
       for rule, control in (("stun.failure_vs_control", "binding_success"),
                             ("stun.same_as_control", "no_reply"), ("stun.no_control", None))},
    **QUIC_EXAMPLES,
    **ECH_EXAMPLES,
    "service.network_unavailable": lambda: judge_run(
        [dns("news", "news.test", "system", resp("192.0.3.1"))], {"news": NEWS}, [],
        network_ok=False),
}


@pytest.mark.parametrize("rule_id", sorted(EXAMPLES))
def test_each_example_reaches_its_rule(rule_id: str) -> None:
    got = {v.rule_id for v in EXAMPLES[rule_id]()}
    assert rule_id in got, got


def golden_rules(tmp: Path) -> set[str]:
    """The rule ids of the golden lab history, re-judged in this process."""
    from blockwatch.analysis.verdicts import judge_run as judge
    from blockwatch.judging import run_inputs, stored_inputs
    from blockwatch.probes.catalogue import load_catalogue
    from blockwatch.storage import open_store

    db = tmp / "golden.db"
    with gzip.open(GOLDEN, "rb") as src, db.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    catalogue = load_catalogue()
    reached: set[str] = set()
    with open_store(f"sqlite:///{db}") as store:
        for run in store.runs(limit=1000):
            if run.control_for is not None or run.status == "network_unavailable":
                continue
            inputs = run_inputs(run, control_resolvers=(), control_vantages=(),
                                local_networks=(), max_age=dt.timedelta(hours=6))
            judged = judge(stored_inputs(store, run, inputs, catalogue, None))
            reached |= {v.rule_id for v in judged}
    return reached


def test_every_rule_is_reached(tmp_path: Path) -> None:
    reached = golden_rules(tmp_path)
    assert len(reached) > 20  # the lab history itself shows most of them
    for example in EXAMPLES.values():
        reached |= {v.rule_id for v in example()}
    missing = sorted(set(RULES) - RESERVED - reached)
    assert not missing, f"rules no fixture reaches: {missing}"


def test_ids_are_unique_in_each_list_and_mean_one_thing() -> None:
    for name, rules in RULE_LISTS.items():
        ids = [r.id for r in rules]
        assert len(ids) == len(set(ids)), name
        assert all(r.why and r.verdict for r in rules), name
    meanings: dict[str, set[tuple[str, str]]] = {}
    for rules in RULE_LISTS.values():
        for r in rules:
            meanings.setdefault(r.id, set()).add((r.verdict, r.why))
    assert {k: v for k, v in meanings.items() if len(v) > 1} == {}
    # and the lookup refuses what these checks refuse
    twice = Rule("x.y", "ok", "why")
    with pytest.raises(ValueError, match="twice in one list"):
        by_id([twice, twice])
    with pytest.raises(ValueError, match="two meanings"):
        by_id([twice], [Rule("x.y", "down", "why")])


def test_every_list_but_the_reserved_has_conditions_and_the_closing_rules_always_apply() -> None:
    for name, rules in RULE_LISTS.items():
        if name == "reserved":
            continue
        conditioned = [r for r in rules if r.when is not None]
        # only service.network_unavailable is decided outside its list (the network was down)
        assert {r.id for r in rules} - {r.id for r in conditioned} <= {
            "service.network_unavailable"}, name


def test_the_order_of_a_list_is_its_precedence() -> None:
    # two rules that both apply: the first in the list decides; swapped, the other does
    a = Rule("t.a", "ok", "a", lambda n: Finding("a") if n > 0 else None)
    b = Rule("t.b", "down", "b", lambda n: Finding("b") if n > 1 else None)
    decided = first((a, b), 2)
    assert decided is not None and decided.rule.id == "t.a"
    decided = first((b, a), 2)
    assert decided is not None and decided.rule.id == "t.b"
    assert first((b,), 1) is None


def test_a_strong_dns_signature_outranks_the_control_comparison() -> None:
    # an injected second response to a query that the control says does not exist: the
    # injection rule comes first in DNS_RULES, so it decides
    tested = dns("news", "news.test", "system", resp("8.7.198.45"), resp("192.0.3.1", t=0.03))
    control = dns("news", "news.test", CONTROL, resp(rcode="NXDOMAIN"), failure=F.DNS_NXDOMAIN)
    out = judge_inputs(AnalysisInputs(measurements=[tested, control], services={"news": NEWS},
                                      run=RunInputs(control_resolvers=(CONTROL,))))
    v = next(v for v in out if v.measurement_id == tested.id)
    assert v.rule_id == "dns.injection.multiple_responses"
