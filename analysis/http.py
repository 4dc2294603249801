"""HTTP content rules: a response of the ``http`` probe against the block-page fingerprints and
the control vantages' responses for the same URL (OONI web_connectivity's comparison).

``HTTP_RULES`` in order, the first that applies decides; none applies: the generic rules judge
the measurement (a failed fetch by the failure rules, analysis/failure.py). A fetch that failed
is judged here only by a strong block-page fingerprint of a redirect it could not follow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from blockwatch.analysis.evidence import Evidence, Subject
from blockwatch.analysis.fingerprints import FingerprintSet, HTTPMatch
from blockwatch.analysis.rules import Decision, Finding, Rule, first
from blockwatch.probes.model import HTTPObservation, Measurement

_COMMON_HEADERS = frozenset({
    "date", "content-type", "server", "cache-control", "vary", "set-cookie", "location",
    "expires", "x-powered-by", "content-encoding", "last-modified", "accept-ranges", "pragma",
    "x-frame-options", "etag", "x-content-type-options", "age", "via", "p3p", "x-xss-protection",
    "content-language", "cf-ray", "strict-transport-security", "link", "x-varnish",
    "content-length", "connection", "transfer-encoding", "alt-svc", "keep-alive",
})


def http_matches_control(tested: HTTPObservation, control: HTTPObservation) -> bool:
    """OONI web_connectivity: the same status and one of body length (proportion > 0.7),
    uncommon header names, or title words of 5+ characters match."""
    if tested.status != control.status:
        return False
    a, b = tested.body_length or 0, control.body_length or 0
    if a and b and min(a, b) / max(a, b) > 0.7:
        return True
    if tested.body_truncated and 0 < b and a <= b:
        return True  # we stopped reading (512 KiB cap) where the control's page goes on
    names = [{k.lower() for k, _ in h.headers} - _COMMON_HEADERS for h in (tested, control)]
    if names[0] and names[0] == names[1]:
        return True
    words = [{w.lower() for w in (h.title or "").split() if len(w) >= 5} for h in (tested, control)]
    return bool(words[0] & words[1])


@dataclass(frozen=True, slots=True)
class HTTPCase:
    m: Measurement
    obs: HTTPObservation  # the last response
    found: list[HTTPMatch]  # the fingerprints it matches (only strong ones if the fetch failed)
    controls: list[HTTPObservation]  # the control vantages' responses for the URL
    differs: bool  # a control responded and none matches this response
    failed: bool


def case(m: Measurement, ev: Evidence, fps: FingerprintSet) -> HTTPCase | None:
    obs = next((o for o in reversed(m.observations) if isinstance(o, HTTPObservation)), None)
    if obs is None or obs.status is None:
        return None
    # the probe follows redirects: a redirect to a block page shows as a redirect URL
    found = fps.match_http(obs.body_sample, (*obs.headers,
                                            *(("location", url) for url in obs.redirects)))
    if m.failure is not None:
        # a redirect to a block page that could not be followed (its name does not resolve
        # here, its address is out of scope) is still a block page; nothing else is judged
        found = [f for f in found if f.fingerprint.strong and not f.fingerprint.false_positive]
    controls = [c for c in ev.http.get(m.target.url or obs.url, []) if c.status is not None
                and c.failure is None]
    differs = bool(controls) and not any(http_matches_control(obs, c) for c in controls)
    return HTTPCase(m, obs, found, controls, differs, m.failure is not None)


def _false_positive(c: HTTPCase) -> Finding | None:
    if c.found and c.found[0].fingerprint.false_positive:
        fp = c.found[0].fingerprint
        return Finding(f"{fp.name} in {c.found[0].where}: not a censor's page",
                       {"fingerprint": fp.name})
    return None


def _strong(c: HTTPCase) -> Finding | None:
    strong = [f for f in c.found if f.fingerprint.strong]
    if not strong:
        return None
    fp = strong[0].fingerprint
    countries = f", {','.join(fp.countries)}" if fp.countries else ""
    return Finding(f"block page {fp.name} ({fp.scope}{countries}) in {strong[0].where}",
                   {"fingerprint": fp.name, "status": c.obs.status})


def _weak_vs_control(c: HTTPCase) -> Finding | None:
    if c.found and c.differs:
        fp = c.found[0].fingerprint
        return Finding(f"vague block page {fp.name} in {c.found[0].where}; control differs",
                       {"fingerprint": fp.name})
    return None


def _weak(c: HTTPCase) -> Finding | None:
    if c.found:
        fp = c.found[0].fingerprint
        return Finding(f"vague block page {fp.name} in {c.found[0].where}; no control agrees",
                       {"fingerprint": fp.name})
    return None


def _diff_vs_control(c: HTTPCase) -> Finding | None:
    if c.differs and not c.failed:
        x = c.controls[0]
        return Finding(f"status {c.obs.status} vs control {x.status}, {c.obs.body_length} vs "
                       f"{x.body_length} bytes, no fingerprint",
                       {"status": c.obs.status, "control_status": x.status})
    return None


HTTP_RULES: tuple[Rule[HTTPCase], ...] = (
    Rule("http.fingerprint.false_positive", "ok",
         "the response matches a known false-positive fingerprint (a CDN captcha or error "
         "page): the site's own answer, not a censor's", _false_positive, "http"),
    Rule("http.blockpage_fingerprint", "http_blocked",
         "the response matches a national/ISP/product block-page fingerprint", _strong, "http"),
    Rule("http.blockpage_weak_vs_control", "http_blocked",
         "the response matches a vague block-page fingerprint and differs from the control's",
         _weak_vs_control, "http"),
    Rule("http.blockpage_weak", "inconclusive",
         "the response matches a vague block-page fingerprint, but no control confirms it",
         _weak, "http"),
    Rule("http.diff_vs_control", "inconclusive",
         "the response differs from the control's (status, or body length, headers and title) "
         "without any block-page fingerprint", _diff_vs_control, "http"),
)


def _stage(s: Subject) -> Decision | None:
    c = case(s.m, s.ev, s.fps)
    return first(HTTP_RULES, c) if c is not None else None


STAGES: tuple[tuple[str, Callable[[Subject], Decision | None]], ...] = (("http content", _stage),)
RULE_LISTS: dict[str, tuple[Rule[Any], ...]] = {"http content": HTTP_RULES}
