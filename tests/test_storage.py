"""storage: round trips, SQLite settings, migrations, errors, exports and crash safety.

Every test uses a fresh SQLite file under tmp_path; nothing touches the network.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from unprivileged import as_unprivileged, scratch_dir

from blockwatch.probes.model import (
    DNSAnswer,
    DNSObservation,
    DNSResponse,
    HTTPObservation,
    Measurement,
    RawObservation,
    Run,
    Target,
    TCPObservation,
    TLSObservation,
    Verdict,
    VPNObservation,
)
from blockwatch.storage import (
    CONTRACT_FIELDS,
    EXPORT_FIELDS,
    StorageError,
    Store,
    open_store,
    write_csv,
    write_jsonl,
)
from blockwatch.storage.migrate import head
from blockwatch.storage.tables import Base

T0 = dt.datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
ROOT = Path(__file__).resolve().parents[1]


# --- sample data --------------------------------------------------------------------------------


def make_run(run_id: str = "run-1", *, at: dt.datetime = T0, group: str | None = None) -> Run:
    return Run(
        id=run_id,
        vantage="laptop",
        started_at=at,
        country="KR",
        asn=4_200_000_001,  # a 32-bit private ASN: must not overflow
        software_version="0.1.0",
        config_hash="abc123",
        group=group,
        baseline={"network_up": True, "controls": ["1.1.1.1"]},
    )


def dns_obs() -> DNSObservation:
    answers = (DNSAnswer(rtype="A", value="31.13.64.1", ttl=60),)
    return DNSObservation(
        resolver="8.8.8.8:53",
        transport="udp",
        qname="facebook.com",
        qtype="A",
        t0=0.0,
        responses=(
            DNSResponse(t=0.01, source="8.8.8.8:53", id=7, flags=0x8180, rcode="NOERROR",
                        answers=answers, ip_ttl=248),
            DNSResponse(t=0.05, source="8.8.8.8:53", id=7, flags=0x8180, rcode="NOERROR",
                        answers=(DNSAnswer(rtype="A", value="157.240.1.35", ttl=300),)),
        ),
    )


def tcp_obs() -> TCPObservation:
    return TCPObservation(address="157.240.1.35", port=443, t0=0.1, t=0.2,
                          failure="connection_reset")


def tls_obs() -> TLSObservation:
    return TLSObservation(
        address="157.240.1.35", port=443, sni="facebook.com", t0=0.2, t=0.4, version="TLSv1.3",
        cipher="TLS_AES_128_GCM_SHA256", alpn="h2", peer_chain_sha256=("aa" * 32, "bb" * 32),
        cert_subject="CN=*.facebook.com", cert_sans=("*.facebook.com", "facebook.com"),
        cert_not_after="2025-01-01T00:00:00Z", verified=True,
    )


def http_obs() -> HTTPObservation:
    return HTTPObservation(
        url="https://facebook.com/", t0=0.4, t=0.9, status=200,
        redirects=("https://www.facebook.com/",), http_version="HTTP/2",
        headers=(("content-type", "text/html"), ("server", "proxygen")), body_length=1234,
        body_sha256="cc" * 32, title="Facebook — log in", address="157.240.1.35",
    )


def make_measurement(
    mid: str, *, run_id: str = "run-1", at: dt.datetime = T0, service: str = "facebook",
    probe: str = "dns", observations: tuple = (), failure: str | None = None,
) -> Measurement:
    if probe == "dns":
        target = Target(service=service, probe="dns", host=f"{service}.com", resolver="8.8.8.8")
    else:
        target = Target(service=service, probe=probe, host="157.240.1.35", port=443,
                        sni=f"{service}.com")
    return Measurement(
        id=mid, run_id=run_id, vantage="laptop", target=target, probe_version="1",
        started_at=at, runtime_s=0.25, observations=observations, failure=failure,
        failed_operation="connect" if failure else None,
    )


def verdict(mid: str | None, name: str = "ok", rule: str = "r1", version: str = "1",
            service: str = "facebook") -> Verdict:
    return Verdict(verdict=name, rule_id=rule, analyzer_version=version, service=service,
                   measurement_id=mid, layer="dns", evidence=f"{name} by {rule}",
                   details={"answers": ["31.13.64.1"]})


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'data' / 'blockwatch.db'}"


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    with open_store(url) as s:
        yield s


# --- round trips --------------------------------------------------------------------------------


def vpn_obs() -> VPNObservation:
    return VPNObservation(protocol="openvpn", address="203.0.113.9", port=1194, transport="udp",
                          t0=0.0, t=0.05, result="reachable",
                          details=(("server_session_id", "ab" * 8),))


def raw_obs() -> RawObservation:
    return RawObservation(
        address="157.240.1.35", port=443, mode="tls", sni="facebook.com", t0=0.0, t=2.0,
        capture=True, synack={"ttl": 52, "ipid": 0, "df": True, "window": 65160},
        resets=({"ttl": 64, "ipid": 7, "df": False, "window": 0, "flags": "R", "after": "data",
                 "t": 0.1},),
        reply="rst",
        hops=({"ttl": 1, "result": "time_exceeded", "from": "192.0.2.1"},
              {"ttl": 2, "result": "rst", "from": None}))


def check_round_trip(url: str) -> None:
    """Runs, every kind of observation and verdicts come back equal (SQLite and PostgreSQL)."""
    run = make_run()
    control_sni = dataclasses.replace(tls_obs(), sni="example.com", verified=None, control=True)
    ms = [
        make_measurement("m1", observations=(dns_obs(),)),
        make_measurement("m2", probe="tcp", observations=(tcp_obs(),), failure="connection_reset",
                         at=T0 + dt.timedelta(seconds=1)),
        make_measurement("m3", probe="tls", observations=(tcp_obs(), tls_obs(), http_obs(),
                                                          control_sni),
                         at=T0 + dt.timedelta(seconds=2)),
        make_measurement("m4", probe="openvpn", observations=(vpn_obs(),),
                         at=T0 + dt.timedelta(seconds=3)),
        make_measurement("m5", probe="trace", observations=(raw_obs(),),
                         at=T0 + dt.timedelta(seconds=4)),
    ]
    vs = [verdict("m1"), verdict("m2", "tcp_blocked"), verdict(None, "partial")]
    finished = T0 + dt.timedelta(minutes=1)
    with open_store(url) as store:
        store.start_run(run)
        store.add_measurements(ms, vs)
        store.finish_run(run.id, status="complete", finished_at=finished, summary={"ok": 2})

    with open_store(url) as store:
        got = store.get_run(run.id)
        assert got == Run(**{**_fields(run), "status": "complete", "finished_at": finished,
                             "summary": {"ok": 2}})
        assert got is not None and got.asn == 4_200_000_001  # 32-bit ASNs do not overflow
        assert got.started_at == T0 and got.started_at.tzinfo == dt.UTC
        assert list(store.measurements()) == ms
        assert store.verdicts(run_id=run.id) == vs
        assert store.verdicts(measurement_id="m2") == [vs[1]]
        assert store.get_run("run") == got  # a unique prefix
        assert store.get_run("RUN") is None  # case-sensitive
        first = next(store.measurements())
        assert first.started_at.tzinfo == dt.UTC and first.started_at == T0


def test_round_trip_of_runs_measurements_and_verdicts(url: str) -> None:
    check_round_trip(url)


def _fields(run: Run) -> dict:
    return {name: getattr(run, name) for name in run.__dataclass_fields__}


def test_datetimes_are_stored_as_sortable_utc_text(store: Store, url: str) -> None:
    seoul = dt.timezone(dt.timedelta(hours=9))
    store.start_run(make_run(at=T0.astimezone(seoul)))
    raw = _sqlite(url, "SELECT started_at, typeof(started_at) FROM runs")
    assert raw == [("2024-03-01T12:00:00.123456Z", "text")]
    assert store.runs()[0].started_at == T0


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        store.start_run(make_run(at=dt.datetime(2024, 1, 1)))  # noqa: DTZ001


def test_runs_newest_first_by_group_and_prefix_lookup(store: Store) -> None:
    store.start_run(make_run("0190aaaa-1", at=T0, group="a"))
    store.start_run(make_run("0190aaaa-2", at=T0 + dt.timedelta(hours=1), group="b"))
    store.start_run(make_run("0190bbbb-3", at=T0 + dt.timedelta(hours=2), group="a"))
    assert [r.id for r in store.runs()] == ["0190bbbb-3", "0190aaaa-2", "0190aaaa-1"]
    assert [r.id for r in store.runs(limit=1)] == ["0190bbbb-3"]
    assert [r.id for r in store.runs(group="a")] == ["0190bbbb-3", "0190aaaa-1"]
    run = store.get_run("0190b")
    assert run is not None and run.id == "0190bbbb-3"
    assert store.get_run("0190aaaa-1") is not None
    assert store.get_run("0190B") is None  # prefixes are case-sensitive on every backend
    assert store.get_run("zzz") is None
    with pytest.raises(StorageError, match="ambiguous"):
        store.get_run("0190a")


def test_service_verdicts_and_reanalysis(store: Store) -> None:
    store.start_run(make_run("r1"))
    store.start_run(make_run("r2"))
    store.add_measurements([make_measurement("m1", run_id="r1")])
    store.add_verdicts("r1", [verdict(None, "blocked"), verdict("m1", "dns_blocked", "r9", "2")])
    # a verdict for a measurement stored earlier finds its run
    store.add_measurements([make_measurement("m2", run_id="r2")], [verdict("m1", "ok", "r10")])
    assert [v.rule_id for v in store.verdicts(run_id="r1")] == ["r1", "r9", "r10"]
    with pytest.raises(ValueError, match="add_verdicts"):
        store.add_measurements(
            [make_measurement("m3", run_id="r1"), make_measurement("m4", run_id="r2")],
            [verdict(None)],
        )
    assert [m.id for m in store.measurements()] == ["m1", "m2"]  # the failed batch left nothing


@pytest.mark.parametrize(
    "action, message",
    [
        (lambda s: s.add_measurements([make_measurement("m1")]), "UNIQUE constraint failed"),
        (lambda s: s.add_measurements([make_measurement("x", run_id="nope")]), "FOREIGN KEY"),
        (lambda s: s.add_verdicts("run-1", [verdict("nope")]), "FOREIGN KEY"),
        (lambda s: s.add_measurements([], [verdict("nope")]), "unknown measurement 'nope'"),
        (lambda s: s.finish_run("nope", status="complete", finished_at=T0, summary={}),
         "no run 'nope'"),
        (lambda s: s.start_run(make_run()), "UNIQUE constraint failed"),
    ],
)
def test_bad_writes_are_storage_errors(store: Store, action, message: str) -> None:
    store.start_run(make_run())
    store.add_measurements([make_measurement("m1")])
    with pytest.raises(StorageError, match=message) as info:
        action(store)
    _assert_one_line(info.value, store.url)


def test_closed_store_refuses(url: str) -> None:
    store = open_store(url)
    store.close()
    store.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        store.runs()


def test_in_memory_store() -> None:
    with open_store("sqlite://") as store:
        store.start_run(make_run())
        assert [r.id for r in store.runs()] == ["run-1"]


# --- SQLite settings and migrations -------------------------------------------------------------


def test_sqlite_pragmas(store: Store) -> None:
    with store.engine.connect() as conn:
        pragma = {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                  for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")}
    assert pragma == {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 1,
                      "busy_timeout": 5000}


def test_plain_path_creates_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "results.db"
    with open_store(str(path)) as store:
        store.start_run(make_run())
    assert path.is_file()


def test_head_names_the_newest_migration() -> None:
    from blockwatch.storage.migrations import HEAD

    assert head() == HEAD  # a database at HEAD opens without Alembic: the two must agree


def migrated(path: Path) -> Path:
    """A database built by the migrations themselves, every revision in turn (Alembic)."""
    from alembic import command
    from sqlalchemy import create_engine

    from blockwatch.storage.migrate import alembic_config

    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        command.upgrade(alembic_config(connection=conn), "head")
    engine.dispose()
    return path


def sqlite_schema(path: Path) -> dict[str, object]:
    """Every table's columns, indexes (with their columns) and foreign keys, and the revision."""
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        out: dict[str, object] = {}
        for t in tables:
            indexes = {}
            for _, name, unique, origin, partial in conn.execute(f"PRAGMA index_list('{t}')"):
                cols = [r[2] for r in conn.execute(f"PRAGMA index_info('{name}')")]
                indexes[name if origin == "c" else f"({origin}){cols}"] = (unique, partial, cols)
            out[t] = (list(conn.execute(f"PRAGMA table_info('{t}')")), indexes,
                      sorted(r[2:] for r in conn.execute(f"PRAGMA foreign_key_list('{t}')")))
        out["revision"] = list(conn.execute("SELECT version_num FROM alembic_version"))
        out["views"] = list(conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'view' ORDER BY name"))
    return out


def test_migrations_match_the_orm(tmp_path: Path) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{migrated(tmp_path / 'm.db')}")
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_a_new_database_gets_the_migrations_schema_without_alembic(tmp_path: Path) -> None:
    """open_store builds a new database from the ORM classes and stamps it HEAD (no Alembic
    import): table by table, column by column, index by index, it is what the migrations
    build; and Alembic then finds it at head."""
    with open_store(f"sqlite:///{tmp_path / 'new.db'}") as store:
        store.start_run(make_run())
        with store.engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_heads() == (head(),)
    new = sqlite_schema(tmp_path / "new.db")
    assert new == sqlite_schema(migrated(tmp_path / "m.db"))
    assert set(new) >= {"runs", "measurements", "verdicts", "schedule_state", "revision"}
    assert [v[0] for v in new["views"]] == ["current_verdicts"]  # type: ignore[index]
    probe = "import sys, blockwatch.storage as s; s.open_store(sys.argv[1]).close(); " \
            "print('alembic' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe, f"sqlite:///{tmp_path / 'x.db'}"],
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False", done.stderr


def test_reopening_is_idempotent(url: str) -> None:
    with open_store(url) as store:
        store.start_run(make_run())
    for _ in range(2):
        with open_store(url) as store:
            assert [r.id for r in store.runs()] == ["run-1"]
    assert _sqlite(url, "SELECT version_num FROM alembic_version") == [(head(),)]


# --- errors on open -----------------------------------------------------------------------------


def _assert_one_line(exc: StorageError, where: str) -> None:
    text = str(exc)
    assert "\n" not in text
    assert text.startswith(f"{where}: ")
    assert "[SQL" not in text and "sqlalche.me" not in text and "Traceback" not in text


def _garbage(tmp: Path) -> str:
    path = tmp / "garbage.db"
    path.write_bytes(b"this is not a database, just some text " * 200)
    return f"sqlite:///{path}"


def _under_a_file(tmp: Path) -> str:
    (tmp / "plain.txt").write_text("x")
    return f"sqlite:///{tmp / 'plain.txt' / 'blockwatch.db'}"


def _too_new(tmp: Path) -> str:
    url = f"sqlite:///{tmp / 'new.db'}"
    open_store(url).close()
    _sqlite(url, "UPDATE alembic_version SET version_num = '9999_from_the_future'")
    return url


def _foreign(tmp: Path) -> str:
    path = tmp / "foreign.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE runs (id TEXT)")
    conn.close()
    return f"sqlite:///{path}"


