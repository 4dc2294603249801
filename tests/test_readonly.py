"""Issue #15 (11): the commands that only read open the database read-only, as it is.

A read-only copy (a researcher's archive, a mounted snapshot) must be readable by ``runs``,
``show``, ``export``, ``report``, ``query``, ``schedule --status`` and ``outbox``; none of them
may migrate, switch the journal mode, or create anything. As root (CI) permissions stop nothing,
so the read-only copy is read as ``nobody`` (``unprivileged.as_unprivileged``), and on a
read-only bind mount where the kernel allows one; the root-side tests check the file's bytes,
its mtime and the directory's listing instead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from unprivileged import as_unprivileged, scratch_dir

from blockwatch.cli import main
from blockwatch.reports import synthetic
from blockwatch.storage import StorageError, open_store

U = dt.UTC
BLOCKWATCH = str(Path(sys.executable).parent / "blockwatch")


def _write_history(path: Path) -> None:
    scenario = synthetic.small(vantages=[("cn", "CN")], days=1,
                               blocked_after=dt.timedelta(hours=12))
    with open_store(str(path)) as store:
        synthetic.write(store, scenario)


def _config(directory: Path, db: Path) -> Path:
    cfg = directory / "bw.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:///{db}"\n', encoding="utf-8")
    return cfg


def _first_run(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        (run_id,) = conn.execute("SELECT id FROM runs ORDER BY id LIMIT 1").fetchone()
    conn.close()
    return str(run_id)


def _commands(cfg: Path, db: Path, run_id: str) -> list[list[str]]:
    return [
        ["runs", "-c", str(cfg), "-n", "5"],
        ["show", "-c", str(cfg), run_id[:13]],
        ["export", "-c", str(cfg), "--format", "csv"],
        ["export", "-c", str(cfg), "--format", "jsonl", "--run", run_id],
        ["report", "timeline", "--db", str(db), "-f", "csv"],
        ["report", "changes", "--db", str(db), "-f", "csv", "--min-sweeps", "2"],
        ["query", "--db", str(db), "-f", "csv",
         "SELECT service, count(*) AS n FROM measurements GROUP BY service ORDER BY service"],
        ["schedule", "--status", "-c", str(cfg)],
        ["outbox", "-c", str(cfg)],
    ]


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _state(path: Path) -> tuple[str, int, list[str]]:
    """The database's bytes (digest), its mtime and its directory's listing."""
    return (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns,
            sorted(p.name for p in path.parent.iterdir()))


def test_every_reading_command_reads_a_read_only_copy(tmp_path: Path) -> None:
    """``chmod 444`` file in a ``chmod 555`` directory, read as ``nobody`` when we are root:
    every reading command answers what it answers on a writable copy, and nothing changes."""
    writable = tmp_path / "writable"
    writable.mkdir()
    _write_history(writable / "results.db")
    archive = scratch_dir() / "archive"
    archive.mkdir()
    shutil.copy(writable / "results.db", archive / "results.db")
    run_id = _first_run(writable / "results.db")
    # as ourselves on the writable copy first: the expected answers (and every import made,
    # which nobody could not do from root's private Python)
    expected = [_cli(argv) for argv in _commands(_config(writable, writable / "results.db"),
                                                 writable / "results.db", run_id)]
    assert all(code == 0 for code, _, _ in expected), expected
    commands = _commands(_config(archive, archive / "results.db"), archive / "results.db",
                         run_id)
    db = archive / "results.db"
    db.chmod(0o444)
    archive.chmod(0o555)
    before = _state(db)

    def check() -> None:
        with pytest.raises(PermissionError):  # the test means something: we cannot write here
            (archive / "probe").touch()
        for argv, (_, want, _) in zip(commands, expected, strict=True):
            code, out, err = _cli(argv)
            assert code == 0, f"{argv[0]}: {err}"
            # (the same words: a longer path wraps a table's line elsewhere)
            assert out.split() == want.replace(str(writable), str(archive)).split(), argv

    as_unprivileged(check)
    assert _state(db) == before


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_reading_leaves_the_database_as_it_was(tmp_path: Path, journal: str) -> None:
    """Meaningful as root: a writable database is not migrated, not switched to WAL, not
    written; a rollback-journal database gets no file beside it at all, a WAL one at most
    SQLite's reader files, empty."""
    db = tmp_path / "results.db"
    _write_history(db)
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA journal_mode = {journal}")
    conn.close()
    cfg = _config(tmp_path, db)
    for p in tmp_path.glob("results.db-*"):
        p.unlink()
    before = _state(db)
    for argv in _commands(cfg, db, _first_run(db)):
        code, _, err = _cli(argv)
        assert code == 0, f"{argv[0]}: {err}"
        digest, mtime, listing = _state(db)
        assert (digest, mtime) == before[:2], argv
        assert "results.db-journal" not in listing
        extra = set(listing) - set(before[2])
        if journal == "delete":
            assert not extra, argv
        else:
            assert extra <= {"results.db-wal", "results.db-shm"}
            assert not extra or (tmp_path / "results.db-wal").stat().st_size == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == (journal,)
    conn.close()


