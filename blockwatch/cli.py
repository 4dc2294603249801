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
``runs``/``show``/``export`` would be the next to move if this grows (they now share the reading
options, ``_reading`` and ``reading_url``, which other modules import from here; terminal
output lives in ``blockwatch.term``, dates in ``blockwatch.when``).
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
    """--since/--until: an ISO date or a span back from now (``blockwatch.when``)."""
    from blockwatch.when import parse_when

    return parse_when(text)


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
MAX_CONCURRENCY = 20_000  # [concurrency] global's bound (tests/test_newuser.py checks they agree)


def _run_count(text: str) -> int:
    value = _positive(text)
    if value > MAX_RUNS:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {MAX_RUNS:,}")
    return value


def _concurrency(text: str) -> int:
    value = _positive(text)
    if value > MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {MAX_CONCURRENCY:,} (as "
                                         "[concurrency] global)")
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
        sp.add_argument("-c", "--config", metavar="FILE", help="TOML config (default: the one "
                        "`blockwatch init` wrote, ~/.config/blockwatch/config.toml, if any)")
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
    run.add_argument("--concurrency", type=_concurrency, metavar="N",
                     help="names measured at once (default: [concurrency] global); 1 measures "
                     "one name after another")
    run.add_argument("--offline-ok", action="store_true",
                     help="a local network that is down is not an error: exit 0 instead of 4, "
                     "and with --quiet nothing on stderr (the run is still stored; for cron)")

    runs = sub.add_parser("runs", help="list past runs, newest first")
    common(runs)
    runs.add_argument("-n", "--limit", type=_run_count, default=20, metavar="N",
                      help=f"how many runs (1 to {MAX_RUNS:,}; default 20)")
    runs.add_argument("-g", "--group", metavar="NAME", help="only runs of this schedule group")
    _reading(runs, service=False)

    show = sub.add_parser("show", help="show one run: its services and measurements")
    common(show)
    show.add_argument("run_id", metavar="RUN_ID", help="a run id or a unique prefix of one")
    show.add_argument("--history", action="store_true",
                      help="also the service verdicts a reanalyze replaced, oldest first "
                           "(default: the current ones only)")
    _reading(show, vantage=False, dates=False)

    exp = sub.add_parser("export", help="write every measurement as JSON lines or CSV")
    common(exp)
    exp.add_argument("-f", "--format", choices=EXPORT_FORMATS, default="jsonl",
                     help="jsonl (default), csv, parquet (needs -o) or ooni (OONI's format)")
    _reading(exp)
    exp.add_argument("--run", metavar="RUN_ID", help="only this run")
    exp.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    exp.add_argument("--partition", choices=("day",), help="with --format parquet: one file "
                     "a UTC day under the directory --output, DIR/date=YYYY-MM-DD/"
                     "measurements.parquet (for DuckDB); --since/--until widen to whole days")

    sub.add_parser("services", help="list the service catalogue").add_argument(
        "-c", "--config", metavar="FILE", help="TOML config whose [[services]] join the "
        "catalogue (default: the one `blockwatch init` wrote, if any)")
    for module in _extensions():
        _COMMANDS.update(module.register(sub, common))
    return p


def _reading(p: argparse.ArgumentParser, *, vantage: bool = True, service: bool = True,
             dates: bool = True) -> None:
    """The options every reading command shares: the database, and filters."""
    p.add_argument("--db", metavar="URL", help="database URL or SQLite path (default: the "
                   "config's [storage] url)")
    if vantage:
        p.add_argument("--vantage", action="append", metavar="NAME",
                       help="only this vantage (repeatable)")
    if service:
        p.add_argument("-s", "--service", action="append", metavar="NAME",
                       help="only this service (repeatable)")
    if dates:
        p.add_argument("--since", type=_parse_since, metavar="DATE",
                       help="only from DATE on (UTC): 2026-11-01, 2026-11-01T08:00 or 7d, "
                       "12h, 2w back from now")
        p.add_argument("--until", type=_parse_since, metavar="DATE",
                       help="only before DATE (same forms as --since)")


def reading_url(args: argparse.Namespace) -> str:
    """--db if given, else the config's database."""
    if getattr(args, "db", None):
        return str(args.db)
    return str(load_config(getattr(args, "config", None)).storage_url())