@pytest.mark.parametrize(
    "make_url, message",
    [
        (_garbage, "not a SQLite database"),
        (_under_a_file, "plain.txt is not a directory"),
        (_too_new, "schema revision 9999_from_the_future is newer than this blockwatch knows"),
        (_foreign, "has tables runs but no schema revision; not a blockwatch database"),
        (lambda _t: "gopher://user:s3cret@example.org/db", "unknown URL scheme 'gopher'"),
        (lambda _t: "sqlite+nodriver:///x.db", "unknown URL scheme 'sqlite+nodriver'"),
        (lambda _t: "://nothing", "not a database URL"),
        (lambda _t: "", "empty database URL"),
    ],
)
def test_open_errors_are_one_line_storage_errors(tmp_path: Path, make_url, message: str) -> None:
    url = make_url(tmp_path)
    with pytest.raises(StorageError) as info:
        open_store(url)
    assert message in str(info.value)
    assert "s3cret" not in str(info.value)
    _assert_one_line(info.value, info.value.where)


def test_password_is_hidden(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as info:
        open_store("gopher://user:s3cret@example.org/db")
    assert info.value.where == "gopher://user:***@example.org/db"


def test_unwritable_directory() -> None:
    locked = scratch_dir() / "locked"
    locked.mkdir()
    locked.chmod(0o555)  # as root (CI) the check runs as nobody, who may not write here

    def check() -> None:
        with pytest.raises(StorageError, match="not writable"):
            open_store(f"sqlite:///{locked / 'blockwatch.db'}")

    as_unprivileged(check)


def test_garbage_file_is_left_alone(tmp_path: Path) -> None:
    url = _garbage(tmp_path)
    before = (tmp_path / "garbage.db").read_bytes()
    with pytest.raises(StorageError):
        open_store(url)
    assert (tmp_path / "garbage.db").read_bytes() == before


# --- export -------------------------------------------------------------------------------------


def _filled(store: Store) -> None:
    store.start_run(make_run())
    ms = [make_measurement(f"m{i}", at=T0 + dt.timedelta(hours=i), observations=(dns_obs(),))
          for i in range(3)]
    store.add_measurements(ms, [verdict("m0", "ok", "old"), verdict("m1", "ok", "old")])
    # re-analysis: a newer rule changes its mind about m0; the old verdict stays
    store.add_verdicts("run-1", [verdict("m0", "dns_blocked", "new", "2")])


def test_export_rows_take_the_latest_verdict(store: Store) -> None:
    _filled(store)
    rows = {r["measurement_id"]: r for r in store.export_rows()}
    assert (rows["m0"]["verdict"], rows["m0"]["rule_id"], rows["m0"]["analyzer_version"]) == (
        "dns_blocked", "new", "2")
    assert rows["m1"]["rule_id"] == "old"
    assert rows["m2"]["verdict"] is None  # not analysed yet, still exported
    assert len(store.verdicts(measurement_id="m0")) == 2
    row = rows["m0"]
    assert tuple(row) == (*EXPORT_FIELDS, "target_json", "verdict_layer", "run_started_at",
                          "software_version")  # the extras: the OONI export's
    assert row["started_at"] == "2024-03-01T12:00:00.123456Z"
    assert (row["target"], row["probe"], row["country"], row["asn"]) == (
        "facebook.com@8.8.8.8", "dns", "KR", 4_200_000_001)
    assert row["observations"][0]["layer"] == "dns"
    assert len(row["observations"][0]["responses"]) == 2


def test_since_and_run_filters(store: Store) -> None:
    _filled(store)
    seoul = dt.timezone(dt.timedelta(hours=9))
    since = (T0 + dt.timedelta(hours=1)).astimezone(seoul)  # same instant, other zone
    assert [m.id for m in store.measurements(since=since)] == ["m1", "m2"]
    assert [r["measurement_id"] for r in store.export_rows(since=since)] == ["m1", "m2"]
    assert [m.id for m in store.measurements(run_id="other")] == []
    assert [r["measurement_id"] for r in store.export_rows(run_id="run-1")] == ["m0", "m1", "m2"]


def test_streams_read_a_snapshot_and_do_not_block_writers(store: Store) -> None:
    _filled(store)
    stream = store.measurements()
    assert next(stream).id == "m0"
    store.add_measurements([make_measurement("late", at=T0 + dt.timedelta(days=1))])
    assert [m.id for m in stream] == ["m1", "m2"]  # the write came after the snapshot
    abandoned = store.export_rows()
    next(abandoned)
    abandoned.close()  # gives its connection back
    assert sum(1 for _ in store.export_rows()) == 4


def test_threads_share_a_store(store: Store) -> None:
    store.start_run(make_run())

    def write(n: int) -> None:
        store.add_measurements([make_measurement(f"t{n}-{i}") for i in range(20)])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(8)))
    assert sum(1 for _ in store.measurements()) == 160


