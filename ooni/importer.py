"""Importing OONI measurements into a store, judged by blockwatch's own rules.

``import_ooni`` reads files (``blockwatch.ooni.read``), turns each record into a blockwatch run
(``blockwatch.ooni.transform``), judges it with the one ``judge_run`` a sweep and
``blockwatch reanalyze`` also use, and stores the run, its measurements and verdicts. A record
that cannot be read or mapped is skipped and counted with its reason; a measurement imported
before (same run id) is counted, not stored twice. This is ``blockwatch import ooni``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from blockwatch.analysis import AnalysisInputs, judge_run
from blockwatch.analysis.fingerprints import FingerprintSet
from blockwatch.ooni.models import OONIError
from blockwatch.ooni.read import Skip, read_records
from blockwatch.ooni.transform import Imported, from_ooni
from blockwatch.probes.model import Measurement, Run, Service, Verdict


class _Store(Protocol):
    def get_run(self, run_id: str) -> Run | None: ...
    def start_run(self, run: Run) -> None: ...
    def add_measurements(self, measurements: Sequence[Measurement],
                         verdicts: Sequence[Verdict] = ()) -> None: ...


@dataclass(slots=True)
class ImportReport:
    """What an import did: counts, and the reasons records were skipped (first examples kept)."""

    runs: int = 0
    measurements: int = 0
    already_imported: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: list[Skip] = field(default_factory=list)

    def skip(self, s: Skip) -> None:
        self.skipped[s.reason.split(" (")[0]] += 1
        if len(self.examples) < 10:
            self.examples.append(s)


def _summarize(summary: dict[str, Any], verdicts: Sequence[Verdict]) -> dict[str, Any]:
    services = [v for v in verdicts if v.measurement_id is None]
    counts = Counter(v.verdict for v in services)
    blocked = sorted(v.service for v in services if v.verdict in ("blocked", "partial"))
    return {**summary, "services": dict(counts), "blocked": blocked}


def import_ooni(store: _Store, paths: Iterable[str | Path], catalogue: Mapping[str, Service],
                fingerprints: FingerprintSet | None = None,
                on_run: Callable[[Imported, list[Verdict]], None] | None = None) -> ImportReport:
    """Read, map, judge with blockwatch's rules and store every OONI measurement of ``paths``.

    A measurement already imported (same run id) is counted, not stored twice.
    """
    report = ImportReport()
    services = dict(catalogue)
    for item in read_records(paths):
        if isinstance(item, Skip):
            report.skip(item)
            continue
        where, record = item
        try:
            imp = from_ooni(record, services)
        except OONIError as exc:
            report.skip(Skip(where, str(exc)))
            continue
        if not imp.measurements:
            report.skip(Skip(where, f"no DNS/TCP/TLS/HTTP observations blockwatch can read "
                                    f"(test {imp.run.summary.get('test_name')})"))
            continue
        if store.get_run(imp.run.id) is not None:
            report.already_imported += 1
            continue
        assert imp.run.inputs is not None
        verdicts = judge_run(AnalysisInputs(measurements=imp.measurements, services=services,
                                            run=imp.run.inputs, fingerprints=fingerprints))
        imp.run = dataclasses.replace(imp.run, summary=_summarize(imp.run.summary, verdicts))
        store.start_run(imp.run)
        store.add_measurements(imp.measurements, verdicts)
        report.runs += 1
        report.measurements += len(imp.measurements)
        if on_run is not None:
            on_run(imp, verdicts)
    return report
