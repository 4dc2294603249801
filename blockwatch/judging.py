"""A stored run's ``AnalysisInputs``: what ``blockwatch reanalyze`` (and, later, a collector)
hands to the one ``judge_run``.

A run is judged on what it was judged on when it was stored (``Run.inputs``, schema 0004): its
own measurements, the control resolvers and vantages and local networks of that day, and the
other runs' measurements of those vantages inside the recorded window. Only the analysis is
today's: the rules (``ANALYZER_VERSION``) and the fingerprints of ``[analysis] fingerprints``.
So a re-analysis by the same analyzer gives the verdicts the sweep stored.

Two cases widen that, each recorded with the run afterwards (``Run.inputs`` always says what
its current verdicts were judged on, so the next re-analysis gives them again):

* a run stored before blockwatch recorded its inputs is judged on today's config
  (``[dns] controls``, ``[analysis] control_vantages``, the scope's local networks), with
  control measurements from ``control_max_age_h`` either side of its start;
* ``later_controls``: a sweep can only compare with controls measured before it ends; a
  re-analysis may also use the control vantages' measurements of the ``control_max_age_h``
  after its start (a control machine that ran a little later).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

from blockwatch.analysis.fingerprints import FingerprintSet
from blockwatch.analysis.verdicts import AnalysisInputs
from blockwatch.probes.model import Run, RunInputs, Service


def run_inputs(run: Run, *, control_resolvers: tuple[str, ...],
               control_vantages: tuple[str, ...], local_networks: tuple[str, ...],
               max_age: dt.timedelta, later_controls: bool = False) -> RunInputs:
    """What ``run`` is judged on: its recorded inputs, or (none recorded) today's config as
    given; with ``later_controls``, the control window reaches ``max_age`` past the start."""
    inputs = run.inputs
    if inputs is None:
        vantages = tuple(v for v in control_vantages if v != run.vantage)
        inputs = RunInputs(control_resolvers=control_resolvers, control_vantages=vantages,
                           local_networks=local_networks,
                           controls_since=run.started_at - max_age if vantages else None,
                           controls_until=run.started_at + max_age if vantages else None)
    elif inputs.control_vantages and inputs.controls_until is not None:
        # a window whose start was not recorded (migrated runs): the sweep's, max_age before
        since = inputs.controls_since or run.started_at - max_age
        until = inputs.controls_until
        if later_controls:
            until = max(until, run.started_at + max_age)
        inputs = dataclasses.replace(inputs, controls_since=since, controls_until=until)
    return inputs


def stored_inputs(store: Any, run: Run, inputs: RunInputs, services: Mapping[str, Service],
                  fingerprints: FingerprintSet | None, cache: Any = None) -> AnalysisInputs:
    """Everything ``judge_run`` needs to judge the stored ``run`` on ``inputs``, read from
    ``store``: the run's measurements and the control vantages' inside the window (of each
    vantage and service, its nearest run's; ``cache``: a ``storage.store.RunCache`` kept
    across calls)."""
    own = list(store.measurements(run_id=run.id))
    controls = []
    if inputs.control_vantages and inputs.controls_until is not None:
        since = inputs.controls_since or inputs.controls_until
        controls = [m for m in store.control_measurements(
            list(inputs.control_vantages), since, inputs.controls_until,
            services=sorted({m.service for m in own}), near=run.started_at, cache=cache,
            ended=run.finished_at or inputs.controls_until)
            if m.run_id != run.id]
    return AnalysisInputs(measurements=own,
                          services=services, run=inputs, controls=controls,
                          fingerprints=fingerprints,
                          network_ok=run.status != "network_unavailable")