def test_concurrent_first_opens_do_not_race(url: str) -> None:
    def open_and_close(_n: int) -> None:
        open_store(url).close()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(open_and_close, range(4)))
    assert _sqlite(url, "SELECT version_num FROM alembic_version") == [(head(),)]


def test_jsonl_round_trip(store: Store) -> None:
    _filled(store)
    out = io.StringIO()
    assert write_jsonl(store.export_rows(), out) == 3
    lines = out.getvalue().splitlines()
    records = [json.loads(line) for line in lines]
    assert records == [{k: r[k] for k in EXPORT_FIELDS} for r in store.export_rows()]
    assert list(records[0]) == list(EXPORT_FIELDS)


def test_csv_round_trip(store: Store) -> None:
    _filled(store)
    out = io.StringIO(newline="")
    assert write_csv(store.export_rows(), out) == 3
    parsed = list(csv.DictReader(io.StringIO(out.getvalue(), newline="")))
    assert tuple(parsed[0]) == EXPORT_FIELDS
    assert EXPORT_FIELDS[: len(CONTRACT_FIELDS)] == CONTRACT_FIELDS
    expected = list(store.export_rows())
    assert [r["measurement_id"] for r in parsed] == ["m0", "m1", "m2"]
    assert json.loads(parsed[0]["observations"]) == expected[0]["observations"]
    assert float(parsed[0]["runtime_s"]) == expected[0]["runtime_s"]
    assert parsed[2]["verdict"] == ""  # NULL is an empty cell


