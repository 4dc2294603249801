"""``blockwatch query`` (read-only SQL) and ``blockwatch export --format parquet``."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest

from blockwatch.cli import main
from blockwatch.reports import synthetic
from blockwatch.storage import StorageError, open_store
from blockwatch.storage.readonly import read_only_engine, read_only_query

U = dt.UTC


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = tmp_path / "q.db"
    scenario = synthetic.small()
    with open_store(str(path)) as store:
        synthetic.write(store, scenario)
    return str(path)


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_query_prints_csv_and_json(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    sql = "SELECT vantage, count(*) AS runs FROM runs GROUP BY vantage ORDER BY vantage"
    assert main(["query", "--db", db, "-f", "csv", sql]) == 0
    assert capsys.readouterr().out.splitlines() == ["vantage,runs", "cn,48", "kr,48"]
    assert main(["query", "--db", db, "-f", "json", sql]) == 0
    assert json.loads(capsys.readouterr().out) == [{"vantage": "cn", "runs": 48},
                                                   {"vantage": "kr", "runs": 48}]
    assert main(["query", "--db", db, "--limit", "3", "SELECT id FROM runs"]) == 0
    out = capsys.readouterr().out
    assert "93 more rows" in out


@pytest.mark.parametrize("sql", [
    "DELETE FROM runs",
    "UPDATE verdicts SET verdict = 'ok'",
    "INSERT INTO runs (id) VALUES ('x')",
    "DROP TABLE verdicts",
    "CREATE TABLE mine (x)",
    "PRAGMA journal_mode = DELETE",
    "WITH gone AS (DELETE FROM runs RETURNING id) SELECT * FROM gone",
])
def test_query_refuses_writes(db: str, sql: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = _digest(db)
    code = main(["query", "--db", db, sql])
    err = capsys.readouterr().err
    assert code in (2, 3) and "Traceback" not in err
    assert "blockwatch:" in err
    assert _digest(db) == before
    with open_store(db) as store:
        assert len(store.runs(limit=1000)) == 96


def test_write_refused_with_a_clear_message(db: str) -> None:
    engine = read_only_engine(db)
    try:
        with pytest.raises(StorageError, match="refused: queries are read-only"):
            read_only_query(engine, "DELETE FROM runs")
    finally:
        engine.dispose()


@pytest.mark.parametrize("sql,message", [
    ("SELEC 1", "syntax error"),
    ("SELECT * FROM nothing_here", "no such table"),
    ("SELECT 1; SELECT 2", "one statement"),
    ("   ", "empty query"),
])
def test_bad_sql_is_one_line(db: str, sql: str, message: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    # bad input, as the README says of a wrong query: 2 (3 is the database's trouble)
    assert main(["query", "--db", db, sql]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith("blockwatch: bad query: ")


@pytest.mark.parametrize("sql,needs", [
    ("ATTACH DATABASE '{dir}/attached.db' AS other", "ATTACH or VACUUM"),
    ("ATTACH DATABASE 'file:{dir}/attached.db?mode=rwc' AS other", "ATTACH or VACUUM"),
    ("VACUUM INTO '{dir}/attached.db'", "VACUUM"),
    ("VACUUM", "VACUUM"),
    ("CREATE TEMP TABLE mine (x)", "a change to the schema"),
    ("PRAGMA user_version = 7", "PRAGMA user_version with a value"),
    ("PRAGMA optimize", "PRAGMA optimize"),
])
def test_query_cannot_create_files_or_write(db: str, sql: str, needs: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Issue #15 (7): ATTACH and VACUUM INTO created files while the message said nothing was
    changed. Nothing is created, the database is byte for byte what it was, and the refusal
    says what the statement needed (exit 3, as a refused write)."""
    before, mtime = _digest(db), Path(db).stat().st_mtime_ns
    listing = sorted(p.name for p in tmp_path.iterdir())
    code = main(["query", "--db", db, sql.format(dir=tmp_path)])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "refused: queries are read-only" in err and needs in err
    assert "nothing was changed or created" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "attached.db").exists()
    assert _digest(db) == before and Path(db).stat().st_mtime_ns == mtime
    # SQLite's own reader files aside, nothing new: no journal, no attached database
    after = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm")))
    assert after == listing
    wal = Path(f"{db}-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_reading_pragmas_and_schema_functions_still_work(
        db: str, capsys: pytest.CaptureFixture[str]) -> None:
    for sql, line in (("PRAGMA table_info(runs)", "0,id,VARCHAR,1,,1"),
                      ("SELECT name FROM pragma_table_info('runs') LIMIT 1", "id"),
                      ("PRAGMA user_version", "0"),
                      ("SELECT name FROM sqlite_master WHERE name = 'runs'", "runs")):
        assert main(["query", "--db", db, "-f", "csv", sql]) == 0, capsys.readouterr().err
        assert capsys.readouterr().out.splitlines()[1] == line


