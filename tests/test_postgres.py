"""The storage and the reports on a real PostgreSQL server (tests/postgres.py starts one):
migrations, round trips, export, schedule state, read-only ``query``, the reports (which must
equal those of the same history in SQLite) and ``reanalyze``, through the CLI."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from postgres import PostgresServer
from sqlalchemy import text
from test_storage import T0, _filled, check_round_trip

from blockwatch.cli import main
from blockwatch.probes.model import Run
from blockwatch.reports import synthetic
from blockwatch.storage import StorageError, open_store
from blockwatch.storage.migrate import head
from blockwatch.storage.store import ScheduleState
from blockwatch.storage.tables import Base

U = dt.UTC
BLOCKWATCH = str(Path(sys.executable).parent / "blockwatch")
SCENARIO = synthetic.Scenario(
    vantages=[("cn-home", "CN"), ("kr-office", "KR")],
    services=("kakaotalk", "line", "instagram"),
    start=dt.datetime(2014, 6, 20, tzinfo=U), end=dt.datetime(2014, 7, 20, tzinfo=U),
    blocking=[synthetic.Blocking(service="kakaotalk", vantage="cn-home",
                                 start=dt.datetime(2014, 7, 2, tzinfo=U)),
              synthetic.Blocking(service="line", vantage="cn-home",
                                 start=dt.datetime(2014, 7, 2, tzinfo=U))],
    outages=[("cn-home", dt.datetime(2014, 7, 10, tzinfo=U), dt.datetime(2014, 7, 11, tzinfo=U),
              None)],
    measurements_every=12)


def _sql(url: str, sql: str) -> list[tuple]:
    from blockwatch.storage.db import create_engine_for

    engine = create_engine_for(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(sql))
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()


def _config(tmp_path: Path, url: str) -> str:
    cfg = tmp_path / "bw.toml"
    cfg.write_text(f'[storage]\nurl = "{url}"\n', encoding="utf-8")
    return str(cfg)


# --- storage ------------------------------------------------------------------------------------


def test_migrations_to_head_and_reopen(postgres_url: str) -> None:
    with open_store(postgres_url):
        pass
    with open_store(postgres_url) as store:  # at head: nothing to do
        assert store.runs() == []
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with open_store(plain) as store:  # the driver is psycopg 3 (blockwatch[postgresql])
        assert store.engine.dialect.driver == "psycopg"
        with store.engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_heads() == (head(),)
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    types = dict(_sql(postgres_url, "SELECT table_name || '.' || column_name, data_type FROM "
                                    "information_schema.columns WHERE table_schema = 'public'"))
    assert types["runs.started_at"] == "timestamp with time zone"
    assert types["measurements.observations"] == "jsonb"
    assert types["verdicts.id"] == "bigint"
    assert types["runs.asn"] == "bigint"


def test_too_new_schema_is_refused(postgres_url: str) -> None:
    with open_store(postgres_url):
        pass
    _sql(postgres_url, "UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StorageError, match="newer than this blockwatch knows"):
        open_store(postgres_url)


def test_round_trip_of_every_observation_kind(postgres_url: str) -> None:
    check_round_trip(postgres_url)


def test_export_rows_latest_verdict_and_filters(postgres_url: str) -> None:
    with open_store(postgres_url) as store:
        _filled(store)
        rows = {r["measurement_id"]: r for r in store.export_rows()}
        assert (rows["m0"]["verdict"], rows["m0"]["rule_id"]) == ("dns_blocked", "new")
        assert rows["m1"]["rule_id"] == "old"
        assert rows["m2"]["verdict"] is None
        assert rows["m0"]["started_at"] == "2024-03-01T12:00:00.123456Z"
        assert (rows["m0"]["country"], rows["m0"]["asn"]) == ("KR", 4_200_000_001)
        since = (T0 + dt.timedelta(hours=1)).astimezone(dt.timezone(dt.timedelta(hours=9)))
        assert [r["measurement_id"] for r in store.export_rows(since=since)] == ["m1", "m2"]
        assert [m.id for m in store.measurements(since=since)] == ["m1", "m2"]
        got = store.control_measurements(["laptop"], T0 + dt.timedelta(minutes=30),
                                         T0 + dt.timedelta(hours=2))
        assert [m.id for m in got] == ["m1", "m2"]
        assert store.control_measurements(["elsewhere"], T0, T0 + dt.timedelta(days=1)) == []
    # the documented PostgreSQL queries (docs/schema.md) run
    injected = _sql(postgres_url, """
        SELECT m.id, o->>'qname' AS qname, jsonb_array_length(o->'responses') AS responses
        FROM measurements m, jsonb_array_elements(m.observations) o
        WHERE o->>'layer' = 'dns' AND jsonb_array_length(o->'responses') > 1
        ORDER BY m.started_at""")
    assert injected == [(f"m{i}", "facebook.com", 2) for i in range(3)]
    history = _sql(postgres_url, """
        SELECT measurement_id, string_agg(analyzer_version || ':' || verdict, ' -> ' ORDER BY id)
        FROM verdicts WHERE measurement_id IS NOT NULL GROUP BY measurement_id
        HAVING count(DISTINCT verdict) > 1""")
    assert history == [("m0", "1:ok -> 2:dns_blocked")]


def test_schedule_state(postgres_url: str) -> None:
    seoul = dt.timezone(dt.timedelta(hours=9))
    a = ScheduleState(vantage="home", group="hourly", schedule="every 1h",
                      next_run_at=T0.astimezone(seoul), updated_at=T0)
    b = ScheduleState(vantage="home", group="daily", schedule="daily at 03:00",
                      last_run_id="r1", last_started_at=T0, last_status="complete",
                      daemon_pid=4242, daemon_host="box", updated_at=T0)
    with open_store(postgres_url) as store:
        store.put_schedule_state([a, b])
        got = store.schedule_states()
        assert [s.group for s in got] == ["daily", "hourly"]
        assert got[1].next_run_at == T0 and got[1].next_run_at.tzinfo == U
        assert got[0] == b
        newer = ScheduleState(vantage="home", group="hourly", schedule="every 2h",
                              updated_at=T0 + dt.timedelta(hours=1))
        store.put_schedule_state([newer])  # replaces
        store.drop_schedule_state([("home", "daily")])
        assert store.schedule_states() == [newer]


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def history(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[str, str]:
    """The same synthetic history in PostgreSQL and in SQLite: (postgres URL, sqlite URL)."""
    pg = postgres_server.create_database()
    lite = f"sqlite:///{tmp_path_factory.mktemp('history') / 'history.db'}"
    for url in (pg, lite):
        with open_store(url) as store:
            synthetic.write(store, SCENARIO)
    return pg, lite


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(list(args))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.mark.parametrize("report", [
    ["timeline", "--bucket", "hour"], ["timeline", "--bucket", "day"],
    ["timeline", "--bucket", "week"], ["changes"], ["compare"],
])
def test_reports_equal_sqlite(history: tuple[str, str], report: list[str],
                              capsys: pytest.CaptureFixture[str]) -> None:
    pg, lite = history
    got = {url: json.loads(_cli(capsys, "report", *report, "--db", url, "-f", "json"))
           for url in (pg, lite)}
    assert got[pg] == got[lite]
    assert got[pg], report


def test_changes_find_the_onsets(history: tuple[str, str],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = _cli(capsys, "report", "changes", "--db", history[0], "-f", "csv")
    assert "kakaotalk" in out and "line" in out and "2014-07-0" in out


def test_cli_runs_export_and_query(history: tuple[str, str], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    pg, lite = history
    cfg = _config(tmp_path, pg)
    runs = _cli(capsys, "runs", "-c", cfg)
    assert "cn-home" in runs or "kr-office" in runs
    exported = {url: _cli(capsys, "export", "-c", _config(tmp_path, url), "--format", "jsonl")
                for url in (pg, lite)}
    rows = [json.loads(line) for line in exported[pg].splitlines()]
    assert len(rows) > 100 and {r["verdict"] for r in rows} >= {"ok", "dns_blocked"}
    assert exported[pg] == exported[lite]
    sql = "SELECT vantage, count(*) AS runs FROM runs GROUP BY vantage ORDER BY vantage"
    out = _cli(capsys, "query", "-c", cfg, "-f", "json", sql)
    counts = json.loads(out)
    assert [c["vantage"] for c in counts] == ["cn-home", "kr-office"]
    assert counts == json.loads(_cli(capsys, "query", "--db", lite, "-f", "json", sql))


@pytest.mark.parametrize("sql", [
    "DELETE FROM runs",
    "UPDATE verdicts SET verdict = 'ok'",
    "INSERT INTO runs (id) VALUES ('x')",
    "DROP TABLE verdicts",
    "CREATE TABLE mine (x int)",
    "WITH gone AS (DELETE FROM runs RETURNING id) SELECT * FROM gone",
    "SELECT 1; DELETE FROM runs",
    "COMMIT; DELETE FROM runs",
    "SET TRANSACTION READ WRITE; DELETE FROM runs",
    "SELECT 1; COMMIT; DELETE FROM runs",
    "COMMIT",
    "SELECT nextval('verdicts_id_seq')",
])
def test_query_refuses_writes(history: tuple[str, str], sql: str,
                              capsys: pytest.CaptureFixture[str]) -> None:
    pg = history[0]
    before = _sql(pg, "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM verdicts), "
                      "(SELECT count(*) FROM pg_tables WHERE schemaname = 'public')")
    code = main(["query", "--db", pg, sql])
    err = capsys.readouterr().err
    assert code in (2, 3) and "Traceback" not in err and err.startswith("blockwatch:"), err
    assert len(err.splitlines()) == 1, err
    after = _sql(pg, "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM verdicts), "
                     "(SELECT count(*) FROM pg_tables WHERE schemaname = 'public')")
    assert after == before


@pytest.mark.parametrize("sql, message", [
    ("SELEC 1", "syntax error"),
    ("SELECT * FROM nothing_here", "nothing_here"),
    ("SELECT 1/0", "division by zero"),
])
def test_a_wrong_query_is_bad_usage(history: tuple[str, str], sql: str, message: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "--db", history[0], sql]) == 2  # as on SQLite: bad input
    err = capsys.readouterr().err
    assert err.startswith("blockwatch: bad query: ") and message in err, err


def test_query_runs_explain_and_show(history: tuple[str, str],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = _cli(capsys, "query", "--db", history[0], "-f", "json", "SHOW transaction_read_only")
    assert json.loads(out) == [{"transaction_read_only": "on"}]
    out = _cli(capsys, "query", "--db", history[0], "-f", "csv",
               "EXPLAIN SELECT count(*) FROM verdicts WHERE measurement_id IS NULL")
    assert "QUERY PLAN" in out.splitlines()[0]
    out = _cli(capsys, "query", "--db", history[0], "-f", "json",
               "SELECT count(*) AS n FROM runs WHERE vantage = 'cn-home'")
    assert json.loads(out)[0]["n"] > 600


def test_reanalyze(postgres_url: str, tmp_path: Path) -> None:
    from test_reanalyze import CONTROL, dns_m

    from blockwatch.analysis.verdicts import ANALYZER_VERSION
    from blockwatch.probes import failures as F
    from blockwatch.probes.model import Verdict

    day = dt.datetime(2024, 6, 1, tzinfo=U)
    with open_store(postgres_url) as store:
        store.start_run(Run(id="run-1", vantage="home", started_at=day, status="complete"))
        tested = dns_m("run-1", "system", "NXDOMAIN", F.DNS_NXDOMAIN, day)
        control = dns_m("run-1", CONTROL, "NOERROR", None, day, ("203.133.167.16",))
        store.add_measurements([tested, control], [Verdict(
            verdict="inconclusive", rule_id="failure.no_control", analyzer_version="1",
            service="kakaotalk", measurement_id=tested.id)])
    cfg = tmp_path / "bw.toml"
    cfg.write_text(f'[storage]\nurl = "{postgres_url}"\n[dns]\ncontrols = ["{CONTROL}"]\n',
                   encoding="utf-8")
    done = subprocess.run([BLOCKWATCH, "reanalyze", "-c", str(cfg)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    history = _sql(postgres_url, "SELECT analyzer_version, verdict FROM verdicts WHERE "
                                 "measurement_id = 'run-1-system' ORDER BY id")
    assert history == [("1", "inconclusive"), (ANALYZER_VERSION, "dns_blocked")]


PG_SCHEMA = {
    "columns": "SELECT table_name, ordinal_position, column_name, data_type, is_nullable, "
               "column_default FROM information_schema.columns WHERE table_schema = 'public' "
               "ORDER BY table_name, ordinal_position",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes "
               "WHERE schemaname = 'public' ORDER BY tablename, indexname",
    "constraints": "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
                   "FROM pg_constraint WHERE connamespace = 'public'::regnamespace "
                   "ORDER BY 1, 2",
    "revision": "SELECT version_num FROM alembic_version",
}


def test_a_new_database_gets_the_migrations_schema(postgres_server: PostgresServer) -> None:
    """A new PostgreSQL database is built from the ORM classes and stamped HEAD (no Alembic):
    its columns (in order, with types, defaults, nullability), indexes and constraints are the
    ones the migrations build, revision by revision."""
    from alembic import command

    from blockwatch.storage.db import create_engine_for
    from blockwatch.storage.migrate import alembic_config

    new, old = postgres_server.create_database(), postgres_server.create_database()
    with open_store(new):
        pass
    engine = create_engine_for(old)
    with engine.begin() as conn:
        command.upgrade(alembic_config(connection=conn), "head")
    engine.dispose()
    for what, sql in PG_SCHEMA.items():
        assert _sql(new, sql) == _sql(old, sql), what
    assert _sql(new, PG_SCHEMA["revision"]) == [(head(),)]


def test_copy_failures_are_storage_errors_and_store_nothing(postgres_url: str) -> None:
    """Rows go to PostgreSQL by COPY (storage/copy.py), past SQLAlchemy's error handling: a
    constraint it breaks is still a StorageError naming the problem, the transaction rolls back
    whole, and a connection killed under it is reported as lost and dropped from the pool, so
    that the next transaction works."""
    from blockwatch.probes.model import Verdict

    verdict = Verdict(verdict="ok", rule_id="ok.no_failure", analyzer_version="8",
                      service="s", measurement_id=None)
    # the collector's way: no check of a pooled connection before each use (it tries again)
    with open_store(postgres_url, pre_ping=False) as store:
        store.start_run(Run(id="copy-run", vantage="v", started_at=T0))
        with pytest.raises(StorageError, match="foreign key") as caught:
            store.add_verdicts("no-such-run", [verdict])
        assert not caught.value.disconnected
        store.add_verdicts("copy-run", [verdict])
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM verdicts")).scalar_one() == 1
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        # the pooled connection the next COPY draws is killed by the server: a lost connection
        _sql(postgres_url, f"SELECT pg_terminate_backend({pid})")
        with pytest.raises(StorageError) as caught:
            store.add_verdicts("copy-run", [verdict])
        assert caught.value.disconnected
        store.add_verdicts("copy-run", [verdict])  # a new connection
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM verdicts")).scalar_one() == 2



def test_nul_characters_from_the_network_are_stored(postgres_url: str) -> None:
    """Issue #15: PostgreSQL refuses NUL in text and \\u0000 in JSONB; a body, a name or an
    imported record may hold one. Stored with U+FFFD in its place, instead of failing the run's
    write (SQLite keeps it as sent)."""
    from blockwatch.probes.model import HTTPObservation, Measurement, Target, Verdict

    run = Run(id="nul-run", vantage="v\x00", started_at=T0)
    obs = HTTPObservation(url="http://a.test/", t0=0.0, t=0.1, status=200, title="a\x00b",
                          headers=(("x-nul\x00", "v\x00"),))
    m = Measurement(id="nul-m", run_id=run.id, vantage="v\x00",
                    target=Target(service="s\x00", probe="http", host="a.test",
                                  url="http://a.test/"),
                    probe_version="1", started_at=T0, runtime_s=0.1, observations=(obs,),
                    failure="f\x00", failed_operation="http_round_trip")
    with open_store(postgres_url) as store:
        store.start_run(run)
        store.add_measurements([m], [Verdict(verdict="ok", rule_id="r", analyzer_version="8",
                                             service="s\x00", measurement_id=m.id,
                                             evidence="e\x00")], run_id=run.id)
        store.finish_run(run.id, status="complete", finished_at=T0,
                         summary={"blocked": ["s\x00"]})
        [back] = store.measurements(run_id=run.id)
        [verdict] = store.verdicts(run_id=run.id)
        stored = store.get_run(run.id)
    assert back.observations[0].title == "a\ufffdb" and back.failure == "f\ufffd"
    assert back.target.service == "s\ufffd" and verdict.evidence == "e\ufffd"
    assert stored is not None and stored.summary["blocked"] == ["s\ufffd"]
    assert stored.vantage == "v\ufffd"