# --- the SQL in docs/schema.md works ------------------------------------------------------------


def test_documented_queries_run(store: Store, url: str) -> None:
    _filled(store)
    per_day = _sqlite(url, """
        SELECT date(m.started_at) AS day, m.service, v.verdict, count(*) AS n
        FROM measurements m
        JOIN verdicts v ON v.id = (SELECT max(id) FROM verdicts WHERE measurement_id = m.id)
        GROUP BY day, m.service, v.verdict ORDER BY day, m.service, v.verdict""")
    assert per_day == [("2024-03-01", "facebook", "dns_blocked", 1),
                       ("2024-03-01", "facebook", "ok", 1)]
    injected = _sqlite(url, """
        SELECT m.id, json_extract(o.value, '$.qname') AS qname,
               json_array_length(o.value, '$.responses') AS responses
        FROM measurements m, json_each(m.observations) o
        WHERE json_extract(o.value, '$.layer') = 'dns'
          AND json_array_length(o.value, '$.responses') > 1
        ORDER BY m.started_at""")
    assert injected == [(f"m{i}", "facebook.com", 2) for i in range(3)]


def _sqlite(url: str, sql: str) -> list[tuple]:
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        with conn:
            return conn.execute(sql).fetchall()
    finally:
        conn.close()


# --- crash safety -------------------------------------------------------------------------------

