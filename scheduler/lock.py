"""Run locks: two sweeps that must not overlap never do, across processes (cron, systemd, the
daemon, a person at a terminal).

The rule, a readers-writer lock per database plus a lock per schedule group:

* a run of schedule group G holds G's lock exclusively and the database lock *shared*: two
  runs of G never overlap, runs of different groups may;
* a run outside any group holds the database lock *exclusively*: it overlaps nothing.

Locks are ``fcntl.flock`` locks on small files, taken without waiting. The kernel drops them
when the holder exits, however it exits (kill -9 included), so a stale lock cannot block the
next run. For a SQLite file the lock files sit next to it (``results.db.lock``,
``results.db.GROUP.lock``); for any other URL (PostgreSQL, in-memory) they sit in the state
directory the caller gives, named by a hash of the URL without its password. The PostgreSQL
variant therefore serialises runs on one machine only, which is what the lock is for: one
vantage must not run two sweeps at once; several vantages writing to one collector is normal.

Whoever holds a lock exclusively writes its pid, group and start time into the file, so the
run that is turned away can say who is in the way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from blockwatch.storage.db import parse_url
from blockwatch.storage.errors import StorageError, hide_password


class LockBusy(Exception):
    """Another run holds a lock this run needs; the message says which and who."""

    def __init__(self, path: Path, holder: dict[str, Any]) -> None:
        self.path, self.holder = path, holder
        super().__init__(_describe(path, holder))


def _describe(path: Path, holder: dict[str, Any]) -> str:
    if not holder:
        # a group run (shared lock) writes no holder, and a holder that has just taken the
        # lock may not have written yet: say only what is certain
        return f"another blockwatch run is in progress (perhaps of a schedule group; lock {path})"
    who = f"pid {holder.get('pid', '?')}"
    if holder.get("group"):
        who += f", group {holder['group']}"
    if holder.get("started_at"):
        who += f", since {holder['started_at']}"
    return f"another blockwatch run is in progress ({who}; lock {path})"


def lock_base(url: str, state_dir: Path) -> Path:
    """The path that lock file names extend: the SQLite file, or a hashed name in state_dir."""
    parsed = parse_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:") and \
            parsed.query.get("mode") != "memory":
        # resolved: a symlink to the database (or a path through one) is the same database
        return Path(database).expanduser().resolve()
    digest = hashlib.sha256(hide_password(url).encode()).hexdigest()[:16]
    return state_dir / "locks" / f"db-{digest}"


def _open(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_RDWR without O_TRUNC: the holder's note must survive until we own the lock
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StorageError(str(path), f"cannot create lock file: {exc.strerror}") from None


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        holder = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


@dataclass
class _Held:
    path: Path
    fd: int
    exclusive: bool


@dataclass
class RunLock:
    """The locks one run holds; release them with ``release()`` or a ``with`` block."""

    base: Path
    group: str | None
    held: list[_Held] = field(default_factory=list)

    @property
    def db_lock(self) -> Path:
        return self.base.with_name(self.base.name + ".lock")

    def group_lock(self, group: str) -> Path:
        return self.base.with_name(f"{self.base.name}.{group}.lock")

    def acquire(self, note: dict[str, Any]) -> Self:
        try:
            if self.group is not None:
                self._take(self.group_lock(self.group), exclusive=True, note=note)
            self._take(self.db_lock, exclusive=self.group is None, note=note)
        except BaseException:
            self.release()
            raise
        return self

    def _take(self, path: Path, *, exclusive: bool, note: dict[str, Any]) -> None:
        fd = _open(path)
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockBusy(path, holder) from None
            raise StorageError(str(path), f"cannot lock: {exc.strerror}") from None
        if exclusive:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(note).encode(), 0)
        self.held.append(_Held(path, fd, exclusive))

    def release(self) -> None:
        while self.held:
            h = self.held.pop()
            with contextlib.suppress(OSError):
                if h.exclusive:  # an empty file tells the next one nobody is named in it
                    os.ftruncate(h.fd, 0)
                fcntl.flock(h.fd, fcntl.LOCK_UN)
            os.close(h.fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def acquire_run_lock(url: str, group: str | None, state_dir: Path,
                     command: str = "run") -> RunLock:
    """Take the locks a run of ``group`` (None: no group) on the database at ``url`` needs.

    Raises ``LockBusy`` at once if another run is in the way, ``StorageError`` if the lock file
    cannot be created.
    """
    note = {"pid": os.getpid(), "group": group, "command": command,
            "started_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    return RunLock(lock_base(url, state_dir), group).acquire(note)


def acquire_daemon_lock(url: str, state_dir: Path) -> RunLock:
    """One ``blockwatch schedule`` daemon per database on this machine; ``LockBusy`` if one
    is already running. (``@`` cannot occur in a group name, so no group lock is this file.)"""
    lock = RunLock(lock_base(url, state_dir), None)
    note = {"pid": os.getpid(), "command": "schedule",
            "started_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    lock._take(lock.base.with_name(lock.base.name + ".@daemon.lock"), exclusive=True, note=note)
    return lock
