"""Unattended operation on the command line: ``blockwatch schedule`` (the daemon; its
``--status`` is ``blockwatch.schedule_status``), ``blockwatch install-timer`` (systemd user
units), ``blockwatch consent``, and the pieces ``blockwatch run`` shares with them: structured
logging, consent and the run lock.

Guarantees: an unattended command never prompts (see ``blockwatch.consent``); a refused run
(no consent, locked) says why on stderr and in the log and exits with its documented code
before anything is measured.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs

if TYPE_CHECKING:
    from blockwatch.config import Config

log = logging.getLogger("blockwatch")

EXIT_LOCKED, EXIT_NO_CONSENT = 5, 7


def state_dir() -> Path:
    """Where blockwatch keeps small state files ($XDG_STATE_HOME/blockwatch)."""
    return Path(platformdirs.user_state_dir("blockwatch", appauthor=False))


# --- logging ------------------------------------------------------------------------------------


def configure_logging(log_file: str | None, *, verbose: bool = False, quiet: bool = False) -> None:
    """Structured (logfmt) lines: to ``log_file`` if given, else to stderr.

    On stderr: errors only with ``quiet``; our info events when stderr is not a terminal (cron
    mail, the journal), warnings at a terminal, where the table says the rest.
    """
    from blockwatch.cli import UsageError
    from blockwatch.scheduler.logfmt import LogfmtFormatter

    ours = logging.DEBUG if verbose else logging.INFO
    if quiet:
        to_stderr = logging.ERROR
    elif verbose:
        to_stderr = logging.DEBUG
    elif log_file is None and not _isatty(sys.stderr):
        to_stderr = logging.INFO
    else:
        to_stderr = logging.WARNING
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    handlers[0].setLevel(to_stderr)
    if log_file is not None:
        try:
            Path(log_file).expanduser().parent.mkdir(parents=True, exist_ok=True)
            file_handler = logging.FileHandler(Path(log_file).expanduser(), encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot open log file {log_file}: {exc.strerror}") from None
        file_handler.setLevel(ours)
        handlers.append(file_handler)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    for h in handlers:
        h.setFormatter(LogfmtFormatter())
        root.addHandler(h)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)  # libraries: warnings only
    log.setLevel(ours)
    # the daemon logs skipped and missed firings itself (run.skipped), as one line each
    logging.getLogger("apscheduler").setLevel(logging.DEBUG if verbose else logging.ERROR)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# --- consent and locks ----------------------------------------------------------------------------


def check_consent(cfg: Config, yes: bool) -> int | None:
    """None if the run may start, else the exit code after saying why."""
    from blockwatch.consent import ConsentRefused, ensure_consent
    from blockwatch.scheduler.logfmt import fields

    source = cfg.source if cfg.source != "(defaults)" else "a config file (--config)"
    try:
        how = ensure_consent(yes=yes, configured=cfg.consent, scope=cfg.probes.scope,
                             state_dir=state_dir(), stdin=sys.stdin, stderr=sys.stderr,
                             source=source)
    except ConsentRefused as exc:
        log.error("run.refused", extra=fields(reason="no_consent"))
        print(f"blockwatch: {exc}", file=sys.stderr)
        return EXIT_NO_CONSENT
    log.debug("consent", extra=fields(given=how))
    return None


def guard_run(cfg: Config, *, yes: bool, group: str | None, state: Path) -> Any:
    """Consent, then the run lock: the held ``RunLock``, or the exit code of a refusal."""
    from blockwatch.scheduler.lock import LockBusy, acquire_run_lock
    from blockwatch.scheduler.logfmt import fields

    refused = check_consent(cfg, yes)
    if refused is not None:
        return refused
    try:
        return acquire_run_lock(cfg.storage_url(), group, state)
    except LockBusy as exc:
        log.warning("run.locked", extra=fields(group=group, lock=str(exc.path),
                                               holder_pid=exc.holder.get("pid")))
        print(f"blockwatch: {exc}; not starting (exit {EXIT_LOCKED})", file=sys.stderr)
        return EXIT_LOCKED


# --- commands -------------------------------------------------------------------------------------


def cmd_consent(args: argparse.Namespace) -> int:
    from blockwatch.consent import NOTICE, ask, is_interactive, record

    if args.agree or (is_interactive(sys.stdin, sys.stderr) and ask(sys.stdin, sys.stderr)):
        record(state_dir())
        print("blockwatch: consent recorded; interactive runs will not ask again "
              "(unattended runs still need --yes or consent = true)", file=sys.stderr)
        return 0
    if not is_interactive(sys.stdin, sys.stderr):
        print(NOTICE)
    return 0


# --- the daemon -----------------------------------------------------------------------------------


def build_groups(cfg: Config) -> list[Any]:
    """The config's schedule groups as the scheduler takes them (planned once, here)."""
    from blockwatch import app
    from blockwatch.scheduler.groups import GroupSpec, SweepPlan

    ctx = app.probe_context(cfg)
    for warning in app.scope_warnings(cfg):  # each run's summary says it too
        logging.getLogger("blockwatch.schedule").warning("scope: %s", warning)
    inputs = cfg.input_services(cfg.input_lists())  # read once: SIGHUP reads them again
    groups = []
    for g in cfg.schedules:
        services = cfg.group_services(g, inputs)
        targets = app.plan(cfg, services)
        plan = SweepPlan(services=services, targets=targets, ctx=ctx,
                         settings=app.sweep_settings(cfg, vantage=g.vantage, group=g.name))
        groups.append(GroupSpec(name=g.name, plan=plan, every_s=g.every, cron=g.cron,
                                spread_s=g.spread, max_runtime_s=g.max_runtime))
    return groups


