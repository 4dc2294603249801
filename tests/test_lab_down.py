"""``blockwatch lab down`` keeps the lab's results database (the configs of ``lab up`` write to
it; the lab's state directory is removed, and lives in /run) and says where; only
``--delete-results`` deletes it. A lab manifest without namespaces: no root needed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from blockwatch.lab import lifecycle, state


def _lab_with_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> Path:
    monkeypatch.setattr(state, "STATE_ROOT", tmp_path / "run")
    monkeypatch.setattr(lifecycle, "KEEP_ROOT", tmp_path / "kept")
    m = state.Manifest(name=name, info={})
    m.status = "up"
    m.save()
    db = m.directory / "results.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE runs (id TEXT)")
    conn.execute("INSERT INTO runs VALUES ('r1')")
    conn.commit()
    conn.close()
    return m.directory


def test_down_keeps_the_results_and_says_where(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    directory = _lab_with_results(tmp_path, monkeypatch, "keeps")
    said = lifecycle.down("keeps")
    assert not directory.exists()  # the lab's own state is gone
    (kept,) = (tmp_path / "kept").glob("keeps-results-*.db")
    assert str(kept) in said and f"blockwatch runs --db {kept}" in said
    with sqlite3.connect(kept) as conn:
        assert conn.execute("SELECT id FROM runs").fetchall() == [("r1",)]


def test_down_deletes_the_results_only_when_asked(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    directory = _lab_with_results(tmp_path, monkeypatch, "deletes")
    said = lifecycle.down("deletes", delete_results=True)
    assert "deleted" in said and not directory.exists()
    assert not (tmp_path / "kept").exists()
