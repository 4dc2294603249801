"""``blockwatch import ooni FILE|DIR ...`` and ``blockwatch reanalyze [--since DATE]``.

Guarantees:

- ``import ooni`` streams OONI measurements (JSON, JSONL, gzip) into the database as runs of the
  OONI vantage, judged by blockwatch's own rules; a measurement imported before is not imported
  again. Each record is checked on its own: a bad one (not JSON, a value of the wrong type, a
  NaN or absurd time, ...) is skipped, and the rest of the file is imported. Exit 0 when it ran,
  even if records were skipped (no documented exit code means "imported, some skipped"; 1 is a
  bug, 2 wrote nothing): a warning on stderr, even with ``-q``, then names each skipped record
  (``FILE line N: what is wrong``, printable text only), or if there are more than
  ``importer.EXAMPLES`` counts them by reason and names the first.
- ``reanalyze`` recomputes the verdicts of stored runs with the current analyzer and appends
  those that changed (verdict, rule, evidence or analyzer version) as new verdict rows (the old
  ones stay; a second reanalyze writes nothing), and refreshes a changed run's summary (what
  ``blockwatch runs`` shows); nothing is measured. Each run is judged on the
  inputs recorded with it (``blockwatch.judging``), so that a re-analysis by the same analyzer
  gives the same verdicts; a control path's run is not judged. One run at a time is held in
  memory.
- Fingerprints come from ``[analysis] fingerprints`` plus the built-in set; a bad file stops
  with exit 2 before anything is written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from blockwatch.cli import EXIT_OK, UsageError, _parse_since, _store, load_config

if TYPE_CHECKING:
    from blockwatch.config import Config

Handler = Callable[[argparse.Namespace], int]


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> dict[str, Handler]:
    imp = sub.add_parser("import", help="import measurements of another tool (OONI)")
    common(imp)
    imp.add_argument("source", choices=["ooni"], help="the format: ooni")
    imp.add_argument("paths", nargs="+", metavar="FILE|DIR",
                     help="OONI measurements: .json (one), .jsonl or .ooni (one per line), .gz, "
                          "or a directory of them")
    imp.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")

    re = sub.add_parser("reanalyze", help="recompute verdicts of stored runs (no measuring)")
    common(re)
    re.add_argument("--since", type=_parse_since, metavar="DATE",
                    help="only runs started at or after DATE (UTC)")
    re.add_argument("--run", metavar="RUN_ID", help="only this run (id or unique prefix)")
    re.add_argument("--later-controls", action="store_true",
                    help="also compare with control vantages' measurements taken up to "
                         "[analysis] control_max_age_h after a run started (a sweep could "
                         "only use earlier ones)")
    re.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return {"import": cmd_import, "reanalyze": cmd_reanalyze}


def fingerprints(cfg: Config) -> Any:
    from blockwatch.app import fingerprints as configured

    return configured(cfg)


def cmd_import(args: argparse.Namespace) -> int:
    from blockwatch.ooni import import_ooni
    from blockwatch.probes.textsafe import one_line as printable

    cfg = load_config(args.config)
    fps = fingerprints(cfg)
    with _store(cfg) as store:
        report = import_ooni(store, args.paths, cfg.catalogue(), fps)
    if not args.quiet:
        print(f"imported {report.runs} OONI measurements as {report.measurements} blockwatch "
              f"measurements; {report.already_imported} already imported; "
              f"{report.skips} skipped", file=sys.stderr)
    if report.skips:
        print(f"warning: {report.skips} record{'s' if report.skips > 1 else ''} skipped, the "
              f"rest imported:", file=sys.stderr)
        if report.skips > len(report.examples):  # too many to name: counted by reason
            for reason, n in sorted(report.skipped.items(), key=lambda kv: -kv[1]):
                print(f"  skipped {n}: {printable(reason)}", file=sys.stderr)
            print(f"  the first {len(report.examples)}:", file=sys.stderr)
        for skip in report.examples:
            print(f"  {skip.text}", file=sys.stderr)
    return EXIT_OK


def cmd_reanalyze(args: argparse.Namespace) -> int:
    from blockwatch.analysis.verdicts import ANALYZER_VERSION, judge_run
    from blockwatch.app import local_networks
    from blockwatch.judging import run_inputs, stored_inputs
    from blockwatch.scheduler.sweep import summarize

    cfg = load_config(args.config)
    fps = fingerprints(cfg)
    catalogue = cfg.catalogue()
    max_age = dt.timedelta(hours=cfg.analysis.control_max_age_h)
    runs = verdicts = legacy = controls = 0
    with _store(cfg) as store:
        for run in _runs(store, args):
            if run.status == "network_unavailable":
                continue  # nothing was measured; its verdict cannot change
            if run.control_for is not None:
                controls += 1  # a control path's run: evidence for its main run, not judged
                continue
            legacy += run.inputs is None
            inputs = run_inputs(run, control_resolvers=tuple(cfg.dns.controls),
                                control_vantages=tuple(cfg.analysis.control_vantages),
                                local_networks=local_networks(cfg), max_age=max_age,
                                later_controls=args.later_controls)
            analysis = stored_inputs(store, run, inputs, catalogue, fps)
            new = judge_run(analysis)
            changed = _changed(store.verdicts(run_id=run.id, current=True), new)
            # only what differs (a second reanalyze writes nothing), in one transaction: the
            # changed verdicts, the summary they give, and what they rest on
            store.add_verdicts(
                run.id, changed,
                summary={**run.summary, **summarize(new, run.summary.get(
                    "measurements", len(analysis.measurements)))} if changed else None,
                inputs=inputs if inputs != run.inputs else None)
            runs += 1
            verdicts += len(changed)
    if not args.quiet:
        print(f"reanalyzed {runs} runs with analyzer {ANALYZER_VERSION}: {verdicts} verdicts "
              "changed and added (earlier verdicts kept; current ones: the current_verdicts "
              "view, `blockwatch show RUN`)", file=sys.stderr)
        if controls:
            print(f"  {controls} control-path runs are evidence for their main runs, not judged "
                  "themselves", file=sys.stderr)
        if legacy:
            print(f"  {legacy} runs stored before blockwatch recorded what they were judged on "
                  "were judged with this config's controls ([dns] controls, [analysis] "
                  "control_vantages, [probes] scope)", file=sys.stderr)
    return EXIT_OK


def _fact(v: Any) -> tuple[Any, ...]:
    """What a verdict says (its rule, its analyzer and its evidence included)."""
    return (v.verdict, v.layer, v.rule_id, v.analyzer_version, v.evidence,
            json.dumps(v.details, sort_keys=True, default=str))


def _changed(current: list[Any], new: list[Any]) -> list[Any]:
    """The verdicts of ``new`` that differ from the current ones of the same measurement or
    service (a new analyzer version is a change: the verdict is then that analyzer's)."""
    now = {(v.measurement_id, v.service): _fact(v) for v in current}
    return [v for v in new if now.get((v.measurement_id, v.service)) != _fact(v)]


def _runs(store: Any, args: argparse.Namespace) -> list[Any]:
    if args.run:
        run = store.get_run(args.run)
        if run is None:
            raise UsageError(f"no run {args.run!r} (see `blockwatch runs`)")
        return [run]
    # runs() is newest first; reanalyse oldest first so verdict ids follow time
    found = [r for r in store.runs(limit=2**31 - 1)
             if args.since is None or r.started_at >= args.since]
    return sorted(found, key=lambda r: (r.started_at, r.id))
