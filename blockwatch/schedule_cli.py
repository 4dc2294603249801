"""Unattended operation on the command line: ``blockwatch schedule`` (the daemon and its
``--status``), ``blockwatch install-timer`` (systemd user units), ``blockwatch consent``, and the
pieces ``blockwatch run`` shares with them: structured logging, consent and the run lock.

Guarantees: an unattended command never prompts (see ``blockwatch.consent``); a refused run
(no consent, locked) says why on stderr and in the log and exits with its documented code
before anything is measured.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import platformdirs

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
    from scheduler.logfmt import LogfmtFormatter

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


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# --- consent and locks ----------------------------------------------------------------------------


def check_consent(cfg: Config, yes: bool) -> int | None:
    """None if the run may start, else the exit code after saying why."""
    from blockwatch.consent import ConsentRefused, ensure_consent
    from scheduler.logfmt import fields

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
    from scheduler.lock import LockBusy, acquire_run_lock
    from scheduler.logfmt import fields

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


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> dict[str, Any]:
    consent = sub.add_parser("consent", help="what blockwatch does and its risks; agree to it")
    consent.add_argument("--agree", action="store_true",
                         help="record that you have read the notice and agree")
    return {"consent": cmd_consent}
