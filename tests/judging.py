"""``judge_run`` with its inputs spelled out, for tests that build a run by hand: the real
``blockwatch.analysis.verdicts.judge_run`` on ``AnalysisInputs`` made of these arguments."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from blockwatch.analysis.fingerprints import FingerprintSet
from blockwatch.analysis.verdicts import AnalysisInputs
from blockwatch.analysis.verdicts import judge_run as _judge_run
from blockwatch.probes.model import Measurement, RunInputs, Service, Verdict


def judge_run(measurements: Sequence[Measurement], services: Mapping[str, Service],
              control_resolvers: Iterable[str], *, network_ok: bool = True,
              control_vantages: Iterable[str] = (), fingerprints: FingerprintSet | None = None,
              local_networks: Iterable[str] = ()) -> list[Verdict]:
    return _judge_run(AnalysisInputs(
        measurements=measurements, services=services, fingerprints=fingerprints,
        network_ok=network_ok, run=RunInputs(control_resolvers=tuple(control_resolvers),
                                             control_vantages=tuple(control_vantages),
                                             local_networks=tuple(local_networks))))
