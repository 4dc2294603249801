"""The analysis stage: verdicts from what the probes observed.

Pure functions of typed inputs (the run's measurements, the control measurements, the control
resolvers, fingerprints, the local networks) to verdicts; no I/O, no clock, no database. Imports
only ``blockwatch.probes`` (the vocabulary). A sweep, ``blockwatch reanalyze`` and the OONI
import all judge through here.
"""

from blockwatch.analysis.verdicts import (
    ANALYZER_VERSION,
    BLOCKED,
    CERT_FAILURES,
    AnalysisInputs,
    Judge,
    judge_run,
)

__all__ = ["ANALYZER_VERSION", "BLOCKED", "CERT_FAILURES", "AnalysisInputs", "Judge", "judge_run"]
