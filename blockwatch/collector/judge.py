"""The collector judges each run once all of it has arrived, against the control vantages'
measurements that arrived through it (the same ``judge_run`` as a sweep and ``reanalyze``).

Control vantages are the tokens added with ``--control`` (outside the censored networks): a
run is judged with their measurements from ``MAX_AGE`` before to ``MAX_AGE`` after its start.
The verdicts are appended (a measurement's current verdict is the newest), marked
``details.judged_by = "collector"``, and the run records what it was judged on, so that
``blockwatch reanalyze --later-controls`` on the collector's database (e.g. after a control's
run arrived late) judges it again on the same terms.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from blockwatch.storage import collector as db

MAX_AGE = dt.timedelta(hours=6)


def judge(store: Any, run_id: str) -> int:
    """Judge the stored run ``run_id``; the number of verdicts added (0: not judged, e.g. a
    control path's run, whose measurements are evidence only)."""
    from blockwatch.analysis.verdicts import judge_run
    from blockwatch.judging import stored_inputs
    from blockwatch.probes.catalogue import load_catalogue
    from blockwatch.probes.model import RunInputs

    run = store.get_run(run_id)
    if run is None or run.status == "running" or run.control_for is not None:
        return 0
    controls = tuple(v for v in db.control_vantages(store) if v != run.vantage)
    own = run.inputs
    inputs = RunInputs(control_resolvers=own.control_resolvers if own else (),
                       control_vantages=controls,
                       local_networks=own.local_networks if own else (),
                       controls_since=run.started_at - MAX_AGE if controls else None,
                       controls_until=run.started_at + MAX_AGE if controls else None)
    verdicts = judge_run(stored_inputs(store, run, inputs, load_catalogue(), None))
    marked = [dataclasses.replace(v, details={**v.details, "judged_by": "collector"})
              for v in verdicts]
    store.set_run_inputs(run.id, inputs)
    store.add_verdicts(run.id, marked)
    return len(marked)