# Command groups of their own (lab, schedule, report, ...) live in modules that expose
# ``register(subparsers, common) -> {command: handler}``; adding one is one line here.
EXTENSIONS: tuple[str, ...] = ("blockwatch.schedule_cli", "blockwatch.lab.cli",
                               "blockwatch.report_cli", "blockwatch.ooni_cli",
                               "blockwatch.trace_cli", "blockwatch.collector.cli",
                               "blockwatch.init_cli", "blockwatch.completion_cli")


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

    from blockwatch import DISTRIBUTION

    try:
        return f"blockwatch {version(DISTRIBUTION)}"
    except PackageNotFoundError:
        return "blockwatch 0+unknown"


def main(argv: Sequence[str] | None = None) -> int:
    if list(sys.argv[1:] if argv is None else argv) == ["--version"]:
        print(_version())  # without building the parser: cron and scripts ask this often
        return EXIT_OK
    args = build_parser().parse_args(argv)
    from blockwatch.schedule_cli import configure_logging

    # one log format (logfmt) for every command, the daemon and the scheduler; warnings only
    # on stderr until a command (run, schedule) sets up its own
    verbose = getattr(args, "verbose", False)
    configure_logging(None, verbose=verbose)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.DEBUG if verbose else logging.WARNING)
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
    except BrokenPipeError:  # the reader went away (`... | head`): a quiet end
        from blockwatch.term import closed_pipe

        closed_pipe()
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
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:  # stderr, not the --log-file
            handler.addFilter(_SaidByTheCli())
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
    for warning in () if args.quiet else settings.warnings:  # what the scope switches off,
        print(f"blockwatch: warning: {warning}", file=sys.stderr)  # said before the sweep
    interactive = sys.stderr.isatty() and not (args.json or args.quiet)
    if interactive and cfg.source == "(defaults)" and not args.vantage:
        print(f"blockwatch: no config yet: this run's vantage is {settings.vantage!r}; "
              "`blockwatch init` names it (and its country) once for every run", file=sys.stderr)
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
        offline = outcome.run.status == "network_unavailable"
        if args.json:
            from blockwatch.storage.export import write_jsonl

            if offline:  # no measurement: the run itself, so that --json always prints JSON
                _json_run(outcome.run)
            else:
                write_jsonl(store.export_rows(run_id=outcome.run.id), sys.stdout)
        elif not args.quiet:
            _print_summary(outcome, sys.stdout)
        if sending is not None:
            _submit(store, sending, outcome.run.id, cfg, quiet=args.quiet)
    if offline:
        if not (args.quiet and args.offline_ok):
            print(f"blockwatch: {OFFLINE} (run stored as network_unavailable"
                  f"{', exit 0: --offline-ok' if args.offline_ok else ''})", file=sys.stderr)
        return EXIT_OK if args.offline_ok else EXIT_NETWORK
    return EXIT_OK


OFFLINE = "network unavailable: no baseline endpoint answered, nothing was probed"


def _json_run(run: Any) -> None:
    import json

    from blockwatch.probes.textsafe import json_safe
    from blockwatch.storage.types import iso_utc

    summary = run.summary or {}
    print(json_safe(json.dumps({
        "run_id": run.id, "vantage": run.vantage, "status": run.status,
        "started_at": iso_utc(run.started_at),
        "measurements": 0, "services": summary.get("services", {}),
        "evidence": OFFLINE}, ensure_ascii=False)))


