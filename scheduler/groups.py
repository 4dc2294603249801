"""Schedule groups as the scheduler sees them: a name, when it fires, and what one firing runs.

Guarantees:
* a group fires either every ``every_s`` seconds or at the times of a 5-field ``cron``
  expression evaluated in UTC (never both, never neither: ``GroupSpec`` refuses);
* ``spread_s`` delays each firing by a uniform random 0..spread seconds (RIPE Atlas style),
  so many vantages with the same schedule do not start at the same second;
* ``validate_cron`` is the only cron parser: config validation and the daemon agree on what a
  cron expression means.

This module knows APScheduler; nothing above ``scheduler/`` does.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from dataclasses import dataclass

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from blockwatch.probes.context import ProbeContext
from blockwatch.probes.model import Service, Target
from blockwatch.scheduler.sweep import SweepSettings


def validate_cron(expr: str) -> str:
    """Return ``expr`` if it is a valid 5-field crontab expression, else raise ValueError."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"cron {expr!r} must have 5 fields (minute hour day month weekday)")
    try:
        CronTrigger(**_cron_fields(expr), timezone=dt.UTC)
    except ValueError as exc:
        raise ValueError(f"cron {expr!r}: {exc}") from None
    return expr


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepPlan:
    """Everything one firing of a group runs: built from the config by the caller."""

    services: Sequence[Service]
    targets: Sequence[Target]
    ctx: ProbeContext
    settings: SweepSettings


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupSpec:
    name: str
    plan: SweepPlan
    every_s: float | None = None
    cron: str | None = None
    spread_s: float = 0.0
    max_runtime_s: float | None = None

    def __post_init__(self) -> None:
        if (self.every_s is None) == (self.cron is None):
            raise ValueError(f"group {self.name!r}: give exactly one of every or cron")
        if self.every_s is not None and self.every_s <= 0:
            raise ValueError(f"group {self.name!r}: every must be positive")
        if self.spread_s < 0:
            raise ValueError(f"group {self.name!r}: spread must not be negative")

    def trigger(self) -> BaseTrigger:
        if self.cron is not None:
            base: BaseTrigger = CronTrigger(**_cron_fields(self.cron), timezone=dt.UTC)
        else:
            assert self.every_s is not None
            base = IntervalTrigger(seconds=self.every_s, timezone=dt.UTC)
        return SpreadTrigger(base, self.spread_s) if self.spread_s else base

    def describe(self) -> str:
        when = f"cron '{self.cron}' UTC" if self.cron else f"every {format_seconds(self.every_s)}"
        if self.spread_s:
            when += f", spread {format_seconds(self.spread_s)}"
        if self.max_runtime_s:
            when += f", max runtime {format_seconds(self.max_runtime_s)}"
        return when


class SpreadTrigger(BaseTrigger):  # type: ignore[misc]
    """Fire at ``base``'s times, each delayed by a fresh uniform 0..spread seconds.

    APScheduler 3's own ``jitter`` computes the next time from the previous *jittered* one,
    so an hourly job with a 10 min jitter drifts by 5 min an hour on average; here the delay
    never feeds back: the n-th run stays within [n-th planned time, + spread].
    """

    def __init__(self, base: BaseTrigger, spread_s: float) -> None:
        self.base, self.spread_s = base, spread_s
        self._planned: dict[dt.datetime, dt.datetime] = {}  # returned time -> its base time

    def get_next_fire_time(self, previous_fire_time: dt.datetime | None,
                           now: dt.datetime) -> dt.datetime | None:
        previous = None
        if previous_fire_time is not None:
            previous = self._planned.get(previous_fire_time, previous_fire_time)
            # older entries can no longer be asked about: keep the map small
            self._planned = {k: v for k, v in self._planned.items() if k >= previous_fire_time}
        planned = self.base.get_next_fire_time(previous, now)
        if planned is None:
            return None
        fire = planned + dt.timedelta(seconds=random.uniform(0, self.spread_s))
        self._planned[fire] = planned
        return fire  # type: ignore[no-any-return]

    def __str__(self) -> str:
        return f"{self.base} spread {format_seconds(self.spread_s)}"


def _cron_fields(expr: str) -> dict[str, str]:
    minute, hour, day, month, dow = expr.split()
    return {"minute": minute, "hour": hour, "day": day, "month": month,
            "day_of_week": _weekdays(dow)}


_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _weekdays(field: str) -> str:
    """Crontab's weekday field as APScheduler 3 names.

    APScheduler 3 numbers weekdays from Monday = 0 while crontab has Sunday = 0 (and 7), so a
    numeric field passed through would run every job one day late; names mean the same to both.
    """
    days: set[int] = set()
    for token in field.lower().split(","):
        body, _, step_text = token.partition("/")
        step = _number(step_text, 1, 7) if step_text else 1
        if body == "*":
            lo, hi = 0, 6
        elif "-" in body:
            a, b = body.split("-", 1)
            lo, hi = _day(a), _day(b)
            hi = 7 if hi == 0 and lo > 0 else hi  # "5-0": Friday to Sunday
        else:
            lo = hi = _day(body)
        if lo > hi:
            raise ValueError(f"weekday range {body!r} runs backwards")
        days.update(d % 7 for d in range(lo, hi + 1, step))
    if days == set(range(7)):
        return "*"
    return ",".join(_DAYS[d] for d in sorted(days))


def _day(text: str) -> int:
    if text in _DAYS:
        return _DAYS.index(text)
    return _number(text, 0, 7)


def _number(text: str, lo: int, hi: int) -> int:
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise ValueError(f"weekday {text!r} is not a number {lo}-{hi} or a day name")
    return int(text)


def format_seconds(seconds: float | None) -> str:
    """``5400`` -> ``1h30m``; the inverse of the config's duration syntax."""
    if seconds is None:
        return "-"
    if seconds != int(seconds):
        return f"{seconds:g}s"
    rest = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts) or "0s"
