"""Synthetic measurement histories with known truth, for tests, benchmarks and demos.

A ``Scenario`` says which vantages sweep how often, which services become blocked when (the
truth), how often a sweep fails at random (flaky), and when a vantage's network or the services
were out. ``write`` stores it through ``storage.queries.bulk_insert`` in the documented schema,
in batches, without the sweep engine (fast: no network, no probes). Same seed, same history.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from blockwatch.storage import Store
from blockwatch.storage.queries import bulk_insert

PROBES = ("dns", "tcp", "tls", "http")


@dataclass(frozen=True, slots=True, kw_only=True)
class Blocking:
    """``service`` is blocked at ``vantage`` from ``start`` until ``end`` (None: for good), at
    ``layer``."""

    service: str
    vantage: str
    start: dt.datetime
    end: dt.datetime | None = None
    layer: str = "dns"


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    vantages: Sequence[tuple[str, str]]  # (name, country)
    services: Sequence[str]
    start: dt.datetime
    end: dt.datetime
    every: dt.timedelta = dt.timedelta(hours=1)
    blocking: Sequence[Blocking] = ()
    flaky: float = 0.05  # share of service verdicts replaced by a random failure...
    flaky_flip: float = 0.5  # ...of which this share is the opposite state (ok <-> blocked)
    # (vantage, start, end, verdict): every service of the vantage gets verdict meanwhile
    # ("network_unavailable" also marks the runs so); runs in (vantage, start, end, None) are
    # not made at all (a gap)
    outages: Sequence[tuple[str, dt.datetime, dt.datetime, str | None]] = ()
    measurements_every: int = 0  # write measurements for every n-th run (0: none)
    probes: Sequence[str] = PROBES
    targets_per_probe: int = 1
    seed: int = 7
    config_hash: str = field(default="synthetic-0001")


def small(vantages: Sequence[tuple[str, str]] = (("cn", "CN"), ("kr", "KR")),
          days: float = 2, blocked_after: dt.timedelta = dt.timedelta(days=1)) -> Scenario:
    """A small history the tests read: LINE and Instagram hourly from 2014-07-01 for ``days``,
    LINE blocked in ``cn`` from ``blocked_after`` on, measurements every 6th run, no flakes."""
    start = dt.datetime(2014, 7, 1, tzinfo=dt.UTC)
    return Scenario(vantages=vantages, services=["line", "instagram"], start=start,
                    end=start + dt.timedelta(days=days),
                    blocking=[Blocking(service="line", vantage="cn",
                                       start=start + blocked_after)],
                    measurements_every=6, flaky=0)


def truth(s: Scenario, service: str, vantage: str, at: dt.datetime) -> Blocking | None:
    for b in s.blocking:
        if b.service == service and b.vantage == vantage and b.start <= at and (
                b.end is None or at < b.end):
            return b
    return None


def _outage(s: Scenario, vantage: str, at: dt.datetime) -> tuple[bool, str | None]:
    for v, start, end, verdict in s.outages:
        if v == vantage and start <= at < end:
            return True, verdict
    return False, None


def runs_count(s: Scenario) -> int:
    return int((s.end - s.start) / s.every) * len(s.vantages)


def batches(s: Scenario, runs_per_batch: int = 1000
            ) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]],
                                list[dict[str, Any]]]]:
    """(runs, measurements, verdicts) rows, ``runs_per_batch`` runs at a time."""
    rng = random.Random(s.seed)
    runs: list[dict[str, Any]] = []
    measurements: list[dict[str, Any]] = []
    verdicts: list[dict[str, Any]] = []
    n = 0
    step = 0
    at = s.start
    while at < s.end:
        for vi, (vantage, country) in enumerate(s.vantages):
            out, forced = _outage(s, vantage, at)
            if out and forced is None:
                continue
            n += 1
            run_id = f"{at:%Y%m%d%H%M%S}-{vi:03d}-{n:09d}"
            status = "network_unavailable" if forced == "network_unavailable" else "complete"
            runs.append(_run(s, run_id, vantage, country, at, status))
            for service in s.services:
                verdict, layer = _service_verdict(s, rng, service, vantage, at, forced)
                if (s.measurements_every and step % s.measurements_every == 0
                        and status == "complete"):
                    _measure(s, run_id, vantage, service, at, verdict, layer,
                             measurements, verdicts)
                verdicts.append(_verdict(run_id, None, service, verdict, layer, at))
        at += s.every
        step += 1
        if len(runs) >= runs_per_batch:
            yield runs, measurements, verdicts
            runs, measurements, verdicts = [], [], []
    if runs:
        yield runs, measurements, verdicts


def write(store: Store, s: Scenario, runs_per_batch: int = 1000) -> tuple[int, int, int]:
    """Store the scenario; returns (runs, measurements, verdicts) written."""
    totals = [0, 0, 0]
    for runs, ms, vs in batches(s, runs_per_batch):
        bulk_insert(store, "runs", runs)
        bulk_insert(store, "measurements", ms)
        bulk_insert(store, "verdicts", vs)
        for i, rows in enumerate((runs, ms, vs)):
            totals[i] += len(rows)
    return totals[0], totals[1], totals[2]


def _service_verdict(s: Scenario, rng: random.Random, service: str, vantage: str,
                     at: dt.datetime, forced: str | None) -> tuple[str, str | None]:
    if forced is not None:
        return forced, None
    block = truth(s, service, vantage, at)
    state, layer = ("blocked", block.layer) if block else ("ok", None)
    if rng.random() < s.flaky:
        if rng.random() < s.flaky_flip:
            return ("ok", None) if block else ("blocked", "tcp")
        return rng.choice(("inconclusive", "down")), "tcp"
    return state, layer


def _run(s: Scenario, run_id: str, vantage: str, country: str, at: dt.datetime,
         status: str) -> dict[str, Any]:
    return {"id": run_id, "vantage": vantage, "country": country, "asn": None,
            "group_name": None, "started_at": at, "finished_at": at + dt.timedelta(seconds=30),
            "status": status, "software_version": "synthetic", "config_hash": s.config_hash,
            "baseline": {"status": "ok" if status == "complete" else "down"}, "summary": {}}


def _measure(s: Scenario, run_id: str, vantage: str, service: str, at: dt.datetime,
             verdict: str, layer: str | None, ms: list[dict[str, Any]],
             vs: list[dict[str, Any]]) -> None:
    for probe in s.probes:
        for t in range(s.targets_per_probe):
            mid = f"{run_id}-{service}-{probe}-{t}"
            blocked_here = verdict == "blocked" and probe == layer
            failure = "generic_timeout_error" if blocked_here or verdict in (
                "down", "inconclusive") else None
            ms.append({"id": mid, "run_id": run_id, "vantage": vantage, "service": service,
                       "probe": probe, "probe_version": "1", "target": f"{service}.example:{t}",
                       "target_json": {"service": service, "probe": probe,
                                       "host": f"{service}.example"},
                       "started_at": at, "runtime_s": 0.05, "failure": failure,
                       "failed_operation": "connect" if failure else None,
                       "observations": []})
            m_verdict = f"{probe}_blocked" if blocked_here else (
                verdict if verdict in ("down", "inconclusive") else "ok")
            vs.append(_verdict(run_id, mid, service, m_verdict, probe if failure else None, at))


def _verdict(run_id: str, mid: str | None, service: str, verdict: str, layer: str | None,
             at: dt.datetime) -> dict[str, Any]:
    return {"run_id": run_id, "measurement_id": mid, "service": service, "verdict": verdict,
            "layer": layer, "rule_id": f"synthetic.{verdict}", "analyzer_version": "1",
            "evidence": "", "details": {}, "created_at": at}
