"""STUN rules (the ``stun`` probe): a Binding request that got no answer, or an ICMP error, is
blocking only if a control vantage's request to the same server was answered.

Found by ``blockwatch.analysis.verdicts`` through the probe registry (this module's name is the
probe's): ``STAGES`` run for ``stun`` measurements before the generic rules; ``STUN_RULES`` in
order, the first that applies decides. A measurement without a failure is ``ok.no_failure``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from blockwatch.analysis.evidence import Subject
from blockwatch.analysis.failure import NO_CONTROL, SAME_AS_CONTROL
from blockwatch.analysis.rules import Decision, Finding, Rule, first
from blockwatch.probes.model import Measurement
from blockwatch.probes.stun import OPERATION, STUNObservation

# what a censor makes of a Binding request (a malformed reply is the server's or a middlebox's
# doing, not a silence)
INTERFERED = frozenset({"no_reply", "icmp_unreachable"})


@dataclass(frozen=True, slots=True)
class STUNCase:
    m: Measurement
    result: str  # the observation's result
    controls: list[str]  # the control vantages' results for the same target

    @property
    def where(self) -> str:
        return f"stun {self.m.target.key}"


def case(s: Subject) -> STUNCase | None:
    if s.m.failed_operation != OPERATION:
        return None
    obs = next((o for o in s.m.observations if isinstance(o, STUNObservation)), None)
    result = obs.result if obs is not None else ""
    controls = [o.result for c in s.ev.by_target.get(("stun", s.m.target.key), [])
                for o in c.observations if isinstance(o, STUNObservation)]
    return STUNCase(s.m, result, controls)


def _answered(results: list[str]) -> bool:
    return any(r in ("binding_success", "binding_error") for r in results)


def _failure_vs_control(c: STUNCase) -> Finding | None:
    if c.result not in INTERFERED or not _answered(c.controls):
        return None
    return Finding(f"{c.result} from {c.where}; the control's Binding request was answered")


def _same_as_control(c: STUNCase) -> Finding | None:
    if not c.controls or _answered(c.controls):
        return None
    return Finding(f"{c.result} from {c.where}; the control got no answer either")


def _no_control(c: STUNCase) -> Finding:
    return Finding(f"{c.result or c.m.failure} from {c.where}")


STUN_RULES: tuple[Rule[STUNCase], ...] = (
    Rule("stun.failure_vs_control", "stun_blocked",
         "the STUN Binding request got no answer or an ICMP error while a control vantage's "
         "request to the same server was answered", _failure_vs_control, "stun"),
    Rule("stun.same_as_control", SAME_AS_CONTROL.verdict,
         "the control vantage's Binding request to the same server failed too: the server is "
         "down or gone", _same_as_control, "stun"),
    Rule("stun.no_control", NO_CONTROL.verdict,
         "the Binding request failed and no control vantage asked the same server",
         _no_control, "stun"),
)


def _stage(s: Subject) -> Decision | None:
    c = case(s)
    return first(STUN_RULES, c) if c is not None else None


STAGES: tuple[tuple[str, Callable[[Subject], Decision | None]], ...] = (("stun binding", _stage),)
RULE_LISTS: dict[str, tuple[Rule[Any], ...]] = {"stun binding": STUN_RULES}
