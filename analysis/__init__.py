"""The analysis stage: verdicts from what the probes observed.

Pure functions of typed inputs (the run's measurements, the control measurements, the control
resolvers, fingerprints, the local networks) to verdicts; no I/O, no clock, no database. Imports
only ``blockwatch.probes`` (the vocabulary). A sweep, ``blockwatch reanalyze`` and the OONI
import all judge through ``judge_run``.

The rules are ordered data, one list per layer: ``dns.py``, ``http.py``, ``trace.py``,
``vpn.py``, ``failure.py`` (a failed step against the controls), ``service.py`` (one verdict
per service); ``rules.py`` says what a rule is, ``evidence.py`` what the controls saw,
``verdicts.py`` the order a measurement goes through them and the judgement of a run.
"""

from blockwatch.analysis.rules import ANALYZER_VERSION, BLOCKED, CERT_FAILURES
from blockwatch.analysis.verdicts import AnalysisInputs, Judge, judge_run

__all__ = ["ANALYZER_VERSION", "BLOCKED", "CERT_FAILURES", "AnalysisInputs", "Judge", "judge_run"]
