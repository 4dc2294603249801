"""``blockwatch schedule --status``: the schedule as the daemon last wrote it to the database.

A reading command like ``runs`` or ``show``: it reads the database (``--db``, else the config's
``[storage] url``), works from any shell while the daemon runs elsewhere, and filters by
``--vantage``. Each group's daemon is said to be running, stopped, gone (a pid on this host that
no longer exists: killed?) or on another host. Nothing is written.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Sequence
from typing import Any


def when_text(value: dt.datetime | None, now: dt.datetime) -> str:
    """A time ahead, with how far ahead it is ("-" for none)."""
    if value is None:
        return "-"
    from blockwatch.scheduler.groups import format_seconds

    seconds = max(0, round((value - now).total_seconds()))
    return f"{value:%Y-%m-%d %H:%M:%S} UTC (in {format_seconds(seconds)})"


def show_status(url: str, vantages: Sequence[str] = ()) -> int:
    """Print each schedule group (of ``vantages``, if any) stored in the database at ``url``."""
    from rich.table import Table

    from blockwatch.cli import read_stored
    from blockwatch.probes.textsafe import cell
    from blockwatch.term import console as term_console

    states, where = read_stored(url, lambda store: store.schedule_states())
    console = term_console()
    if vantages:
        states = [st for st in states if st.vantage in set(vantages)]
    if not states:
        which = f" for vantage {', '.join(vantages)}" if vantages else ""
        console.print(cell(f"no schedule recorded{which} in {where}: start one with "
                           "`blockwatch schedule --config FILE`"))
        return 0
    now = dt.datetime.now(dt.UTC)
    table = Table(title=cell(f"schedule groups in {where}"))
    for col in ("group", "vantage", "schedule", "next run", "last run", "last status",
                "daemon"):
        table.add_column(col, overflow="fold")
    host = socket.gethostname()
    for st in states:
        last = f"{st.last_started_at:%Y-%m-%d %H:%M:%S}" if st.last_started_at else "-"
        table.add_row(*(cell(c) for c in (
            st.group, st.vantage, st.schedule, when_text(st.next_run_at, now), last,
            st.last_status or "-", daemon_text(st, host))))
    console.print(table)
    return 0


def daemon_text(st: Any, host: str) -> str:
    if st.daemon_pid is None:
        return "stopped"
    if st.daemon_host != host:
        return f"pid {st.daemon_pid} on {st.daemon_host}"
    try:
        os.kill(st.daemon_pid, 0)
    except ProcessLookupError:
        return f"not running (pid {st.daemon_pid} gone: killed?)"
    except PermissionError:
        pass  # alive, another user's
    return f"running (pid {st.daemon_pid})"
