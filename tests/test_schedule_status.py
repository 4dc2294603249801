"""``blockwatch schedule --status`` is a reading command: ``--db`` names the database (no
config needed), ``--vantage`` narrows it; both are refused without ``--status``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from blockwatch.cli import main
from blockwatch.storage import open_store
from blockwatch.storage.store import ScheduleState


def test_status_reads_the_db_it_is_given_for_the_vantages_asked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))  # no default config
    db = tmp_path / "sched.db"
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    with open_store(f"sqlite:///{db}") as store:
        store.put_schedule_state([
            ScheduleState(vantage="home", group="hourly-home", schedule="every 1h",
                          next_run_at=soon),
            ScheduleState(vantage="office", group="daily-office", schedule="cron 0 3 * * *")])
    assert main(["schedule", "--status", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "hourly-home" in out and "daily-office" in out and "stopped" in out
    assert main(["schedule", "--status", "--db", str(db), "--vantage", "office"]) == 0
    out = capsys.readouterr().out
    assert "daily-office" in out and "hourly-home" not in out
    assert main(["schedule", "--status", "--db", str(db), "--vantage", "nowhere"]) == 0
    assert "no schedule recorded for vantage nowhere" in capsys.readouterr().out
    # the daemon runs the config's schedules on the config's database: --db is not for it
    assert main(["schedule", "--db", str(db)]) == 2
    assert "--db and --vantage go with --status" in capsys.readouterr().err
