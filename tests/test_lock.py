"""Run locks across processes: same group excluded, different groups allowed, an ungrouped run
excludes everything, and a killed holder never leaves a stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from unprivileged import as_unprivileged, scratch_dir

from blockwatch.scheduler.lock import LockBusy, acquire_run_lock, lock_base
from blockwatch.storage import StorageError

HOLDER = """
import sys, time
from pathlib import Path
from blockwatch.scheduler.lock import acquire_run_lock
group = sys.argv[2] or None
lock = acquire_run_lock(sys.argv[1], group, Path(sys.argv[3]))
print("held", flush=True)
time.sleep(60)
"""


def hold_in_child(url: str, group: str | None, state: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, url, group or "", str(state)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'data' / 'results.db'}"


def test_same_group_is_refused_and_says_who_holds_it(url: str, tmp_path: Path) -> None:
    child = hold_in_child(url, "hourly", tmp_path)
    try:
        with pytest.raises(LockBusy) as info:
            acquire_run_lock(url, "hourly", tmp_path)
        message = str(info.value)
        assert f"pid {child.pid}" in message and "group hourly" in message
        assert "results.db.hourly.lock" in message
    finally:
        child.kill()
        child.wait()


def test_other_groups_may_overlap_but_an_ungrouped_run_may_not(url: str, tmp_path: Path) -> None:
    child = hold_in_child(url, "hourly", tmp_path)
    try:
        with acquire_run_lock(url, "nightly", tmp_path):
            pass
        with pytest.raises(LockBusy, match="schedule group"):
            acquire_run_lock(url, None, tmp_path)
    finally:
        child.kill()
        child.wait()
    with acquire_run_lock(url, None, tmp_path):  # the kernel dropped the killed child's lock
        with pytest.raises(LockBusy, match=f"pid {os.getpid()}"):
            acquire_run_lock(url, "hourly", tmp_path)
        with pytest.raises(LockBusy):
            acquire_run_lock(url, None, tmp_path)


def test_killed_holder_leaves_no_stale_lock(url: str, tmp_path: Path) -> None:
    child = hold_in_child(url, None, tmp_path)
    with pytest.raises(LockBusy, match=f"pid {child.pid}"):
        acquire_run_lock(url, None, tmp_path)
    child.send_signal(signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 5
    while True:
        try:
            lock = acquire_run_lock(url, None, tmp_path)
            break
        except LockBusy:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    lock.release()
    lock.release()  # idempotent


def test_lock_files_sit_next_to_the_sqlite_file(url: str, tmp_path: Path) -> None:
    with acquire_run_lock(url, "g1", tmp_path) as lock:
        assert lock.db_lock == tmp_path / "data" / "results.db.lock"
        assert (tmp_path / "data" / "results.db.g1.lock").exists()
    assert lock_base(str(tmp_path / "plain.db"), tmp_path) == tmp_path / "plain.db"


def test_a_symlink_to_the_database_takes_the_same_lock(url: str, tmp_path: Path) -> None:
    """Issue #15: a run through a symlink to the database (or through a linked directory) is
    locked out by a run through the real path, and the other way round."""
    real = tmp_path / "data" / "results.db"
    real.parent.mkdir(parents=True, exist_ok=True)
    real.touch()
    (tmp_path / "link.db").symlink_to(real)
    (tmp_path / "linkdir").symlink_to(real.parent)
    with acquire_run_lock(url, None, tmp_path):
        for other in (tmp_path / "link.db", tmp_path / "linkdir" / "results.db"):
            with pytest.raises(LockBusy):
                acquire_run_lock(f"sqlite:///{other}", None, tmp_path)
    with acquire_run_lock(f"sqlite:///{tmp_path / 'link.db'}", None, tmp_path), \
            pytest.raises(LockBusy):
        acquire_run_lock(url, None, tmp_path)


def test_other_urls_lock_in_the_state_dir_by_hash(tmp_path: Path) -> None:
    a = lock_base("postgresql+psycopg://me:secret@db.example/bw", tmp_path)
    b = lock_base("postgresql+psycopg://me:other@db.example/bw", tmp_path)
    c = lock_base("postgresql+psycopg://me@db.example/elsewhere", tmp_path)
    assert a == b != c  # the password is not part of the database's identity
    assert a.parent == tmp_path / "locks" and "secret" not in str(a)
    assert lock_base("sqlite://", tmp_path).parent == tmp_path / "locks"


def test_unwritable_directory_is_a_storage_error() -> None:
    base = scratch_dir()
    ro = base / "ro"
    ro.mkdir()
    ro.chmod(0o555)  # as root (CI) the check runs as nobody, who may not write here

    def check() -> None:
        with pytest.raises(StorageError, match="cannot create lock file"):
            acquire_run_lock(f"sqlite:///{ro / 'x' / 'r.db'}", None, base)

    try:
        as_unprivileged(check)
    finally:
        ro.chmod(0o700)


def test_lock_path_that_is_a_directory_is_a_storage_error(url: str, tmp_path: Path) -> None:
    (tmp_path / "data" / "results.db.lock").mkdir(parents=True)
    with pytest.raises(StorageError, match="cannot create lock file"):
        acquire_run_lock(url, None, tmp_path)
