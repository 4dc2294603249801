"""ECH rules (the ``ech`` probe): hellos carrying ECH that go unanswered where the hello without
it is answered, on the same address in the same run.

Found by ``blockwatch.analysis.verdicts`` through the probe registry (this module's name is the
probe's): ``STAGES`` run for ``ech`` measurements that failed at ``ech_hello`` (an ECH hello
failed where the plain one was answered) or at ``tls_handshake`` (no hello was answered);
``ECH_RULES`` in order, the first that applies decides. A failed connect or lookup goes on to
the common rules like any probe's; no failure is ``ok.no_failure``.

The same-address, same-run comparison is itself a control, as the control SNI is for the tls
probe: the three hellos went to one address in a random order, each on its own connection, and
only the ECH extension (and, for the real config, the outer name) differs. From one vantage the
claim is ``confidence: medium`` (a server that resets on an ECH extension it should ignore would
look the same; GREASE exists so that none does); a control vantage whose ECH hellos to the same
endpoint were answered makes it ``high``, and one whose ECH hellos failed too turns it into the
server's doing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from blockwatch.analysis.evidence import Subject
from blockwatch.analysis.rules import Decision, Finding, Rule, first
from blockwatch.probes import failures as F
from blockwatch.probes.ech import OPERATION, ECHObservation, counted
from blockwatch.probes.model import Measurement

# what a censor makes of a hello it filters (a malformed reply, or a connection that never
# opened, is not a filtered hello)
INTERFERED = frozenset({F.CONNECTION_RESET, F.GENERIC_TIMEOUT, F.EOF_ERROR,
                        F.CONNECTION_ABORTED})
ECH_VARIANTS = ("grease", "real")


def interfered(o: ECHObservation) -> bool:
    """The hello went out on an open connection and got what a censor gives a hello it filters.
    A connection that never opened (``connect_failed``, even by a timeout: a lost SYN, a loaded
    path) carried no hello, so no ECH extension: it says nothing about ECH."""
    return not o.answered and o.outcome != "connect_failed" and o.failure in INTERFERED


@dataclass(frozen=True, slots=True)
class ECHCase:
    m: Measurement
    # per address whose plain hello was answered: the ECH hellos that count (last attempt)
    plain_ok: dict[str, list[ECHObservation]]
    # the control vantages' hellos to the same endpoint: was a plain / an ECH hello answered,
    # did an ECH hello fail
    control_plain: bool
    control_ech_ok: bool
    control_ech_failed: bool

    @property
    def where(self) -> str:
        return f"ech {self.m.target.key}"

    @property
    def failed(self) -> list[ECHObservation]:
        return [o for hellos in self.plain_ok.values() for o in hellos if not o.answered]

    @property
    def consistent(self) -> bool:
        """On every address where the plain hello was answered, every ECH hello failed, each
        as a censor makes a hello fail."""
        return bool(self.plain_ok) and all(
            hellos and all(interfered(o) for o in hellos) for hellos in self.plain_ok.values())

    def said(self) -> str:
        parts = [f"{o.variant} {o.outcome} at {o.address}" for o in self.failed[:4]]
        return "; ".join(parts)

    def details(self, confidence: str) -> dict[str, Any]:
        return {"confidence": confidence, "failed": [
            {"address": o.address, "variant": o.variant, "order": o.order,
             "attempt": o.attempt, "failure": o.failure} for o in self.failed]}


def case(s: Subject) -> ECHCase | None:
    if s.m.failed_operation not in (OPERATION, "tls_handshake"):
        return None
    hellos = counted([o for o in s.m.observations if isinstance(o, ECHObservation)])
    plain_ok = {a: [v[k] for k in ECH_VARIANTS if k in v] for a, v in hellos.items()
                if "plain" in v and v["plain"].answered}
    control = [o for c in s.ev.by_target.get(("ech", s.m.target.key), [])
               for o in c.observations if isinstance(o, ECHObservation) and o.kind == "hello"]
    ech = [o for o in control if o.variant in ECH_VARIANTS]
    return ECHCase(s.m, plain_ok,
                   any(o.answered for o in control if o.variant == "plain"),
                   any(o.answered for o in ech),
                   any(not o.answered for o in ech))


def _plain_failed(c: ECHCase) -> Finding | None:
    if c.plain_ok:
        return None
    return Finding(f"{c.m.failure} from {c.where} without ECH: the tls and tcp probes judge "
                   "the name and the address", layer="tls")


def _vs_control(c: ECHCase) -> Finding | None:
    if not c.consistent or not c.control_ech_ok:
        return None
    return Finding(f"{c.said()} while the hello without ECH to the same address was answered; "
                   "a control vantage's ECH hello to the same endpoint was answered",
                   c.details("high"))


def _server_refuses(c: ECHCase) -> Finding | None:
    if not c.control_ech_failed or c.control_ech_ok or not c.control_plain:
        return None
    return Finding(f"{c.said()}; the control vantage's ECH hellos to the same endpoint failed "
                   "too while its plain one was answered: the server (or its network) does "
                   "not take ECH")


def _plain_only(c: ECHCase) -> Finding | None:
    if not c.consistent:
        return None
    return Finding(f"{c.said()} while the hello without ECH to the same address, in the same "
                   "run and in a random order, was answered (no control vantage)",
                   c.details("medium"))


def _real_only(c: ECHCase) -> Finding | None:
    failed = c.failed
    if not failed or any(o.variant != "real" for o in failed):
        return None
    return Finding(f"{c.said()} while the GREASE ECH hello was answered: the service's own "
                   "ECH config (or its public name) met trouble that GREASE did not; no claim",
                   c.details("low"))


def _no_claim(c: ECHCase) -> Finding:
    return Finding(f"{c.said() or c.m.failure} from {c.where}: not consistent, or not how a "
                   "censor makes a hello fail (a malformed reply, a connection that did not "
                   "open)")


ECH_RULES: tuple[Rule[ECHCase], ...] = (
    Rule("ech.plain_failed", "inconclusive",
         "the hello without ECH was not answered on any address: an outage or blocking of the "
         "name or address, which the tls and tcp probes judge; no ECH claim", _plain_failed),
    Rule("ech.blocked_vs_control", "ech_blocked",
         "every ECH hello (GREASE, and the real config when published) got a reset, silence "
         "or an EOF while the hello without ECH to the same address was answered, and a "
         "control vantage's ECH hello to the same endpoint was answered (confidence high)",
         _vs_control, "ech"),
    Rule("ech.server_refuses", "inconclusive",
         "the ECH hellos failed here and at the control vantage, whose plain hello was "
         "answered: the server does not take ECH, not the censor's doing as far as can be "
         "told", _server_refuses, "ech"),
    Rule("ech.plain_only", "ech_blocked",
         "every ECH hello got a reset, silence or an EOF while the hello without ECH to the "
         "same address, in the same run and a random order, was answered; no control vantage "
         "(confidence medium: the same-address comparison is the control)", _plain_only,
         "ech"),
    Rule("ech.real_config_only", "inconclusive",
         "only the hello with the service's own ECH config failed while the GREASE one was "
         "answered: no claim (the public name may be filtered, or the config stale)",
         _real_only, "ech"),
    Rule("ech.no_claim", "inconclusive",
         "an ECH hello failed in a way a censor does not make it fail (a malformed reply, a "
         "connection that did not open) or not on every address: no claim", _no_claim, "ech"),
)


def _stage(s: Subject) -> Decision | None:
    c = case(s)
    return first(ECH_RULES, c) if c is not None else None


STAGES: tuple[tuple[str, Callable[[Subject], Decision | None]], ...] = (("ech hello", _stage),)
RULE_LISTS: dict[str, tuple[Rule[Any], ...]] = {"ech hello": ECH_RULES}