_KILLED_WRITER = """
import datetime as dt, os, sys
from sqlalchemy import event
from sqlalchemy.orm import Session
from blockwatch.probes.model import Measurement, Target, TCPObservation
from blockwatch.storage import open_store

store = open_store(sys.argv[1])

@event.listens_for(Session, "after_begin")
def small_cache(session, transaction, connection):
    # a tiny page cache makes SQLite spill the open transaction into the WAL file
    connection.exec_driver_sql("PRAGMA cache_size = 8")

@event.listens_for(Session, "before_commit")
def die(session):
    os._exit(1)  # killed after the rows are written, before the commit

target = Target(service="x", probe="tcp", host="192.0.2.1", port=443)
obs = (TCPObservation(address="192.0.2.1", port=443, t0=0.0, t=0.1, failure="x" * 200),)
store.add_measurements([
    Measurement(id=f"b2-{i}", run_id="run-1", vantage="v", target=target, probe_version="1",
                started_at=dt.datetime.now(dt.UTC), runtime_s=0.1, observations=obs)
    for i in range(2000)
])
"""


def test_killed_writer_loses_only_the_batch_in_flight(url: str, tmp_path: Path) -> None:
    batch1 = [make_measurement(f"b1-{i}", observations=(tcp_obs(),)) for i in range(50)]
    with open_store(url) as store:
        store.start_run(make_run())
        store.add_measurements(batch1)
    db = Path(url.removeprefix("sqlite:///"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLED_WRITER), url],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert Path(f"{db}-wal").stat().st_size > 0  # uncommitted pages did reach the disk

    with open_store(url) as store:
        # same start time: the store orders them by id
        assert list(store.measurements()) == sorted(batch1, key=lambda m: m.id)
        store.add_measurements([make_measurement("after")])  # still writable
    assert _sqlite(url, "PRAGMA integrity_check") == [("ok",)]