def _reloader(args: argparse.Namespace, first: Config) -> Callable[[], list[Any]]:
    """SIGHUP: the config file read and checked again; any problem keeps the old schedule."""
    import io

    from blockwatch.config import ConfigError, load_config
    from blockwatch.consent import ConsentRefused, ensure_consent
    from blockwatch.inputs import InputError

    def reload() -> list[Any]:
        cfg = load_config(args.config)
        if cfg.storage_url() != first.storage_url():
            raise ConfigError(f"{cfg.source}: storage.url changed; restart the daemon for that")
        if not cfg.schedules:
            raise ConfigError(f"{cfg.source}: no [[schedules]] groups left")
        try:  # never prompts: streams that are not terminals
            ensure_consent(yes=args.yes, configured=cfg.consent, scope=cfg.probes.scope,
                           state_dir=state_dir(), stdin=io.StringIO(), stderr=io.StringIO(),
                           source=cfg.source)
        except ConsentRefused as exc:
            raise ConfigError(str(exc)) from None
        try:
            return build_groups(cfg)
        except InputError as exc:  # a broken test list keeps the old schedule too
            raise ConfigError(str(exc)) from None

    return reload


def cmd_schedule(args: argparse.Namespace) -> int:
    from blockwatch.cli import UsageError, _store
    from blockwatch.config import load_config
    from blockwatch.scheduler.lock import LockBusy, acquire_daemon_lock

    if args.status:  # a reading command: --db, else the config's database
        from blockwatch.cli import reading_url
        from blockwatch.schedule_status import show_status

        return show_status(reading_url(args), args.vantage or ())
    if args.db or args.vantage:
        raise UsageError("--db and --vantage go with --status (the daemon runs the config's "
                         "[[schedules]] on its [storage] url)")
    cfg = load_config(args.config)
    configure_logging(args.log_file, verbose=args.verbose)
    if not cfg.schedules:
        raise UsageError(f"{cfg.source}: no [[schedules]] groups, nothing to schedule "
                         "(see config.example.toml)")
    refused = check_consent(cfg, args.yes)
    if refused is not None:
        return refused
    groups = build_groups(cfg)
    try:
        daemon_lock = acquire_daemon_lock(cfg.storage_url(), state_dir())
    except LockBusy as exc:
        print(f"blockwatch: a schedule daemon is already running for this database "
              f"(pid {exc.holder.get('pid', '?')}); not starting", file=sys.stderr)
        return EXIT_LOCKED
    with daemon_lock, _store(cfg) as store:
        asyncio_run_daemon(store, groups, cfg, _reloader(args, cfg))
    return 0


