"""Which control measurements a run is judged against (``Store.control_measurements`` with
``services`` and ``near``): of each control vantage and service, the run nearest in time that
measured it inside the window, only the services asked, on SQLite and on a real PostgreSQL.
Loading every control measurement of a 6-hour window made judging cost grow with the number of
control sweeps (144 runs a window at one every 5 minutes)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from test_storage import T0, make_measurement, make_run

from blockwatch.storage import open_store

H = dt.timedelta(hours=1)


def _control(store, run_id: str, at: dt.datetime, services: tuple[str, ...],
             vantage: str = "ctl") -> None:
    store.start_run(dataclasses.replace(make_run(run_id, at=at), vantage=vantage,
                                        status="complete",
                                        summary={"measurements": len(services)}))
    ms = [dataclasses.replace(make_measurement(f"{run_id}-{s}", run_id=run_id,
                                               at=at + dt.timedelta(seconds=i), service=s),
                              vantage=vantage)
          for i, s in enumerate(services)]
    store.add_measurements(ms, [])


def _fill(store) -> None:
    store.start_run(make_run("subject", at=T0))  # the judged run, vantage "laptop"
    _control(store, "far-before", T0 - 3 * H, ("a", "b", "c"))
    _control(store, "near", T0 - dt.timedelta(minutes=10), ("a", "c"))  # no "b"
    _control(store, "after", T0 + 2 * H, ("a", "b"))
    _control(store, "outside", T0 + 9 * H, ("a", "b", "c"))  # beyond the window
    _control(store, "other-near", T0 + dt.timedelta(minutes=1), ("b",), vantage="ctl2")
    _control(store, "other-far", T0 - 4 * H, ("a", "b"), vantage="ctl2")


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'bw.sqlite'}"


def test_nearest_run_per_vantage_and_service(db: str) -> None:
    with open_store(db) as store:
        _fill(store)
        got = store.control_measurements(["ctl", "ctl2"], T0 - 6 * H, T0 + 6 * H,
                                         services=["a", "b"], near=T0)
    # a: ctl's nearest run has it; b: ctl's nearest run lacks it, so the next nearest (2 h
    # after beats 3 h before); ctl2 has b 1 min after and a only 4 h before; c never asked
    assert sorted(m.id for m in got) == ["after-b", "near-a", "other-far-a", "other-near-b"]
    assert [m.started_at for m in got] == sorted(m.started_at for m in got)


def test_choice_for_a_service_does_not_depend_on_the_others_asked(db: str) -> None:
    with open_store(db) as store:
        _fill(store)
        both = store.control_measurements(["ctl"], T0 - 6 * H, T0 + 6 * H,
                                          services=["a", "b", "c"], near=T0)
        alone = [store.control_measurements(["ctl"], T0 - 6 * H, T0 + 6 * H,
                                            services=[s], near=T0) for s in "abc"]
    assert sorted(m.id for m in both) == sorted(m.id for ms in alone for m in ms)
    assert sorted(m.id for m in both) == ["after-b", "near-a", "near-c"]


def test_window_bounds_and_unknown_services(db: str) -> None:
    with open_store(db) as store:
        _fill(store)
        # a window that holds only the far run: nearest inside it, never outside
        got = store.control_measurements(["ctl"], T0 - 4 * H, T0 - 2 * H,
                                         services=["b"], near=T0)
        assert [m.id for m in got] == ["far-before-b"]
        assert store.control_measurements(["ctl"], T0 - 6 * H, T0 + 6 * H,
                                          services=["zzz"], near=T0) == []
        # without services and near: every measurement in the window, as before
        every = store.control_measurements(["ctl"], T0 - 6 * H, T0 + 6 * H)
        assert len(every) == 3 + 2 + 2


def test_a_cache_gives_the_same_choice_and_keeps_only_whole_runs(db: str) -> None:
    from blockwatch.storage.store import RunCache

    cache = RunCache(limit=100)
    with open_store(db) as store:
        _fill(store)
        # "near" is still arriving: its summary counts 3, two are stored
        store.start_run(dataclasses.replace(make_run("arriving", at=T0 + dt.timedelta(minutes=2)),
                                            vantage="ctl3", status="complete",
                                            summary={"measurements": 3}))
        _ms = [dataclasses.replace(make_measurement(f"arriving-{s}", run_id="arriving",
                                                    at=T0 + dt.timedelta(minutes=2), service=s),
                                   vantage="ctl3") for s in "ab"]
        store.add_measurements(_ms, [])
        args = (["ctl", "ctl2", "ctl3"], T0 - 6 * H, T0 + 6 * H)
        plain = store.control_measurements(*args, services=["a", "b"], near=T0)
        cached = store.control_measurements(*args, services=["a", "b"], near=T0, cache=cache)
        again = store.control_measurements(*args, services=["a", "b"], near=T0, cache=cache)
    assert [m.id for m in plain] == [m.id for m in cached] == [m.id for m in again]
    assert "arriving-a" in {m.id for m in plain}
    assert cache.get("arriving") is None  # not all here: read again next time
    # the whole runs read are kept whole (all their services), within the bound
    assert [m.id for m in cache.get("near") or []] == ["near-a", "near-c"]
    assert cache.held == 2 + 1 + 2 + 2  # near, other-near, after, other-far


def test_run_cache_is_bounded_least_recently_used_first_out() -> None:
    from blockwatch.storage.store import RunCache

    cache = RunCache(limit=5)
    ms = [make_measurement(f"m{i}") for i in range(6)]
    cache.put("r1", ms[:2])
    cache.put("r2", ms[2:4])
    assert cache.get("r1") == ms[:2]  # r1 now the most recent
    cache.put("r3", ms[4:6])  # 6 > 5: the least recently used (r2) goes
    assert cache.get("r2") is None and cache.get("r1") and cache.get("r3")
    assert cache.held == 4
    cache.put("big", ms)  # larger than the whole cache: not kept
    assert cache.get("big") is None and cache.held == 4


def test_runs_started_before_the_judged_run_ended_come_first(db: str) -> None:
    """A sweep sees only the controls measured before it ends; a re-analysis over a wider
    window (an old run, --later-controls) picks among those first, as the sweep did."""
    with open_store(db) as store:
        _fill(store)
        got = store.control_measurements(["ctl"], T0 - 6 * H, T0 + 6 * H, services=["b"],
                                         near=T0, ended=T0 + dt.timedelta(minutes=1))
        # "after" (2 h after) is nearer than "far-before" (3 h before) but started later
        assert [m.id for m in got] == ["far-before-b"]
        # none started before the end: the nearest later one
        got = store.control_measurements(["ctl"], T0 - 6 * H, T0 + 6 * H, services=["b"],
                                         near=T0, ended=T0 - 5 * H)
        assert [m.id for m in got] == ["after-b"]
