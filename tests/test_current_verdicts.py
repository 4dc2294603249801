"""The ``current_verdicts`` view (migration 0007) on SQLite and on a real PostgreSQL server:
each run's measurement's and service's latest verdict, once, whatever the history holds; and
``Store.verdicts(current=True)`` (what ``blockwatch show`` prints) agrees with it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import text

from blockwatch.probes.model import DNSObservation, Measurement, Run, Target, Verdict
from blockwatch.storage import open_store

DAY = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def fill(url: str) -> set[tuple[str, str | None, str, str]]:
    """Two runs, each measured once, judged three times (analyzers 1, 2, 3; the service of
    run b only twice); returns what is current: (run, measurement, service, verdict)."""
    with open_store(url) as store:
        for run in ("a", "b"):
            store.start_run(Run(id=run, vantage="v", started_at=DAY, status="complete"))
            obs = DNSObservation(resolver="system", transport="udp", qname="x.example",
                                 qtype="A", t0=0.0)
            m = Measurement(id=f"{run}-m", run_id=run, vantage="v", probe_version="1",
                            target=Target(service="svc", probe="dns", host="x.example"),
                            started_at=DAY, runtime_s=0.1, observations=(obs,))
            store.add_measurements([m])
            for analyzer, verdict in (("1", "inconclusive"), ("2", "dns_blocked"),
                                      ("3", "ok")):
                judged = [Verdict(verdict=verdict, rule_id="r", analyzer_version=analyzer,
                                  service="svc", measurement_id=m.id)]
                if run == "a" or analyzer != "3":
                    judged.append(Verdict(verdict=f"service-{analyzer}", rule_id="s",
                                          analyzer_version=analyzer, service="svc"))
                store.add_verdicts(run, judged)
        shown = {(v.measurement_id, v.verdict) for run in ("a", "b")
                 for v in store.verdicts(run_id=run, current=True)}
        assert len(store.verdicts(run_id="a")) == 6  # the history stays
    assert shown == {("a-m", "ok"), (None, "service-3"), ("b-m", "ok"), (None, "service-2")}
    return {("a", "a-m", "svc", "ok"), ("a", None, "svc", "service-3"),
            ("b", "b-m", "svc", "ok"), ("b", None, "svc", "service-2")}


def view(url: str) -> list[tuple[str, str | None, str, str]]:
    with open_store(url, read_only=True) as store, store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(  # type: ignore[misc]
            "SELECT run_id, measurement_id, service, verdict FROM current_verdicts"))]


def test_current_verdicts_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bw.db'}"
    expected = fill(url)
    rows = view(url)
    assert sorted(rows, key=str) == sorted(expected, key=str)  # each once


def test_current_verdicts_on_postgresql(postgres_url: str) -> None:
    expected = fill(postgres_url)
    rows = view(postgres_url)
    assert sorted(rows, key=str) == sorted(expected, key=str)
