"""Schedule groups as the scheduler sees them: spread never drifts, cron is read as crontab."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from blockwatch.scheduler.groups import GroupSpec, SweepPlan, format_seconds

NOW = dt.datetime(2026, 11, 28, 12, 0, 7, tzinfo=dt.UTC)


def _spec(**when: object) -> GroupSpec:
    plan = SweepPlan(services=(), targets=(), ctx=None, settings=None)  # type: ignore[arg-type]
    return GroupSpec(name="g", plan=plan, **when)  # type: ignore[arg-type]


def _fires(spec: GroupSpec, n: int) -> list[dt.datetime]:
    trigger, out, previous = spec.trigger(), [], None
    for _ in range(n):  # as APScheduler asks: at (or just after) the previous firing
        previous = trigger.get_next_fire_time(previous, previous or NOW)
        out.append(previous)
    return out


def test_spread_delays_each_interval_run_without_drift() -> None:
    fires = _fires(_spec(every_s=3600, spread_s=600), 200)
    base = fires[0] - dt.timedelta(seconds=600)  # the grid starts at most 600 s before
    offsets = [(f - fires[0]).total_seconds() - 3600 * k for k, f in enumerate(fires)]
    assert max(offsets) - min(offsets) <= 600
    assert -600 <= min(offsets) and max(offsets) <= 600
    assert len({round(o) for o in offsets}) > 100  # really random, not a constant shift
    assert fires[-1] - base < dt.timedelta(hours=200, minutes=11)  # 200 runs, not 200 h + drift


def test_spread_on_cron_stays_inside_each_window() -> None:
    fires = _fires(_spec(cron="*/15 * * * *", spread_s=300), 100)
    for f in fires:
        slot = f.replace(minute=f.minute - f.minute % 15, second=0, microsecond=0)
        assert dt.timedelta(0) <= f - slot <= dt.timedelta(seconds=300), f
    slots = {f.replace(minute=f.minute - f.minute % 15, second=0, microsecond=0) for f in fires}
    assert len(slots) == 100  # one run per slot: none skipped, none doubled


def test_no_spread_is_the_plain_schedule() -> None:
    fires = _fires(_spec(every_s=60), 3)
    assert [(b - a).total_seconds() for a, b in itertools.pairwise(fires)] == [60, 60]


@pytest.mark.parametrize("when", [{}, {"every_s": 60, "cron": "* * * * *"}, {"every_s": 0},
                                  {"every_s": 60, "spread_s": -1}])
def test_group_spec_refuses_nonsense(when: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="group 'g'"):
        _spec(**when)


def test_descriptions() -> None:
    assert _spec(every_s=5400, spread_s=600, max_runtime_s=1200).describe() == (
        "every 1h30m, spread 10m, max runtime 20m")
    assert _spec(cron="0 3 * * 1-5").describe() == "cron '0 3 * * 1-5' UTC"
    assert format_seconds(1.5) == "1.5s" and format_seconds(0) == "0s"
