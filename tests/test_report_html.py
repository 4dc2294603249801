"""The HTML report a researcher reads: the headline, axes, the time axis clipped to the data,
a sentence for every empty section, details at the bottom; and the columnar Parquet export
(the same records as the row by row one), on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest

from blockwatch.cli import main
from blockwatch.reports import synthetic
from blockwatch.reports.charts import span
from blockwatch.reports.events import load_events
from blockwatch.reports.headline import analyse
from blockwatch.reports.html import auto_bucket, report_html
from blockwatch.storage import open_store
from blockwatch.storage.export import EXPORT_FIELDS, export_batches, write_parquet
from blockwatch.storage.queries import NO_FILTERS, Filters, timeline_counts, vantages

U = dt.UTC
JUL2 = dt.datetime(2014, 7, 2, tzinfo=U)
SEP28 = dt.datetime(2014, 9, 28, tzinfo=U)

MONTHS = synthetic.Scenario(
    vantages=[("cn-home", "CN"), ("kr-office", "KR")],
    services=("kakaotalk", "instagram", "facebook", "whatsapp"),
    start=dt.datetime(2014, 6, 1, tzinfo=U), end=dt.datetime(2014, 10, 15, tzinfo=U),
    blocking=[synthetic.Blocking(service="kakaotalk", vantage="cn-home", start=JUL2),
              synthetic.Blocking(service="instagram", vantage="cn-home", start=SEP28,
                                 layer="tls"),
              synthetic.Blocking(service="facebook", vantage="cn-home",
                                 start=dt.datetime(2009, 7, 1, tzinfo=U))],
    measurements_every=48)
# three minutes of sweeps, every 30 s, from a vantage without a country: too few to establish
MINUTES = synthetic.Scenario(
    vantages=[("lab", "")], services=("line", "signal"),
    start=dt.datetime(2026, 12, 6, 4, 53, tzinfo=U),
    end=dt.datetime(2026, 12, 6, 4, 55, 30, tzinfo=U), every=dt.timedelta(seconds=30),
    blocking=[synthetic.Blocking(service="signal", vantage="lab",
                                 start=dt.datetime(2026, 12, 6, 4, 54, tzinfo=U))],
    flaky=0, measurements_every=1)


@pytest.fixture(scope="module")
def months(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("months") / "m.db"
    with open_store(str(path)) as store:
        synthetic.write(store, MONTHS)
    return str(path)


@pytest.fixture
def minutes(tmp_path: Path) -> str:
    path = tmp_path / "minutes.db"
    with open_store(str(path)) as store:
        synthetic.write(store, MINUTES)
    return str(path)


def _text(page: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))


def test_headline_says_what_is_blocked_where_since_when(months: str) -> None:
    with open_store(months) as store:
        page = report_html(store, load_events())
        found = analyse(store)
    blocked = {(ln.service, ln.vantage): ln for ln in found.lines if ln.status == "blocked"}
    assert set(blocked) == {("kakaotalk", "cn-home"), ("instagram", "cn-home"),
                            ("facebook", "cn-home")}
    assert blocked["instagram", "cn-home"].layers[0][0] == "tls"
    onset = blocked["kakaotalk", "cn-home"].onset
    assert onset is not None and onset.last_before < JUL2 <= onset.first_after
    assert blocked["facebook", "cn-home"].onset is None  # blocked from the first sweep
    # flaky single sweeps at kr-office never make the headline
    assert not [ln for ln in found.lines if ln.vantage == "kr-office"
                and ln.status in ("blocked", "unconfirmed")]
    head = page[page.index("<section id=headline>"):page.index("</section>")]
    text = _text(head)
    assert "3 services are blocked" in text and "cn-home (CN)" in text
    assert "kakaotalk cn-home (CN) dns 2014-07-02 00:00" in text
    assert "instagram cn-home (CN) tls 2014-09-28" in text
    assert "our first sweep" in text  # facebook: blocked before the data began
    assert "agrees" in text and "2014-07-01" in text  # the reported date and its comparison
    # the headline comes first, the database path and config hashes last
    assert page.index("id=headline") < page.index("Observed vs reported") < page.index(
        "id=details") < page.index(months) and "synthetic-00" in page[page.index(
            "id=details"):]


def test_charts_have_labelled_axes_clipped_to_the_data(minutes: str, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    assert main(["report", "html", "--db", minutes, "-o", str(out)]) == 0
    page = out.read_text("utf-8")
    # the runs span 2.5 minutes: drawn per minute, from the first minute to the end of the last
    labels = re.findall(r"<text[^>]*>([^<]*)</text>", page)  # SVG text, drawn as text
    assert labels.count("runs per minute") == 2 and labels.count("time (UTC)") == 2
    with open_store(minutes) as store:
        infos = vantages(store)
        assert auto_bucket(infos, NO_FILTERS) == "minute"
        tl = analyse(store, bucket="minute").timeline
        assert {c.start for c in timeline_counts(store, "minute")} == set(tl.buckets)
    limits = span(tl)
    assert limits == (dt.datetime(2026, 12, 6, 4, 53, tzinfo=U),
                      dt.datetime(2026, 12, 6, 4, 56, tzinfo=U))
    assert {"04:53", "04:54", "04:55", "04:56"} <= set(labels)  # ticks in minutes, not hours


def test_every_empty_section_says_why(minutes: str) -> None:
    with open_store(minutes) as store:
        text = _text(report_html(store, load_events()))
    assert "No change of state was detected" in text and "at least 10 conclusive" in text
    assert "no vantage has a country" in text.lower()
    assert "Nothing is blocked as of the last sweep" in text
    assert "Not confirmed" in text and "signal" in text  # 4 blocked sweeps, 5 needed
    with open_store(minutes) as store:
        text = _text(report_html(store, [], Filters(services=["nothing"])))
    assert "No run matches the selection" in text and "No service verdicts match" in text


def test_headline_escapes_names_from_the_database(tmp_path: Path) -> None:
    vantage, service, layer = "<i>cn</i>\x1b[31m", "<b>svc</b>", "<u>dns</u>"
    start = dt.datetime(2026, 1, 1, tzinfo=U)
    hostile = synthetic.Scenario(
        vantages=[(vantage, "CN")], services=(service,), start=start,
        end=start + dt.timedelta(minutes=2), every=dt.timedelta(seconds=10), flaky=0,
        blocking=[synthetic.Blocking(service=service, vantage=vantage, start=start,
                                     layer=layer)])
    with open_store(str(tmp_path / "h.db")) as store:
        synthetic.write(store, hostile)
        page = report_html(store, [])
    head = page[page.index("<section id=headline>"):page.index("</section>")]
    assert "1 service is blocked" in _text(head)
    assert "&lt;b&gt;svc&lt;/b&gt;" in head and "&lt;u&gt;dns&lt;/u&gt;" in head
    assert "&lt;i&gt;cn&lt;/i&gt;\\x1b[31m" in head
    assert "<b>svc" not in page and "<u>" not in page and "\x1b" not in page


def _export_rows(db: str) -> list[tuple[object, ...]]:
    with open_store(db) as store:
        return [row for batch in export_batches(store, size=7) for row in batch]


def test_columnar_parquet_is_the_row_by_row_export(months: str, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    with open_store(months) as store:
        rows = list(store.export_rows())
        with (tmp_path / "rows.parquet").open("wb") as fh:
            assert write_parquet(rows, fh) == len(rows)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:///{months}"\n', encoding="utf-8")
    out = tmp_path / "cols.parquet"
    assert main(["export", "-c", str(cfg), "--format", "parquet", "-o", str(out)]) == 0
    by_rows, by_cols = pq.read_table(tmp_path / "rows.parquet"), pq.read_table(out)
    assert by_cols.schema == by_rows.schema and by_cols.column_names == list(EXPORT_FIELDS)
    assert by_cols.to_pylist() == by_rows.to_pylist() and by_cols.num_rows == len(rows) > 100
    batches = _export_rows(months)
    assert [b[0] for b in batches] == [r["measurement_id"] for r in rows]
    assert all(json.loads(b[EXPORT_FIELDS.index("observations")]) == [] for b in batches)


def test_parquet_observations_escape_what_the_other_formats_escape(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    from blockwatch.storage.queries import bulk_insert

    db = str(tmp_path / "x.db")
    with open_store(db) as store:
        synthetic.write(store, MINUTES)
        rows = list(store.export_rows())
        bulk_insert(store, "measurements", [{
            "id": "hostile", "run_id": rows[0]["run_id"], "vantage": "lab", "service": "line",
            "probe": "http", "probe_version": "1", "target": "t", "target_json": {},
            "started_at": dt.datetime(2026, 12, 6, 4, 56, tzinfo=U), "runtime_s": 0.1,
            "failure": None, "failed_operation": None,
            "observations": [{"body": "a\u202eb\x85c\x7f"}]}])
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[storage]\nurl = "sqlite:///{db}"\n', encoding="utf-8")
    out = tmp_path / "x.parquet"
    assert main(["export", "-c", str(cfg), "--format", "parquet", "-o", str(out)]) == 0
    last = pq.read_table(out).to_pylist()[-1]
    assert last["measurement_id"] == "hostile" and last["verdict"] is None
    assert "\u202e" not in last["observations"] and "\x85" not in last["observations"]
    assert json.loads(last["observations"]) == [{"body": "a\u202eb\x85c\x7f"}]
    assert "\\u202e" in last["observations"] and "\\u0085" in last["observations"]


def test_parquet_and_html_on_postgresql(postgres_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pq = pytest.importorskip("pyarrow.parquet")
    pg = postgres_server.create_database()
    lite = f"sqlite:///{tmp_path / 'lite.db'}"
    tables = {}
    for name, url in (("pg", pg), ("lite", lite)):
        with open_store(url) as store:
            synthetic.write(store, MINUTES)
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(f'[storage]\nurl = "{url}"\n', encoding="utf-8")
        out = tmp_path / f"{name}.parquet"
        assert main(["export", "-c", str(cfg), "--format", "parquet", "-o", str(out)]) == 0
        tables[name] = pq.read_table(out).to_pylist()
        page = tmp_path / f"{name}.html"
        assert main(["report", "html", "--db", url, "-o", str(page)]) == 0
        assert "runs per minute" in page.read_text("utf-8")
    assert len(tables["pg"]) == 40  # 5 runs x 2 services x 4 probes
    assert tables["pg"] == tables["lite"]