def _submitter(store: Any, cfg: Config) -> Any:
    """The daemon's outbox hooks (submit, queue) when the config names a collector."""
    from blockwatch.collector.outbox import daemon_hooks, sending_of
    from blockwatch.config import ConfigError

    try:
        sending = sending_of(cfg)
    except ValueError as exc:
        raise ConfigError(f"{cfg.source}: collector: {exc}") from None
    return daemon_hooks(store, sending, cfg.collector.flush_budget_s,
                        controls=cfg.collector.controls) if sending else None


def asyncio_run_daemon(store: Any, groups: list[Any], cfg: Config,
                       reload: Callable[[], list[Any]]) -> None:
    import asyncio

    from blockwatch.scheduler.daemon import Daemon

    hooks = _submitter(store, cfg)  # an unreadable token: a config error before the daemon

    async def main() -> None:
        daemon = Daemon(store, groups, lock_url=cfg.storage_url(), state_dir=state_dir(),
                        reload=reload, submit=hooks[0] if hooks else None,
                        queue=hooks[1] if hooks else None, prepare=hooks[2] if hooks else None)
        runner = asyncio.create_task(daemon.run())
        await daemon.ready.wait()
        _print_next(daemon)
        await runner

    asyncio.run(main())


def _print_next(daemon: Any) -> None:
    import datetime as dt

    from blockwatch.schedule_status import when_text

    now = dt.datetime.now(dt.UTC)
    print(f"blockwatch schedule: pid {os.getpid()}, {len(daemon.groups)} group(s); "
          "SIGHUP reloads the config, SIGTERM stops", flush=True)
    for name, spec in daemon.groups.items():
        nxt = daemon.next_run(name)
        print(f"  {name}: {spec.describe()}; next run {when_text(nxt, now)}", flush=True)


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> dict[str, Any]:
    sched = sub.add_parser("schedule", help="the daemon: run the config's [[schedules]] groups "
                           "on their schedules (--status: what it is doing)")
    common(sched)
    sched.add_argument("--status", action="store_true",
                       help="show each group's next and last run (read from the database)")
    sched.add_argument("--db", metavar="URL", help="with --status: the database to read "
                       "(URL or SQLite path; default: the config's [storage] url)")
    sched.add_argument("--vantage", action="append", metavar="NAME",
                       help="with --status: only this vantage's groups (repeatable)")
    sched.add_argument("-y", "--yes", action="store_true",
                       help="I have read `blockwatch consent` and agree (for unattended runs)")
    sched.add_argument("--log-file", metavar="FILE",
                       help="append structured log lines (key=value) here instead of stderr")

    consent = sub.add_parser("consent", help="what blockwatch does and its risks; agree to it")
    consent.add_argument("--agree", action="store_true",
                         help="record that you have read the notice and agree")

    timer = sub.add_parser("install-timer", help="write systemd user units that run blockwatch "
                           "on a timer (~/.config/systemd/user)")
    common(timer)
    timer.add_argument("--user", action="store_true", required=True,
                       help="user units (system-wide units: see deploy/ in the source)")
    timer.add_argument("-g", "--group", metavar="NAME", help="run this schedule group")
    timer.add_argument("--on-calendar", default="hourly", metavar="SPEC",
                       help="systemd OnCalendar= (default: hourly)")
    timer.add_argument("--randomized-delay", default="15min", metavar="SPAN",
                       help="systemd RandomizedDelaySec= (default: 15min)")
    timer.add_argument("--max-runtime", default="50m", metavar="DURATION",
                       help="passed to `blockwatch run` (default: 50m)")
    timer.add_argument("-y", "--yes", action="store_true",
                       help="I have read `blockwatch consent` and agree (written into the units)")
    timer.add_argument("--dir", metavar="DIR",
                       help="write here (default: $XDG_CONFIG_HOME/systemd/user)")
    timer.add_argument("--force", action="store_true", help="overwrite existing units")
    return {"schedule": cmd_schedule, "consent": cmd_consent, "install-timer": cmd_install_timer}