def test_query_on_missing_or_broken_database(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.db"
    assert main(["query", "--db", str(missing), "SELECT 1"]) == 3
    assert "no database file" in capsys.readouterr().err
    assert not missing.exists()  # a read-only query never creates a database
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"this is not sqlite" * 100)
    assert main(["query", "--db", str(broken), "SELECT * FROM runs"]) == 3
    assert "not a SQLite database" in capsys.readouterr().err


def test_export_parquet(db: str, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "m.parquet"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:///{db}"\n', encoding="utf-8")
    assert main(["export", "-c", str(cfg), "--format", "parquet", "-o", str(out)]) == 0
    table = pq.read_table(out)
    with open_store(db) as store:
        rows = list(store.export_rows())
    assert table.num_rows == len(rows) > 0
    assert table.column_names[:3] == ["measurement_id", "run_id", "vantage"]
    first = table.slice(0, 1).to_pylist()[0]
    assert first["measurement_id"] == rows[0]["measurement_id"]
    assert first["started_at"] == dt.datetime(2014, 7, 1, tzinfo=U)
    assert json.loads(first["observations"]) == []
    blocked = {r["verdict"] for r in table.to_pylist() if r["vantage"] == "cn"}
    assert "dns_blocked" in blocked


def test_export_parquet_needs_a_file(db: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:///{db}"\n', encoding="utf-8")
    assert main(["export", "-c", str(cfg), "--format", "parquet"]) == 2
    assert "--output" in capsys.readouterr().err


def test_export_parquet_takes_the_reading_filters(db: str, tmp_path: Path) -> None:
    """--vantage, --service and --until apply to the columnar Parquet path as to the rows."""
    pq = pytest.importorskip("pyarrow.parquet")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:///{db}"\n', encoding="utf-8")
    with open_store(db) as store:
        rows = list(store.export_rows())
    vantage, service = rows[0]["vantage"], rows[0]["service"]
    until = sorted(r["started_at"] for r in rows)[len(rows) // 2]
    out = tmp_path / "f.parquet"
    assert main(["export", "-c", str(cfg), "--format", "parquet", "-o", str(out),
                 "--vantage", vantage, "--service", service, "--until", until]) == 0
    got = pq.read_table(out).to_pylist()
    want = [r for r in rows if r["vantage"] == vantage and r["service"] == service
            and r["started_at"] < until]
    assert 0 < len(got) < len(rows)
    assert [r["measurement_id"] for r in got] == [r["measurement_id"] for r in want]


def test_export_daily_parquet_partitions_for_duckdb(db: str, tmp_path: Path) -> None:
    """#14: --partition day writes one Parquet file a UTC day (Hive layout), which together
    hold exactly the export's rows; written again, each day is replaced, not added to."""
    pq = pytest.importorskip("pyarrow.parquet")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:///{db}"\n', encoding="utf-8")
    out = tmp_path / "lake"
    args = ["export", "-c", str(cfg), "--format", "parquet", "--partition", "day", "-o", str(out)]
    with open_store(db) as store:
        rows = list(store.export_rows())
    days = sorted({r["started_at"][:10] for r in rows})
    assert len(days) > 1
    for _ in range(2):
        assert main(args) == 0
        files = sorted(out.glob("date=*/measurements.parquet"))
        assert [f.parent.name for f in files] == [f"date={d}" for d in days]
        got = [r for f in files for r in pq.read_table(f).to_pylist()]
        assert [r["measurement_id"] for r in got] == [r["measurement_id"] for r in rows]
        for f in files:
            day = f.parent.name.removeprefix("date=")
            assert {r["started_at"].date().isoformat() for r in pq.read_table(f).to_pylist()
                    } == {day}
    assert not list(out.rglob("*.tmp"))
    # the layout is Hive's: a dataset reader finds every day, with its date as a column
    lake = pq.read_table(out)
    assert lake.num_rows == len(rows) and "date" in lake.column_names


def test_export_partitions_need_parquet_and_a_directory(db: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:///{db}"\n', encoding="utf-8")
    assert main(["export", "-c", str(cfg), "--format", "csv", "--partition", "day",
                 "-o", str(tmp_path / "x")]) == 2
    assert "--format parquet" in capsys.readouterr().err
    plain = tmp_path / "file"
    plain.write_text("")
    assert main(["export", "-c", str(cfg), "--format", "parquet", "--partition", "day",
                 "-o", str(plain)]) == 2
    assert "not a directory" in capsys.readouterr().err