def _at_revision(path: Path, revision: str) -> Path:
    from alembic import command
    from sqlalchemy import create_engine

    from blockwatch.storage.migrate import alembic_config

    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        command.upgrade(alembic_config(connection=conn), revision)
    engine.dispose()
    return path


def test_an_older_schema_is_refused_clearly_and_left_alone(tmp_path: Path) -> None:
    from blockwatch.storage.migrations import HEAD

    db = _at_revision(tmp_path / "old.db", "0005")
    cfg = _config(tmp_path, db)
    before = _state(db)
    for argv in (["runs", "-c", str(cfg)], ["export", "-c", str(cfg)],
                 ["report", "timeline", "--db", str(db)]):
        code, _, err = _cli(argv)
        assert code == 3, err
        assert f"schema revision 0005 is older than this blockwatch's ({HEAD})" in err
        assert "cannot upgrade it" in err and len(err.splitlines()) == 1
        assert _state(db) == before
    # any SQL of one's own still runs on it, read-only: it needs no particular schema
    assert _cli(["query", "--db", str(db), "SELECT version_num FROM alembic_version"])[0] == 0
    assert _state(db) == before
    open_store(str(db)).close()  # a command that writes upgrades it
    assert _cli(["runs", "-c", str(cfg)])[0] == 0


@pytest.mark.parametrize("damage, message", [
    ("UPDATE alembic_version SET version_num = '9999_from_the_future'",
     "schema revision 9999_from_the_future is newer than this blockwatch knows"),
    ("DROP TABLE alembic_version", "but no schema revision; not a blockwatch database"),
])
def test_newer_or_foreign_schemas_are_refused(tmp_path: Path, damage: str, message: str) -> None:
    db = tmp_path / "results.db"
    open_store(str(db)).close()
    with sqlite3.connect(db) as conn:
        conn.execute(damage)
    conn.close()
    cfg = _config(tmp_path, db)
    before = _state(db)
    code, _, err = _cli(["runs", "-c", str(cfg)])
    assert code == 3 and message in err and "Traceback" not in err
    assert _state(db)[:2] == before[:2]


def test_no_database_is_created_by_reading(tmp_path: Path) -> None:
    """Nothing stored yet: the reading commands answer as for an empty database, say there is
    none, and create none (they used to create it, and its directory)."""
    db = tmp_path / "never" / "results.db"
    cfg = _config(tmp_path, db)
    code, out, err = _cli(["runs", "-c", str(cfg)])
    assert code == 0 and "0 most recent runs" in out
    assert f"no database at sqlite:///{db} yet" in err
    code, _, err = _cli(["show", "-c", str(cfg), "ffff"])
    assert code == 2 and "no run 'ffff'" in err
    code, out, _ = _cli(["schedule", "--status", "-c", str(cfg)])
    assert code == 0 and f"no schedule recorded in sqlite:///{db}" in out
    code, out, _ = _cli(["outbox", "-c", str(cfg)])
    assert code == 0 and "the outbox is empty" in out
    assert _cli(["export", "-c", str(cfg)])[:2] == (0, "")
    assert _cli(["report", "timeline", "--db", str(db), "-f", "csv"])[0] == 0
    code, _, err = _cli(["query", "--db", str(db), "SELECT 1"])  # SQL needs a database
    assert code == 3 and "no database file at" in err
    assert not (tmp_path / "never").exists()


