"""Importing OONI measurements into a store, judged by blockwatch's own rules.

``import_ooni`` reads files (``blockwatch.ooni.read``), turns each record into a blockwatch run
(``blockwatch.ooni.transform``), judges it with the one ``judge_run`` a sweep and
``blockwatch reanalyze`` also use, and stores the run, its measurements and verdicts. Each record
is checked on its own: one that cannot be read, does not fit the models (``OONIError``) or still
cannot be mapped or judged (``MALFORMED``) is skipped and counted with its file, line and
reason, and the rest of the file is imported; a measurement imported before (same run id) is
counted, not stored twice. This is ``blockwatch import ooni``.
"""

from __future__ import annotations

import dataclasses
import logging
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from blockwatch.analysis import AnalysisInputs, judge_run
from blockwatch.analysis.fingerprints import FingerprintSet
from blockwatch.ooni.models import OONIError
from blockwatch.ooni.read import Record, Skip, read_records
from blockwatch.ooni.transform import Imported, from_ooni
from blockwatch.probes.model import Measurement, Run, Service, Verdict
from blockwatch.probes.textsafe import one_line as printable

log = logging.getLogger("blockwatch.ooni")
EXAMPLES = 10  # the skipped records an ImportReport names one by one

# What a record the models let through can still raise while it is mapped or judged: a value of
# the right type that the mapping or the analysis cannot take (ValueError, as an answer that is
# not an IP address was). That record is skipped, named with the exception's class, and the
# import goes on; the models are then to be made stricter. Not caught: the store's errors, and
# MemoryError, KeyboardInterrupt or any other exception, which stop the import as before.
MALFORMED: tuple[type[Exception], ...] = (
    ValueError, TypeError, KeyError, IndexError, AttributeError, ArithmeticError, RecursionError)


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
        if len(self.examples) < EXAMPLES:
            self.examples.append(s)

    @property
    def skips(self) -> int:
        return sum(self.skipped.values())


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
        imp = _mapped(item, services)
        if isinstance(imp, Skip):
            report.skip(imp)
            continue
        if store.get_run(imp.run.id) is not None:
            report.already_imported += 1
            continue
        verdicts = _judged(item, imp, services, fingerprints)
        if isinstance(verdicts, Skip):
            report.skip(verdicts)
            continue
        imp.run = dataclasses.replace(imp.run, summary=_summarize(imp.run.summary, verdicts))
        store.start_run(imp.run)
        store.add_measurements(imp.measurements, verdicts)
        report.runs += 1
        report.measurements += len(imp.measurements)
        if on_run is not None:
            on_run(imp, verdicts)
    return report


def _malformed(record: Record, step: str, exc: Exception) -> Skip:
    if log.isEnabledFor(logging.DEBUG):  # -v: the traceback, in printable text
        lines = "".join(traceback.format_exception(exc)).splitlines()
        log.debug("%s: could not be %s:\n%s", printable(record.where), step,
                  "\n".join(map(printable, lines)))
    # the class only: an exception's text may echo the record's (the probe's IP)
    return record.skip(f"could not be {step} ({type(exc).__name__}: please report it with the "
                       f"record)")


def _mapped(record: Record, services: Mapping[str, Service]) -> Imported | Skip:
    try:
        imp = from_ooni(record.data, services)
    except OONIError as exc:
        return record.skip(str(exc))
    except MALFORMED as exc:
        return _malformed(record, "mapped", exc)
    if not imp.measurements:
        return record.skip(f"no DNS/TCP/TLS/HTTP observations blockwatch can read "
                           f"(test {imp.run.summary.get('test_name')})")
    return imp


def _judged(record: Record, imp: Imported, services: Mapping[str, Service],
            fingerprints: FingerprintSet | None) -> list[Verdict] | Skip:
    assert imp.run.inputs is not None
    try:
        return judge_run(AnalysisInputs(measurements=imp.measurements, services=services,
                                        run=imp.run.inputs, fingerprints=fingerprints))
    except MALFORMED as exc:
        return _malformed(record, "judged", exc)