class _SaidByTheCli(logging.Filter):
    """The sweep's warning that the network is down, kept from stderr: ``run`` says it once in
    its own words (the log file keeps it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "blockwatch.sweep"
                    and record.getMessage().startswith("network unavailable"))


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
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from blockwatch.scheduler.sweep import sweep
    from blockwatch.term import console, log_through

    # on stderr, so that stdout (the summary table) stays clean for pipes; log lines go through
    # the bar's console, above the bar, never over it
    with Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.description}"),
                  console=console(stderr=True), transient=True) as bar, log_through(bar.console):
        tid = bar.add_task("", total=len(targets))

        def progress(done: int, total: int, m: Any) -> None:
            # total grows by the follow-ups; a service name (a URL of a test list) is no markup
            bar.update(tid, completed=done, total=total,
                       description=escape(f"{m.service} {m.probe}"))

        return await sweep(store, services, targets, ctx, settings, progress=progress)


def _print_summary(outcome: Any, out: TextIO) -> None:
    from rich.table import Table
    from rich.text import Text

    from blockwatch.term import clip
    from blockwatch.term import console as term_console

    console = term_console(out)
    run = outcome.run
    services = [v for v in outcome.verdicts if v.measurement_id is None]
    shown = services
    if len(services) > SUMMARY_ROWS:  # a test list: what needs a look, worst first
        order = {"blocked": 0, "partial": 1, "down": 2, "inconclusive": 3, "error": 4}
        shown = sorted((v for v in services if v.verdict != "ok"),
                       key=lambda v: order.get(v.verdict, 5))[:SUMMARY_ROWS]
    table = Table(title=cell(f"run {run.id}  vantage {run.vantage}  {run.status}"))
    table.add_column("service", overflow="fold")
    table.add_column("verdict")
    table.add_column("layer")
    table.add_column("evidence", overflow="fold")
    style = {"ok": "green", "blocked": "bold red", "partial": "red", "down": "yellow",
             "inconclusive": "yellow", "network_unavailable": "magenta"}
    offline = [v for v in shown if v.verdict == "network_unavailable"]
    for v in shown:  # names (URLs of a test list) and evidence are data, never markup
        if v.verdict == "network_unavailable":
            continue
        table.add_row(cell(v.service), Text(v.verdict, style=style.get(v.verdict, "")),
                      cell(v.layer or ""), cell(clip(v.evidence, 120)))
    if offline:  # the same row for every service: once, with a count
        table.add_row(cell(f"{len(offline)} service(s)" if len(offline) > 1
                           else offline[0].service),
                      Text("network_unavailable", style=style["network_unavailable"]), "",
                      cell(clip(offline[0].evidence, 120)))
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
    from rich.table import Table

    from blockwatch.storage.queries import short_run_ids
    from blockwatch.storage.types import iso_utc
    from blockwatch.term import console

    with open_reading(reading_url(args)) as store:
        runs = store.runs(limit=args.limit, group=args.group, vantages=args.vantage,
                          since=args.since, until=args.until)
        short = short_run_ids(store, [r.id for r in runs])  # each one `show` takes
    table = Table(title=f"{len(runs)} most recent runs")
    grouped = any(r.group for r in runs)  # no group column where no run has one
    table.add_column("run", no_wrap=True)
    for col in ("started", "vantage", *(("group",) if grouped else ()), "status",
                "duration", "summary"):
        table.add_column(col, overflow="fold")
    for r in runs:  # stored text (names, summaries of test-list URLs) is data, never markup
        dur = f"{(r.finished_at - r.started_at).total_seconds():.1f}s" if r.finished_at else ""
        table.add_row(*(cell(c) for c in (
            short[r.id], iso_utc(r.started_at), r.vantage,
            *((r.group or "",) if grouped else ()), r.status, dur, _one_line(r.summary))))
    console().print(table)
    return EXIT_OK


def _one_line(summary: dict[str, Any]) -> str:
    services = summary.get("services", {})
    parts = [f"{n} {k}" for k, n in sorted(services.items())]
    blocked = summary.get("blocked") or []
    if blocked:
        parts.append("blocked: " + ", ".join(blocked[:4]))
    return "; ".join(parts)


def cmd_show(args: argparse.Namespace) -> int:
    from rich.table import Table
    from rich.text import Text

    from blockwatch.storage.types import iso_utc
    from blockwatch.term import clip
    from blockwatch.term import console as term_console

    with open_reading(reading_url(args)) as store:
        run = store.get_run(args.run_id)
        if run is None:
            raise UsageError(f"no run {args.run_id!r} (see `blockwatch runs`)")
        wanted = set(args.service or ())
        verdicts = [v for v in store.verdicts(run_id=run.id, current=not args.history)
                    if not wanted or v.service in wanted]
        rows = [r for r in store.export_rows(run_id=run.id)
                if not wanted or r["service"] in wanted]
    console = term_console()
    console.print(Text(f"run {run.id}", style="bold") + cell(
        f"  vantage {run.vantage}{' (' + run.country + ')' if run.country else ''}  "
        f"status {run.status}"))
    console.print(cell(f"started {iso_utc(run.started_at)}"
                       f"  baseline {run.baseline.get('status', '?')}  {_one_line(run.summary)}"))
    services = Table(title="services (every verdict, oldest first)" if args.history
                     else "services")
    for col in ("service", "verdict", "layer", "rule", "evidence"):
        services.add_column(col, overflow="fold")
    offline: dict[tuple[str, str, str | None], list[str]] = {}
    for v in verdicts:
        if v.measurement_id is None:
            rule = f"{v.rule_id} (analyzer {v.analyzer_version})" if args.history else v.rule_id
            if v.verdict == "network_unavailable":  # the same row for every service
                offline.setdefault((rule, v.evidence, v.layer), []).append(v.service)
                continue
            services.add_row(*(cell(c) for c in (v.service, v.verdict, v.layer or "",
                                                 rule, clip(v.evidence, 60))))
    for (rule, evidence, layer), names in offline.items():  # once, with a count (as `run`)
        services.add_row(*(cell(c) for c in (
            f"{len(names)} service(s)" if len(names) > 1 else names[0], "network_unavailable",
            layer or "", rule, clip(evidence, 60))))
    console.print(services)
    ms = Table(title="measurements")
    for col in ("service", "probe", "target", "time", "failure", "verdict", "rule"):
        ms.add_column(col, overflow="fold")
    for r in rows:
        ms.add_row(*(cell(c) for c in (r["service"], r["probe"], clip(r["target"], 50),
                                       f"{r['runtime_s']:.2f}s", clip(r["failure"], 40),
                                       r["verdict"] or "", r["rule_id"] or "")))
    console.print(ms)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from blockwatch.exports import FORMATS

    fmt = FORMATS[args.format]
    if fmt.missing():
        raise UsageError(f"--format {args.format} needs an optional package: {fmt.missing()}")
    if fmt.binary and not args.output:
        raise UsageError(f"--format {args.format} writes a binary file: give --output FILE")
    if args.partition:
        return _export_days(args)
    with open_reading(reading_url(args)) as store:
        rows = _only(store.export_rows(since=args.since, run_id=_resolve_run(store, args.run)),
                     args)
        if args.format == "ooni":  # each run's record of the machine that measured
            from blockwatch.ooni.export import with_runs

            rows = with_runs(rows, lambda rid: (r.summary.get("host") if (
                r := store.get_run(rid)) is not None else None))
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


def _only(rows: Iterator[dict[str, Any]], args: argparse.Namespace
          ) -> Iterator[dict[str, Any]]:
    """The rows of --vantage, --service and before --until (--since is the query's)."""
    vantages, services = set(args.vantage or ()), set(args.service or ())
    until = args.until.astimezone(dt.UTC) if args.until else None
    for row in rows:
        if vantages and row["vantage"] not in vantages:
            continue
        if services and row["service"] not in services:
            continue
        if until is not None and _utc(row["started_at"]) >= until:
            continue
        yield row


def _utc(value: Any) -> dt.datetime:
    when = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(
        str(value).replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _export_days(args: argparse.Namespace) -> int:
    """``export --format parquet --partition day -o DIR``: storage.partitions."""
    from pathlib import Path

    from blockwatch.exports import FORMATS
    from blockwatch.storage.partitions import whole_days, write_parquet_days

    if args.format != "parquet" or not args.output:
        raise UsageError("--partition day needs --format parquet and --output DIRECTORY")
    if FORMATS["parquet"].missing():
        raise UsageError(f"--format parquet needs an optional package: "
                         f"{FORMATS['parquet'].missing()}")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {args.output}: not a directory")
    args.since, args.until = whole_days(args.since, args.until)
    with open_reading(reading_url(args)) as store:
        try:
            days = write_parquet_days(_export_batches(store, args), out)
        except OSError as exc:
            raise UsageError(f"cannot write under {args.output}: {exc.strerror}") from None
    print(f"{sum(days.values())} measurements written to {len(days)} daily partitions under "
          f"{args.output}", file=sys.stderr)
    return EXIT_OK


def _export_batches(store: Any, args: argparse.Namespace) -> Any:
    from blockwatch.storage.export import export_batches

    return export_batches(store, since=args.since, run_id=_resolve_run(store, args.run),
                          until=args.until, vantages=args.vantage, services=args.service,
                          arrow=True)


def _resolve_run(store: Any, prefix: str | None) -> str | None:
    if prefix is None:
        return None
    run = store.get_run(prefix)
    if run is None:
        raise UsageError(f"no run {prefix!r} (see `blockwatch runs`)")
    return str(run.id)


def cmd_services(args: argparse.Namespace) -> int:
    from rich.table import Table

    from blockwatch.term import console

    cfg = load_config(args.config)
    table = Table(title="service catalogue")
    for col in ("name", "title", "category", "domains", "urls", "endpoints"):
        table.add_column(col, overflow="fold")
    for s in cfg.catalogue().values():
        table.add_row(cell(s.name), cell(s.title), cell(s.category), str(len(s.domains)),
                      str(len(s.urls)), str(len(s.endpoints)))
    console().print(table)
    return EXIT_OK


_COMMANDS: dict[str, Any] = {"run": cmd_run, "runs": cmd_runs, "show": cmd_show,
                             "export": cmd_export, "services": cmd_services}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