# --- install-timer --------------------------------------------------------------------------------


def cmd_install_timer(args: argparse.Namespace) -> int:
    from blockwatch.cli import UsageError, _duration
    from blockwatch.config import default_config_path, load_config
    from blockwatch.consent import unattended_refusal
    from blockwatch.scheduler.units import TimerOptions, render_user_units, unit_name

    if args.config is None and not default_config_path().is_file():  # none from init either
        raise UsageError(f"no {default_config_path()}: run `blockwatch init`, or give --config")
    config = Path(args.config or default_config_path()).expanduser().absolute()
    cfg = load_config(config)
    if args.group:
        cfg.schedule(args.group)  # a ConfigError if there is no such group
    try:
        _duration(args.max_runtime)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"--max-runtime: {exc}") from None
    _check_systemd("--on-calendar", "calendar", args.on_calendar)
    _check_systemd("--randomized-delay", "timespan", args.randomized_delay)
    if refusal := unattended_refusal(yes=args.yes, configured=cfg.consent,  # never an answer
                                     scope=cfg.probes.scope, source=str(config)):  # given here
        print(f"blockwatch: install-timer: {refusal}", file=sys.stderr)
        return EXIT_NO_CONSENT
    options = TimerOptions(command=_command(), config=str(config), group=args.group,
                           on_calendar=args.on_calendar, randomized_delay=args.randomized_delay,
                           max_runtime=args.max_runtime, yes=args.yes)
    units = render_user_units(options)
    where = Path(args.dir).expanduser() if args.dir else Path(
        platformdirs.user_config_dir("systemd", appauthor=False)) / "user"
    existing = [n for n in units if (where / n).exists()]
    if existing and not args.force:
        raise UsageError(f"{where / existing[0]} exists; use --force to overwrite it")
    try:
        where.mkdir(parents=True, exist_ok=True)
        for name, text in units.items():
            (where / name).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write units to {where}: {exc.strerror}") from None
    timer = unit_name(args.group) + ".timer"
    print(f"wrote {', '.join(str(where / n) for n in units)}\n"
          f"enable it with:  systemctl --user daemon-reload && "
          f"systemctl --user enable --now {timer}\n"
          "to run while you are logged out:  loginctl enable-linger $USER")
    return 0


def _check_systemd(option: str, kind: str, value: str) -> None:
    """A value systemd would refuse is refused here, before units are written: one with a line
    break or control character always, else what ``systemd-analyze calendar|timespan`` (the
    parser of the systemd that will read the unit, where there is one) refuses."""
    import shutil
    import subprocess

    from blockwatch.cli import UsageError
    from blockwatch.probes.textsafe import one_line

    if not value.strip() or any(not c.isprintable() for c in value):
        raise UsageError(f"{option}: '{one_line(value)}' is not a systemd {kind} value")
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return
    try:
        done = subprocess.run([analyze, kind, "--", value], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return  # no verdict from systemd: the unit says what was asked
    if done.returncode != 0:
        why = one_line(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "")
        raise UsageError(f"{option}: systemd refuses {value!r}: {why}")


def _command() -> tuple[str, ...]:
    script = Path(sys.executable).parent / "blockwatch"
    if os.access(script, os.X_OK):
        return (str(script),)
    return (sys.executable, "-m", "blockwatch")