def test_a_read_only_store_refuses_to_write(tmp_path: Path) -> None:
    from blockwatch.probes.model import Run

    db = tmp_path / "results.db"
    open_store(str(db)).close()
    before = _state(db)
    with open_store(str(db), read_only=True) as store, pytest.raises(StorageError,
                                                                     match="read-only"):
        store.start_run(Run(id="r", vantage="v", started_at=dt.datetime.now(U)))
    assert _state(db)[:2] == before[:2]


def _read_only_mount(directory: Path, argv: list[list[str]]) -> subprocess.CompletedProcess[str]:
    """Run each of ``argv`` with ``directory`` bind-mounted read-only over itself, in a mount
    namespace of its own (exit 97: no such mount here; 98: the mount is writable after all)."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root and unshare (util-linux)")
    d = str(directory)
    steps = " && ".join(" ".join(f"'{a}'" for a in cmd) for cmd in argv)
    script = (f"mount --bind '{d}' '{d}' && mount -o remount,ro,bind '{d}' '{d}' || exit 97; "
              f"touch '{d}/probe' 2>/dev/null && exit 98; {steps}")
    done = subprocess.run([unshare, "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode == 97:
        pytest.skip(f"no read-only bind mount here: {done.stderr.strip()}")
    assert done.returncode != 98, "the read-only mount was writable"
    return done


def test_a_snapshot_on_a_read_only_mount_is_read_with_its_write_ahead_log(
        tmp_path: Path) -> None:
    """A snapshot taken while a writer was at work: the newest transactions are still in the
    -wal beside the file. On a read-only mount they are read too (not ignored, as telling
    SQLite the file is immutable would), and a plain copy is read as well."""
    snap, plain = tmp_path / "snap", tmp_path / "plain"
    snap.mkdir()
    plain.mkdir()
    _write_history(plain / "results.db")
    shutil.copy(plain / "results.db", snap / "results.db")
    writer = sqlite3.connect(snap / "results.db")
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("UPDATE runs SET vantage = 'only-in-the-wal' WHERE id = "
                   "(SELECT min(id) FROM runs)")
    writer.commit()
    copies = [tmp_path / f"copy{suffix}" for suffix in ("", "-wal", "-shm")]
    for name, copy in zip(("results.db", "results.db-wal", "results.db-shm"), copies,
                          strict=True):
        shutil.copy(snap / name, copy)
    writer.close()  # checkpoints the -wal away: put the snapshot back as it was taken
    for name, copy in zip(("results.db", "results.db-wal", "results.db-shm"), copies,
                          strict=True):
        shutil.copy(copy, snap / name)
    assert (snap / "results.db-wal").stat().st_size > 0
    query = "SELECT vantage, count(*) FROM runs GROUP BY vantage ORDER BY vantage"
    before = _state(snap / "results.db")
    done = _read_only_mount(tmp_path, [
        [BLOCKWATCH, "query", "--db", str(snap / "results.db"), "-f", "csv", query],
        [BLOCKWATCH, "runs", "-c", str(_config(tmp_path, plain / "results.db")), "-n", "1"],
        [BLOCKWATCH, "report", "timeline", "--db", str(plain / "results.db"), "-f", "csv"]])
    assert done.returncode == 0, done.stderr
    assert "cn,23\nonly-in-the-wal,1\n" in done.stdout  # (text mode: \r\n read as \n)
    assert "1 most recent runs" in done.stdout and "line,cn" in done.stdout
    assert _state(snap / "results.db") == before
