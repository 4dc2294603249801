"""Rules as data: what a rule is, how an ordered list of them decides, and the vocabulary they
share.

A ``Rule`` is one line of a layer's list: a stable id (stored with every verdict), the verdict
it gives, why (the sentence docs/verdicts.md and ``blockwatch show`` print) and ``when``, the
condition: a pure function of the layer's case that returns a ``Finding`` (the evidence and
details of this verdict) when the rule applies, else None. ``first`` walks a list in order and
the first rule that applies decides: precedence is the order of the list, visible in one place
per layer (analysis/dns.py, http.py, failure.py, vpn.py, trace.py, service.py).

``ANALYZER_VERSION`` changes whenever a rule's logic or order does, so stored verdicts can be
recomputed (``blockwatch reanalyze``) and told apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from blockwatch.probes import failures as F
from blockwatch.probes import registry
from blockwatch.probes.model import Measurement, Verdict

ANALYZER_VERSION = "10"
# 10: the quic and ech rules reviewed (#17): an ECH hello whose connect timed out is no claim;
#    quic.residual first (our own overlapping handshake at an address is never SNI filtering);
#    quic.handshake_vs_quicping needs Alt-Svc h3; a GET that timed out after a verified
#    handshake is not a filtered Initial; quic.not_sent (a SOCKS5 proxy) is an error, not down;
# 9: controls from another vantage are, of each vantage and service, its run nearest in time
#    (those started before the judged run ended first), not every run of the window: an outage
#    with an older control run that still worked was a false tcp_blocked (#14); the quic
#    probe's rules (quic.*, service.quic_only) and the ech probe's (ech.*) (#17);
# 7: a quiet silent address takes nothing from DNS blocking, VPN silence worded per protocol,
#    a control's fetch elsewhere says nothing about a failed address (#13);
# 6: bogons and trace readings decided here, raw.before_server by the SYN-ACK's distance, a
#    probe's rules found through the registry (stun);
# 5: DNS timeouts count only when confirmed; services judged apart

# blocking at a layer: the four of the web stack and one per layer the registry declares
# (vpn_blocked, stun_blocked, ...)
BLOCKED = frozenset({"dns_blocked", "tcp_blocked", "tls_blocked", "http_blocked",
                     *(f"{spec.layer}_blocked" for spec in registry.SPECS)})

# Failures a censor produces. Others (too many redirects, a broken Location, unknown_failure)
# are the server's or our own doing: a control that succeeds does not make them blocking.
INTERFERENCE = frozenset({
    F.GENERIC_TIMEOUT, F.CONNECTION_REFUSED, F.CONNECTION_RESET, F.CONNECTION_ABORTED,
    F.HOST_UNREACHABLE, F.NETWORK_UNREACHABLE, F.EOF_ERROR, F.SSL_INVALID_HOSTNAME,
    F.SSL_UNKNOWN_AUTHORITY, F.SSL_INVALID_CERTIFICATE, F.SSL_FAILED_HANDSHAKE,
    F.DNS_NXDOMAIN, F.DNS_SERVFAIL, F.DNS_REFUSED, F.DNS_NO_ANSWER, F.DNS_BOGON,
})
CERT_FAILURES = frozenset({F.SSL_INVALID_HOSTNAME, F.SSL_UNKNOWN_AUTHORITY,
                           F.SSL_INVALID_CERTIFICATE})
# failures of a handshake that a censor filtering on the name causes (not certificate problems)
SNI_FILTER_FAILURES = frozenset({F.CONNECTION_RESET, F.EOF_ERROR, F.GENERIC_TIMEOUT,
                                 F.CONNECTION_ABORTED, F.SSL_FAILED_HANDSHAKE})
# the layer of the operation that failed
LAYER = {"resolve": "dns", "connect": "tcp", "tls_handshake": "tls", "http_round_trip": "http"}

Case = TypeVar("Case")


@dataclass(frozen=True, slots=True)
class Finding:
    """What a rule found: the evidence line, the details, and the layer when the rule does
    not fix it (a failure's layer is the failed step's)."""

    evidence: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    layer: str | None = None


@dataclass(frozen=True, slots=True)
class Rule(Generic[Case]):
    """One rule: ``when(case)`` is its condition (None: documented here, decided elsewhere,
    e.g. ``baseline.network_unavailable``); ``layer`` the verdict's layer unless the finding
    names one."""

    id: str
    verdict: str
    why: str
    when: Callable[[Case], Finding | None] | None = None
    layer: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The rule that applied and what it found."""

    rule: Rule[Any]
    finding: Finding


def first(rules: Sequence[Rule[Case]], case: Case) -> Decision | None:
    """The first rule of ``rules`` (in order) whose condition holds for ``case``."""
    for rule in rules:
        if rule.when is not None:
            found = rule.when(case)
            if found is not None:
                return Decision(rule, found)
    return None


def verdict(rule: Rule[Any], finding: Finding, m: Measurement | None, service: str) -> Verdict:
    """The stored verdict of ``rule`` for a measurement (``m``) or a whole service (None)."""
    return Verdict(verdict=rule.verdict, rule_id=rule.id, analyzer_version=ANALYZER_VERSION,
                   service=service, measurement_id=m.id if m else None,
                   layer=rule.layer if finding.layer is None else finding.layer,
                   evidence=finding.evidence,
                   details=finding.details)


def decide(decision: Decision, m: Measurement | None, service: str) -> Verdict:
    return verdict(decision.rule, decision.finding, m, service)


def by_id(*lists: Iterable[Rule[Any]]) -> dict[str, Rule[Any]]:
    """One lookup over several lists, first occurrence kept. An id may close several lists
    (``failure.no_control`` ends the failure and the VPN lists) with one verdict and one why;
    an id twice in one list, or with two meanings, is an error."""
    out: dict[str, Rule[Any]] = {}
    for rules in lists:
        seen: set[str] = set()
        for rule in rules:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} is used twice in one list")
            seen.add(rule.id)
            known = out.setdefault(rule.id, rule)
            if (known.verdict, known.why) != (rule.verdict, rule.why):
                raise ValueError(f"rule id {rule.id!r} has two meanings")
    return out
