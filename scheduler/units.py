"""systemd units for a blockwatch timer, as text (writing them is the caller's business).

Guarantees: every value that reaches an ``ExecStart=`` line is quoted for systemd (spaces,
quotes, backslashes, and ``%`` specifiers, which systemd would otherwise expand), so a config
path with a space or a percent sign runs the file it names; a run that finds another run
holding the lock (exit 5) or a local network that is down (exit 4: a laptop offline) is not
counted as a failure of the unit; ``--yes`` is in ``ExecStart=`` only when the user gave it
(otherwise consent comes from the config).
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_NETWORK, EXIT_LOCKED = 4, 5


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerOptions:
    command: tuple[str, ...]  # ("/abs/bin/blockwatch",) or ("/abs/python", "-m", "blockwatch.cli")
    config: str  # absolute path
    group: str | None = None
    on_calendar: str = "hourly"
    randomized_delay: str = "15min"
    max_runtime: str = "50m"
    yes: bool = False  # --yes in ExecStart= (consent given on install-timer's command line)


def quote(arg: str) -> str:
    """One ExecStart= argument, quoted as systemd.service(5) reads it."""
    arg = arg.replace("%", "%%")
    if arg and not any(c in arg for c in " \t\"'\\;$"):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_name(group: str | None) -> str:
    return f"blockwatch-{group}" if group else "blockwatch"


def exec_start(o: TimerOptions) -> str:
    argv = [*o.command, "run", "--config", o.config, *(("--yes",) if o.yes else ()), "--quiet",
            "--max-runtime", o.max_runtime]
    if o.group:
        argv += ["--group", o.group]
    return " ".join(quote(a) for a in argv)


def render_user_units(o: TimerOptions) -> dict[str, str]:
    name = unit_name(o.group)
    what = f"schedule group {o.group}" if o.group else "a sweep"
    service = f"""\
# Written by `blockwatch install-timer --user`. Runs {what} once; {name}.timer starts it.
[Unit]
Description=blockwatch: {what}

[Service]
Type=oneshot
ExecStart={exec_start(o)}
# Exit {EXIT_LOCKED}: another blockwatch run held the lock, so this one did not start (not a fault).
# Exit {EXIT_NETWORK}: the local network was down (offline); the run is stored as
# network_unavailable, which is not a fault of the unit either.
SuccessExitStatus={EXIT_NETWORK} {EXIT_LOCKED}
# A last resort beyond --max-runtime: systemd stops the run (SIGTERM: stored as interrupted).
TimeoutStartSec=2h
Nice=10
NoNewPrivileges=yes
"""
    timer = f"""\
# Written by `blockwatch install-timer --user`.
[Unit]
Description=blockwatch timer: {what}

[Timer]
OnCalendar={o.on_calendar}
# Start somewhere in this window after each OnCalendar time, so vantages do not all start at once.
RandomizedDelaySec={o.randomized_delay}
# Catch up once after the machine was off or asleep at the planned time.
Persistent=true
AccuracySec=1min

[Install]
WantedBy=timers.target
"""
    return {f"{name}.service": service, f"{name}.timer": timer}
