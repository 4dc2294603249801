"""The ``schedule_state`` table through the Store: upsert by (vantage, group), drop, read back."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from blockwatch.storage import StorageError, open_store
from blockwatch.storage.store import ScheduleState

T = dt.datetime(2026, 11, 27, 17, 0, tzinfo=dt.UTC)


def test_put_replaces_by_vantage_and_group_and_drop_forgets(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'r.db'}") as store:
        assert store.schedule_states() == []
        a = ScheduleState(vantage="home", group="hourly", schedule="every 1h",
                          next_run_at=T, daemon_pid=42, daemon_host="pi", updated_at=T)
        b = ScheduleState(vantage="home", group="nightly", schedule="cron '0 3 * * *' UTC",
                          updated_at=T)
        other = ScheduleState(vantage="mobile", group="hourly", schedule="every 2h", updated_at=T)
        store.put_schedule_state([a, b, other])
        later = ScheduleState(vantage="home", group="hourly", schedule="every 1h",
                              next_run_at=T + dt.timedelta(hours=1), last_run_id="r1",
                              last_started_at=T, last_status="complete", updated_at=T)
        store.put_schedule_state([later])
        assert store.schedule_states() == [later, b, other]
        store.drop_schedule_state([("home", "nightly")])
        assert store.schedule_states() == [later, other]
    with open_store(f"sqlite:///{tmp_path / 'r.db'}") as store:  # it is in the file
        assert [s.group for s in store.schedule_states()] == ["hourly", "hourly"]


def test_naive_times_are_refused(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'r.db'}") as store:
        naive = ScheduleState(vantage="v", group="g", schedule="s",
                              next_run_at=dt.datetime(2026, 1, 1))  # noqa: DTZ001
        with pytest.raises(ValueError, match="next_run_at"):
            store.put_schedule_state([naive])
        store.close()
        with pytest.raises(StorageError, match="closed"):
            store.schedule_states()
