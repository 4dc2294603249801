"""The ``blockwatch`` command line.

Exit codes (documented in the README; cron and systemd rely on them):
  0  the sweep ran (whatever it found blocked) / the command succeeded
  1  an internal error (a bug: please report it)
  2  bad usage or a bad config file: nothing was measured or written
  3  the results database could not be opened or written
  4  the local network was unavailable: nothing was probed, the run is stored as such
  5  another run holds the lock (same database, or same schedule group): this one did not start
  6  the run reached --max-runtime / the group's max_runtime: what was measured is stored,
     the run is "interrupted"
  7  no consent for an unattended run (see ``blockwatch consent``): nothing was measured
  130 interrupted (Ctrl-C / SIGTERM): what was measured is stored, the run is "interrupted"

Size: ``build_parser``, ``main`` and what every ``*_cli`` module imports from here
(``UsageError``, config loading, opening the store, the exit codes above) are one module with the
core subcommands (``run``, ``runs``, ``show``, ``export``, ``services``); the other families of
subcommands are extensions in modules of their own (``EXTENSIONS``), and
``runs``/``show``/``export`` would be the next to move if this grows.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO, TypeVar

from blockwatch.errors import ConfigError
from blockwatch.probes.textsafe import cell

EXIT_OK, EXIT_BUG, EXIT_USAGE, EXIT_STORAGE, EXIT_NETWORK, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_LOCKED, EXIT_MAX_RUNTIME, EXIT_NO_CONSENT = 5, 6, 7
# blockwatch.exports.FORMATS, named here so that building the parser needs no database code
# (tests/test_cli.py checks that the two agree)
EXPORT_FORMATS = ("csv", "jsonl", "ooni", "parquet")
SUMMARY_ROWS = 40  # beyond this many services, the summary lists only those not ok
log = logging.getLogger("blockwatch")
T = TypeVar("T")


class UsageError(Exception):
    pass


def load_config(path: str | None) -> Any:
    """``blockwatch.config.load_config``, imported when a command needs it: pydantic and the
    catalogue cost more than ``--help`` or ``--version`` may."""
    from blockwatch.config import load_config as load

    return load(path)


def _parse_since(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _duration(text: str) -> float:
    from blockwatch.config import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be longer than 0 s")
    return seconds


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


# as the config's [vantage] name (tests/test_cli_values.py checks that the two agree)
VANTAGE_NAME_MAX = 64
MAX_RUNS = 1_000_000_000  # beyond any database; SQLite's LIMIT overflows past 2**63


def _run_count(text: str) -> int:
    value = _positive(text)
    if value > MAX_RUNS:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {MAX_RUNS:,}")
    return value


def _vantage_name(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("a vantage name cannot be empty")
    if len(text) > VANTAGE_NAME_MAX:
        raise argparse.ArgumentTypeError(
            f"a vantage name has at most {VANTAGE_NAME_MAX} characters (this one has "
            f"{len(text):,})")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="blockwatch", description=(
        "Measure whether internet services are reachable or censored, and keep every "
        "observation."))
    p.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", metavar="FILE", help="TOML config (default: none)")
        sp.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    run = sub.add_parser("run", help="one sweep now, stored in the database")
    common(run)
    run.add_argument("-s", "--service", action="append", metavar="NAME",
                     help="only this service (repeatable); default: the config's or all")
    run.add_argument("--vantage", metavar="NAME", type=_vantage_name,
                     help="label this run's vantage NAME")
    run.add_argument("--json", action="store_true",
                     help="print one JSON object per measurement instead of the table")
    run.add_argument("-q", "--quiet", action="store_true",
                     help="no progress, no table, only errors (for cron)")
    run.add_argument("-g", "--group", metavar="NAME",
                     help="run the config's schedule group NAME once (its services, vantage, "
                     "max_runtime and lock)")
    run.add_argument("-y", "--yes", action="store_true",
                     help="I have read `blockwatch consent` and agree (for unattended runs)")
    run.add_argument("--max-runtime", type=_duration, metavar="DURATION",
                     help="stop the sweep after this long (e.g. 90s, 20m, 1h); what was "
                     "measured is stored, exit code 6")
    run.add_argument("--log-file", metavar="FILE",
                     help="append structured log lines (key=value) here instead of stderr")
    run.add_argument("-i", "--input-file", action="append", metavar="FILE",
                     help="a test list (repeatable): one URL per line, a Citizen Lab CSV or an "
                     "OONI Run v2 descriptor; each URL is measured and judged on its own")
    run.add_argument("--input-format", choices=("auto", "plain", "csv", "ooni-run"),
                     help="the test lists' format (default: [inputs] format, or detected)")
    run.add_argument("--concurrency", type=_positive, metavar="N",
                     help="names measured at once (default: [concurrency] global); 1 measures "
                     "one name after another")

    runs = sub.add_parser("runs", help="list past runs, newest first")
    common(runs)
    runs.add_argument("-n", "--limit", type=_run_count, default=20, metavar="N",
                      help=f"how many runs (1 to {MAX_RUNS:,}; default 20)")
    runs.add_argument("-g", "--group", metavar="NAME", help="only runs of this schedule group")

    show = sub.add_parser("show", help="show one run: its services and measurements")
    common(show)
    show.add_argument("run_id", metavar="RUN_ID", help="a run id or a unique prefix of one")

    exp = sub.add_parser("export", help="write every measurement as JSON lines or CSV")
    common(exp)
    exp.add_argument("-f", "--format", choices=EXPORT_FORMATS, default="jsonl")
    exp.add_argument("--since", type=_parse_since, metavar="DATE",
                     help="only measurements started at or after DATE (UTC)")
    exp.add_argument("--run", metavar="RUN_ID", help="only this run")
    exp.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")

    sub.add_parser("services", help="list the service catalogue").add_argument(
        "-c", "--config", metavar="FILE")
    for module in _extensions():
        _COMMANDS.update(module.register(sub, common))
    return p


# Command groups of their own (lab, schedule, report, ...) live in modules that expose
# ``register(subparsers, common) -> {command: handler}``; adding one is one line here.
EXTENSIONS: tuple[str, ...] = ("blockwatch.schedule_cli", "blockwatch.lab.cli",
                               "blockwatch.report_cli", "blockwatch.ooni_cli",
                               "blockwatch.trace_cli", "blockwatch.collector.cli")


def _extensions() -> list[Any]:
    import importlib

    return [importlib.import_module(name) for name in EXTENSIONS]


class _Version(argparse.Action):
    """--version, looked up only when asked for (importlib.metadata is not free)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(_version())
        parser.exit()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"blockwatch {version('blockwatch')}"
    except PackageNotFoundError:
        return "blockwatch 0+unknown"


