"""The ech probe's review (after #17): connections that never opened are no ECH evidence,
ECHConfigs a client must ignore, and the worker process's life."""

from __future__ import annotations

import dataclasses

from judging import judge_run
from test_ech import NEWS, measured

from blockwatch.probes import failures as F
from blockwatch.probes.ech import ECHObservation, outcome


def with_connect_timeouts(m, variants: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """``m`` with the hellos of ``variants`` turned into connections that timed out."""
    obs = tuple(dataclasses.replace(o, outcome="connect_failed", failure=F.GENERIC_TIMEOUT)
                if isinstance(o, ECHObservation) and o.variant in variants else o
                for o in m.observations)
    failure, op = outcome(obs)
    return dataclasses.replace(m, observations=obs, failure=failure, failed_operation=op)


def test_ech_hellos_whose_connections_timed_out_are_no_ech_blocking() -> None:
    """The plain hello was answered; the GREASE and real hellos' connects timed out twice (a
    lossy path): no hello with ECH ever went out, so nothing says ECH is filtered. It was
    ``ech.plain_only`` (ech_blocked) because a connect timeout is generic_timeout_error."""
    m = with_connect_timeouts(measured("home", {"plain": "server_hello", "grease": "timeout",
                                                "real": "timeout"}), ("grease", "real"))
    assert m.failed_operation == "ech_hello"
    (v, service) = judge_run([m], {"news": NEWS}, [])
    assert v.verdict != "ech_blocked" and v.rule_id == "ech.no_claim", v.rule_id
    assert service.verdict != "blocked"
    # one opened and was silenced, one never opened: not every ECH hello was filtered
    m = with_connect_timeouts(measured("home", {"plain": "server_hello", "grease": "timeout",
                                                "real": "timeout"}), ("real",))
    assert judge_run([m], {"news": NEWS}, [])[0].rule_id == "ech.no_claim"
    # with a control vantage that was answered: still no claim
    control = measured("vps", {"plain": "server_hello", "grease": "server_hello"})
    m = with_connect_timeouts(measured("home", {"plain": "server_hello", "grease": "timeout"}),
                              ("grease",))
    v = judge_run([m, control], {"news": NEWS}, [], control_vantages=["vps"])[0]
    assert v.verdict != "ech_blocked", v.rule_id
