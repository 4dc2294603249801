"""``storage.arrow_read``: the Parquet export's SQLite rows read by the ADBC driver in a child
process are exactly ``export_batches``'s SQLAlchemy rows (issue #16's fast export)."""

from __future__ import annotations

import datetime as dt
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import column, select, table

from blockwatch.cli import main
from blockwatch.reports import synthetic
from blockwatch.storage import StorageError, arrow_read, open_store
from blockwatch.storage.export import EXPORT_FIELDS, export_batches

pa = pytest.importorskip("pyarrow")
pytest.importorskip("adbc_driver_sqlite")

U = dt.UTC


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two days of sweeps, edited so that the driver's type inference is put to the test:
    columns NULL in every row of the first batches and text later (category, evidence,
    failed_operation), a run's ASN NULL then set, a re-analysed measurement (two verdicts),
    one without a verdict, text beyond ASCII and an observation with a bidi override."""
    path = tmp_path_factory.mktemp("arrow") / "a.db"
    scenario = synthetic.small()
    with open_store(str(path)) as store:
        synthetic.write(store, scenario)
    with sqlite3.connect(path) as conn:
        late = "started_at >= '2014-07-02'"
        conn.execute(f"UPDATE measurements SET category = 'GRP', failed_operation = NULL, "
                     f"target = target || ' ü—日本' WHERE {late}")
        conn.execute(f"UPDATE measurements SET failed_operation = 'connect' WHERE {late} "
                     "AND failure IS NOT NULL")
        conn.execute("UPDATE measurements SET failed_operation = NULL WHERE NOT " + late)
        conn.execute("UPDATE verdicts SET evidence = '' WHERE measurement_id IS NOT NULL")
        conn.execute(f"UPDATE runs SET asn = 4134 WHERE vantage = 'cn' AND {late}")
        conn.execute(f"UPDATE runs SET country = NULL WHERE vantage = 'kr' AND NOT {late}")
        first, second = (r[0] for r in conn.execute(
            "SELECT id FROM measurements WHERE " + late + " ORDER BY id LIMIT 2"))
        conn.execute("INSERT INTO verdicts (run_id, measurement_id, service, verdict, layer, "
                      "rule_id, analyzer_version, evidence, details, created_at) "
                      "SELECT run_id, measurement_id, service, 'tls_blocked', 'tls', 'again', "
                      "'99', 'reset after ClientHello', '{}', created_at FROM verdicts "
                      "WHERE measurement_id = ?", (first,))
        conn.execute("DELETE FROM verdicts WHERE measurement_id = ?", (second,))
        conn.execute("UPDATE measurements SET observations = ? WHERE id = ?",
                     ('[{"x": "a\u202eb"}]', second))
    return str(path)


def _rows(batches: list[Any]) -> list[tuple[Any, ...]]:
    return [tuple(r.values()) for b in batches for r in b.to_pylist()]


FILTERS: list[dict[str, Any]] = [
    {},
    {"since": dt.datetime(2014, 7, 1, 12, tzinfo=U), "until": dt.datetime(2014, 7, 2, 12,
                                                                          tzinfo=U)},
    {"vantages": ["cn"], "services": ["line", "instagram"]},
]


@pytest.mark.parametrize("filters", FILTERS, ids=["all", "since-until", "vantage-service"])
def test_arrow_rows_are_the_sqlalchemy_rows(db: str, filters: dict[str, Any]) -> None:
    with open_store(db) as store:
        want = [row for b in export_batches(store, size=5, **filters) for row in b]
        got = list(export_batches(store, size=5, arrow=True, **filters))
    assert got and all(isinstance(b, pa.RecordBatch) for b in got)
    assert max(b.num_rows for b in got) == 5
    assert got[0].schema.names == list(EXPORT_FIELDS)
    assert _rows(got) == want
    assert 0 < len(want)
    if not filters:  # what the fixture set up is in the rows compared
        rows = {r[0]: dict(zip(EXPORT_FIELDS, r, strict=True)) for r in want}
        assert {r["category"] for r in rows.values()} == {None, "GRP"}
        assert {r["asn"] for r in rows.values()} == {None, 4134}
        assert {r["rule_id"] for r in rows.values()} >= {"again", None}
        assert any("日本" in r["target"] for r in rows.values())


def test_a_run_filter_and_an_empty_result(db: str) -> None:
    with open_store(db) as store:
        run = store.export_rows().__next__()["run_id"]
        want = [row for b in export_batches(store, run_id=run) for row in b]
        assert _rows(list(export_batches(store, run_id=run, arrow=True))) == want
        assert list(export_batches(store, since=dt.datetime(2030, 1, 1, tzinfo=U),
                                   arrow=True)) == []


def test_the_reader_s_failure_is_a_storage_error(db: str) -> None:
    with open_store(db) as store:
        stmt = select(column("x").label("measurement_id")).select_from(table("nowhere"))
        with pytest.raises(StorageError, match="no such table"):
            list(arrow_read.record_batches(store.engine, store.url, stmt,
                                           ("measurement_id",), ("measurement_id",), 5))


def test_stopping_early_ends_the_reader(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[subprocess.Popen[bytes]] = []
    real = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        started.append(real(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(arrow_read.subprocess, "Popen", popen)
    with open_store(db) as store:
        batches = export_batches(store, size=5, arrow=True)
        assert next(batches).num_rows > 0  # more to come: the reader is still running
        batches.close()
    assert len(started) == 1 and started[0].returncode is not None


def test_text_that_is_not_utf8_is_refused_clearly(db: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "b.db"
    broken.write_bytes(Path(db).read_bytes())
    with sqlite3.connect(broken) as conn:
        conn.execute("UPDATE measurements SET target = CAST(X'66ff' AS TEXT) WHERE rowid = 7")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:///{broken}"\n', encoding="utf-8")
    out = tmp_path / "b.parquet"
    assert main(["export", "-c", str(cfg), "--format", "parquet", "-o", str(out)]) != 0
    err = capsys.readouterr().err
    assert "not valid UTF-8" in err and "Traceback" not in err


def test_the_child_s_pipe_gets_every_byte_of_partial_writes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A write to a pipe may take part of the bytes (the child stopped and continued, as with
    Ctrl-Z and fg): the child's output writes the rest, so the stream stays whole."""
    import os

    read, write = os.pipe()
    real = os.write
    monkeypatch.setattr(arrow_read.os, "write", lambda fd, data: real(fd, bytes(data[:7])))
    batch = pa.record_batch({"measurement_id": ["a", "b" * 100], "asn": [1, None]})
    with pa.ipc.new_stream(arrow_read._Out(write), batch.schema) as out:
        out.write_batch(batch)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        assert pa.ipc.open_stream(fh).read_all().to_batches() == [batch]


def test_a_reader_that_dies_at_once_is_a_storage_error(
        db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arrow_read.sys, "executable", "/bin/false")
    with open_store(db) as store, pytest.raises(StorageError, match="exit status 1"):
        list(export_batches(store, arrow=True))