def main(argv: Sequence[str] | None = None) -> int:
    if list(sys.argv[1:] if argv is None else argv) == ["--version"]:
        print(_version())  # without building the parser: cron and scripts ask this often
        return EXIT_OK
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from blockwatch.inputs import InputError
    from blockwatch.storage.errors import StorageError

    try:
        handler = _COMMANDS[args.command]
        return int(handler(args))
    except ConfigError as exc:
        print(f"blockwatch: config error:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"blockwatch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except InputError as exc:
        print(f"blockwatch: test list error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StorageError as exc:
        print(f"blockwatch: database error: {exc}", file=sys.stderr)
        return EXIT_STORAGE
    except KeyboardInterrupt:
        print("blockwatch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # a bug: say so in one line; -v shows the traceback
        log.debug("internal error", exc_info=True)
        print(f"blockwatch: internal error (a bug, please report it): "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_BUG


@contextmanager
def _store(cfg: Any, *, read_only: bool = False) -> Iterator[Any]:
    """The configured database; ``read_only`` for a command that only reads (``open_reading``)."""
    from blockwatch.storage import open_store

    url = cfg.storage_url()
    store = open_reading(url) if read_only else open_store(url)
    try:
        yield store
    finally:
        store.close()


def open_reading(url: str) -> Any:
    """The database at ``url`` opened read-only, as it is: nothing migrated, written or created,
    so a read-only copy (an archive, a snapshot) can be read. No database there yet: an empty
    one in memory (nothing has been stored), and a note saying so."""
    from blockwatch.storage import open_store
    from blockwatch.storage.errors import StorageError

    try:
        return open_store(url, read_only=True)
    except StorageError as exc:
        if not exc.missing:
            raise
        where = exc.where
    print(f"blockwatch: no database at {where} yet: nothing has been stored there",
          file=sys.stderr)
    store = open_store("sqlite://")
    store.url = where
    return store


def read_stored(url: str, read: Callable[[Any], T]) -> tuple[T, str]:
    """``read(store)`` on the database at ``url`` (``open_reading``), and its name."""
    with open_reading(url) as store:
        return read(store), str(store.url)


# --- run ----------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from blockwatch import app
    from blockwatch.schedule_cli import configure_logging, guard_run, state_dir
    from blockwatch.scheduler.logfmt import fields

    cfg = load_config(args.config)
    configure_logging(args.log_file, verbose=args.verbose, quiet=args.quiet)
    group = cfg.schedule(args.group) if args.group else None
    lists = cfg.input_lists(args.input_file or (), args.input_format)
    _report_inputs(lists, quiet=args.quiet)
    inputs = cfg.input_services(lists)
    services = (cfg.group_services(group, inputs) if group and not args.service
                else cfg.selected_services(args.service, inputs))
    max_runtime = args.max_runtime or (group.max_runtime if group else None)
    ctx = app.probe_context(cfg)
    settings = app.sweep_settings(cfg, vantage=args.vantage or (group.vantage if group else None),
                                  group=group.name if group else None)
    if args.concurrency:
        settings = dataclasses.replace(settings, concurrency=args.concurrency)
    targets = app.plan(cfg, services)
    for warning in settings.warnings:  # what the scope switches off, said before the sweep
        print(f"blockwatch: warning: {warning}", file=sys.stderr)
    interactive = sys.stderr.isatty() and not (args.json or args.quiet)
    sending = _sending(cfg)  # an unreadable token is a config error before anything is probed
    lock = guard_run(cfg, yes=args.yes, group=settings.group, state=state_dir())
    if isinstance(lock, int):
        return lock
    log.info("run.start", extra=fields(group=settings.group, vantage=settings.vantage,
                                       services=len(services), targets=len(targets),
                                       max_runtime_s=max_runtime))
    with lock, _store(cfg) as store:
        for crashed in store.mark_crashed(settings.vantage, settings.group):
            print(f"blockwatch: run {crashed[:13]} never ended (its process was killed): "
                  "marked crashed", file=sys.stderr)
        if sending is not None and cfg.collector.controls:
            settings = _controls(store, sending, services, settings, quiet=args.quiet)
        outcome, stop = _run_sweep(store, services, targets, ctx, settings, interactive,
                                   max_runtime)
        if outcome is None:
            code = _stopped(store, settings.group, stop, max_runtime)
            if sending is not None:
                latest = store.runs(limit=1, group=settings.group)
                if latest:
                    _submit(store, sending, latest[0].id, cfg, quiet=args.quiet)
            return code
        _log_done(outcome.run)
        if args.json:
            from blockwatch.storage.export import write_jsonl

            write_jsonl(store.export_rows(run_id=outcome.run.id), sys.stdout)
        elif not args.quiet:
            _print_summary(outcome, sys.stdout)
        if sending is not None:
            _submit(store, sending, outcome.run.id, cfg, quiet=args.quiet)
    if outcome.run.status == "network_unavailable":
        print("blockwatch: network unavailable: no baseline endpoint answered, nothing was "
              "probed (run stored as network_unavailable)", file=sys.stderr)
        return EXIT_NETWORK
    return EXIT_OK


def _sending(cfg: Any) -> Any:
    from blockwatch.collector.outbox import sending_of

    try:
        return sending_of(cfg)
    except ValueError as exc:
        raise ConfigError(f"{cfg.source}: collector: {exc}") from None


def _controls(store: Any, sending: Any, services: Any, settings: Any, *, quiet: bool) -> Any:
    """The control vantages' recent measurements from the collector, into the local database;
    the settings with them as control vantages (a collector away: the settings as they were)."""
    from blockwatch.collector.controls import with_controls
    from blockwatch.scheduler.logfmt import fields

    settings, got = with_controls(store, sending, [s.name for s in services], settings)
    log.info("collector.controls", extra=fields(vantages=len(got.vantages),
                                                measurements=got.measurements,
                                                problems=len(got.problems)))
    if not quiet:
        for problem in got.problems:
            print(f"blockwatch: controls: {problem}", file=sys.stderr)
    return settings


def _submit(store: Any, sending: Any, run_id: str, cfg: Any, *, quiet: bool) -> None:
    """The run into the outbox, and what is due to the collector; never the run's exit code."""
    from blockwatch.collector.outbox import after_run
    from blockwatch.scheduler.logfmt import fields

    report = after_run(store, sending, run_id, budget_s=cfg.collector.flush_budget_s)
    log.info("collector.flush", extra=fields(sent=len(report.sent), batches=report.batches,
                                             pending=report.pending,
                                             rejected=len(report.rejected)))
    if quiet or not (report.retry or report.rejected):
        return
    if report.retry:
        why = next(iter(report.retry.values()))
        print(f"blockwatch: {len(report.retry)} run(s) wait in the outbox for the collector "
              f"({why}); they are sent after the next run, or by `blockwatch submit`",
              file=sys.stderr)
    for run, why in report.rejected.items():
        print(f"blockwatch: the collector refused run {run[:13]}: {why} (set aside: "
              "`blockwatch outbox`)", file=sys.stderr)


def _report_inputs(lists: Sequence[Any], *, quiet: bool) -> None:
    """One line per test list: URLs taken, lines skipped (with the first reason), duplicates."""
    from blockwatch.scheduler.logfmt import fields

    for lst in lists:
        skipped = sum(int(r.split()[0]) if r.endswith("more skipped, not listed") else 1
                      for _, r in lst.skipped)
        log.info("inputs.loaded", extra=fields(file=lst.path, format=lst.format,
                                               urls=len(lst.urls), skipped=skipped,
                                               duplicates=lst.duplicates))
        if quiet or not (skipped or lst.duplicates):
            continue
        first = f"; first: {lst.skipped[0][0]}: {lst.skipped[0][1]}" if lst.skipped else ""
        print(f"blockwatch: {lst.path}: {len(lst.urls)} URLs ({lst.format}); {skipped} lines "
              f"skipped{first}; {lst.duplicates} duplicates", file=sys.stderr)


def _log_done(run: Any) -> None:
    from blockwatch.scheduler.logfmt import fields

    duration = (run.finished_at - run.started_at).total_seconds() if run.finished_at else None
    summary = run.summary
    log.info("run.done", extra=fields(
        run=run.id, group=run.group, vantage=run.vantage, status=run.status,
        duration_s=None if duration is None else round(duration, 1),
        measurements=summary.get("measurements"), summary=_one_line(summary) or None))


def _stopped(store: Any, group: str | None, stop: str, max_runtime: float | None) -> int:
    """The sweep was cut short: say so, log the stored (interrupted) run, pick the exit code."""
    from blockwatch.scheduler.groups import format_seconds

    # our lock guarantees the latest run of this group (or at all, ungrouped) is ours
    latest = store.runs(limit=1, group=group)
    run_id = latest[0].id if latest else "?"
    if latest:
        _log_done(latest[0])
    if stop == "max_runtime":
        print(f"blockwatch: stopped at the maximum runtime ({format_seconds(max_runtime)}); "
              f"measurements so far are stored, run {run_id[:13]} marked interrupted",
              file=sys.stderr)
        return EXIT_MAX_RUNTIME
    print("blockwatch: interrupted; measurements so far are stored, run marked "
          "interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def _run_sweep(store: Any, services: Any, targets: Any, ctx: Any, settings: Any,
               interactive: bool, max_runtime: float | None = None) -> tuple[Any, str]:
    """Run the sweep; return (outcome, "") or (None, "interrupted" | "max_runtime")."""
    import asyncio
    import gc

    # What is loaded now (modules, the catalogue, the plan) lives as long as the sweep: keep
    # the cycle collector from walking it again and again while thousands of measurements come
    # and go, and from running every 700 allocations (measured: 15 % of a sweep's CPU). Cycles
    # are still collected, in larger batches.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)

    from blockwatch.scheduler.sweep import sweep

    async def go() -> Any:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        # SIGTERM (systemd stop, kill) interrupts like Ctrl-C: the sweep stores what it has.
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        async with asyncio.timeout(max_runtime):
            if not interactive:
                return await sweep(store, services, targets, ctx, settings)
            return await _sweep_with_progress(store, services, targets, ctx, settings)

    try:
        return asyncio.run(go()), ""
    except TimeoutError:  # asyncio.timeout cancelled the sweep, which stored it as interrupted
        return None, "max_runtime"
    except (KeyboardInterrupt, asyncio.CancelledError):
        return None, "interrupted"


async def _sweep_with_progress(store: Any, services: Any, targets: Any, ctx: Any,
                               settings: Any) -> Any:
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from blockwatch.scheduler.sweep import sweep

    # on stderr, so that stdout (the summary table) stays clean for pipes
    with Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.description}"),
                  console=Console(stderr=True), transient=True) as bar:
        tid = bar.add_task("", total=len(targets))

        def progress(done: int, total: int, m: Any) -> None:
            # total grows by the follow-ups; a service name (a URL of a test list) is no markup
            bar.update(tid, completed=done, total=total,
                       description=escape(f"{m.service} {m.probe}"))

        return await sweep(store, services, targets, ctx, settings, progress=progress)


def _print_summary(outcome: Any, out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=out, soft_wrap=False, width=max(100, Console(file=out).width))
    run = outcome.run
    services = [v for v in outcome.verdicts if v.measurement_id is None]
    shown = services
    if len(services) > SUMMARY_ROWS:  # a test list: what needs a look, worst first
        order = {"blocked": 0, "partial": 1, "down": 2, "inconclusive": 3, "error": 4}
        shown = sorted((v for v in services if v.verdict != "ok"),
                       key=lambda v: order.get(v.verdict, 5))[:SUMMARY_ROWS]
    table = Table(title=cell(f"run {run.id}  vantage {run.vantage}  {run.status}"))
    for col in ("service", "verdict", "layer", "evidence"):
        table.add_column(col)
    style = {"ok": "green", "blocked": "bold red", "partial": "red", "down": "yellow",
             "inconclusive": "yellow", "network_unavailable": "magenta"}
    for v in shown:  # names (URLs of a test list) and evidence are data, never markup
        table.add_row(cell(v.service), Text(v.verdict, style=style.get(v.verdict, "")),
                      cell(v.layer or ""), cell(v.evidence[:70]))
    console.print(table)
    if len(shown) < len(services):
        counts = ", ".join(f"{n} {k}" for k, n in sorted(
            Counter(v.verdict for v in services).items()))
        console.print(Text(f"{len(services)} services ({counts}); the first {len(shown)} not "
                           "ok are shown"))
    wanting = (run.summary or {}).get("needs_control") or []
    if wanting:  # service names are data: printed as text
        console.print(cell(
            f"{len(wanting)} inconclusive service(s) failed where a dead server fails too "
            f"({', '.join(wanting[:5])}{', ...' if len(wanting) > 5 else ''}): a control "
            "vantage ([analysis] control_vantages) or a control path ([analysis] "
            "control_proxy) would tell blocking from an outage"))
    raw = (run.summary or {}).get("raw_evidence") or {}
    if raw.get("untraced"):
        console.print(cell(f"{raw['untraced']} reset or unanswered handshake(s) were not traced "
                           f"for raw-packet evidence: {raw.get('why', '')}"))
    console.print(f"{outcome.count} measurements stored; "
                  f"details: blockwatch show {run.id[:13]}")


# --- runs / show / export -----------------------------------------------------------------------


def cmd_runs(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    cfg = load_config(args.config)
    with _store(cfg, read_only=True) as store:
        runs = store.runs(limit=args.limit, group=args.group)
    table = Table(title=f"{len(runs)} most recent runs")
    for col in ("run", "started (UTC)", "vantage", "group", "status", "duration", "summary"):
        table.add_column(col)
    for r in runs:  # stored text (names, summaries of test-list URLs) is data, never markup
        dur = f"{(r.finished_at - r.started_at).total_seconds():.1f}s" if r.finished_at else ""
        table.add_row(*(cell(c) for c in (
            r.id[:13], r.started_at.strftime("%Y-%m-%d %H:%M:%S"), r.vantage, r.group or "",
            r.status, dur, _one_line(r.summary))))
    Console(width=140).print(table)
    return EXIT_OK


def _one_line(summary: dict[str, Any]) -> str:
    services = summary.get("services", {})
    parts = [f"{n} {k}" for k, n in sorted(services.items())]
    blocked = summary.get("blocked") or []
    if blocked:
        parts.append("blocked: " + ", ".join(blocked[:4]))
    return "; ".join(parts)


def cmd_show(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    cfg = load_config(args.config)
    with _store(cfg, read_only=True) as store:
        run = store.get_run(args.run_id)
        if run is None:
            raise UsageError(f"no run {args.run_id!r} (see `blockwatch runs`)")
        verdicts = store.verdicts(run_id=run.id)
        rows = list(store.export_rows(run_id=run.id))
    console = Console(width=160)
    console.print(Text(f"run {run.id}", style="bold") + cell(
        f"  vantage {run.vantage}{' (' + run.country + ')' if run.country else ''}  "
        f"status {run.status}"))
    console.print(cell(f"started {run.started_at:%Y-%m-%d %H:%M:%S} UTC"
                       f"  baseline {run.baseline.get('status', '?')}  {_one_line(run.summary)}"))
    services = Table(title="services")
    for col in ("service", "verdict", "layer", "rule", "evidence"):
        services.add_column(col)
    for v in verdicts:
        if v.measurement_id is None:
            services.add_row(*(cell(c) for c in (v.service, v.verdict, v.layer or "",
                                                 v.rule_id, v.evidence[:60])))
    console.print(services)
    ms = Table(title="measurements")
    for col in ("service", "probe", "target", "time", "failure", "verdict", "rule"):
        ms.add_column(col)
    for r in rows:
        ms.add_row(*(cell(c) for c in (r["service"], r["probe"], r["target"][:50],
                                       f"{r['runtime_s']:.2f}s", (r["failure"] or "")[:40],
                                       r["verdict"] or "", r["rule_id"] or "")))
    console.print(ms)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from blockwatch.exports import FORMATS

    cfg = load_config(args.config)
    fmt = FORMATS[args.format]
    if fmt.missing():
        raise UsageError(f"--format {args.format} needs an optional package: {fmt.missing()}")
    if fmt.binary and not args.output:
        raise UsageError(f"--format {args.format} writes a binary file: give --output FILE")
    with _store(cfg, read_only=True) as store:
        rows = store.export_rows(since=args.since, run_id=_resolve_run(store, args.run))
        if args.output:
            try:
                mode = "wb" if fmt.binary else "w"
                encoding = None if fmt.binary else "utf-8"
                with open(args.output, mode, encoding=encoding,
                          newline=None if fmt.binary else "") as fh:
                    n = (fmt.write(rows, fh) if fmt.write_batches is None else  # columnar
                         fmt.write_batches(_export_batches(store, args), fh))
            except OSError as exc:
                raise UsageError(f"cannot write {args.output}: {exc.strerror}") from None
            print(f"{n} measurements written to {args.output}", file=sys.stderr)
        else:
            fmt.write(rows, sys.stdout)
    return EXIT_OK


def _export_batches(store: Any, args: argparse.Namespace) -> Any:
    from blockwatch.storage.export import export_batches

    return export_batches(store, since=args.since, run_id=_resolve_run(store, args.run))


def _resolve_run(store: Any, prefix: str | None) -> str | None:
    if prefix is None:
        return None
    run = store.get_run(prefix)
    if run is None:
        raise UsageError(f"no run {prefix!r} (see `blockwatch runs`)")
    return str(run.id)


def cmd_services(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    cfg = load_config(args.config)
    table = Table(title="service catalogue")
    for col in ("name", "title", "category", "domains", "urls", "endpoints"):
        table.add_column(col)
    for s in cfg.catalogue().values():
        table.add_row(cell(s.name), cell(s.title), cell(s.category), str(len(s.domains)),
                      str(len(s.urls)), str(len(s.endpoints)))
    Console(width=120).print(table)
    return EXIT_OK


_COMMANDS: dict[str, Any] = {"run": cmd_run, "runs": cmd_runs, "show": cmd_show,
                             "export": cmd_export, "services": cmd_services}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
