"""Reports on a synthetic history with known truth: six months of hourly sweeps from a censored
("CN") and an uncensored ("KR") vantage, 5% flaky sweeps (half of them flipping ok <-> blocked),
a day with the network down, a day of outage, and three days without runs."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest

from blockwatch.cli import main
from blockwatch.reports import load, synthetic
from blockwatch.reports.analysis import change_points, comparison
from blockwatch.reports.changes import Sweep, detect
from blockwatch.reports.compare import (
    AGREES,
    BEFORE,
    LATER,
    NO_DATA,
    NOT_COVERED,
    NOT_OBSERVED,
)
from blockwatch.reports.events import EventsError, load_events, parse_events
from blockwatch.reports.html import report_html
from blockwatch.reports.timeline import timeline
from blockwatch.storage import open_store
from blockwatch.storage.queries import Filters, bulk_insert

U = dt.UTC
JUL2 = dt.datetime(2014, 7, 2, tzinfo=U)
SEP28 = dt.datetime(2014, 9, 28, tzinfo=U)
HOUR = dt.timedelta(hours=1)
SERVICES = ("kakaotalk", "line", "instagram", "facebook", "whatsapp")

SCENARIO = synthetic.Scenario(
    vantages=[("cn-home", "CN"), ("kr-office", "KR")], services=SERVICES,
    start=dt.datetime(2014, 5, 1, tzinfo=U), end=dt.datetime(2014, 11, 1, tzinfo=U),
    blocking=[synthetic.Blocking(service="kakaotalk", vantage="cn-home", start=JUL2),
              synthetic.Blocking(service="line", vantage="cn-home", start=JUL2),
              synthetic.Blocking(service="instagram", vantage="cn-home", start=SEP28,
                                 layer="tls"),
              synthetic.Blocking(service="facebook", vantage="cn-home",
                                 start=dt.datetime(2009, 7, 1, tzinfo=U))],
    outages=[("cn-home", dt.datetime(2014, 6, 10, tzinfo=U), dt.datetime(2014, 6, 11, tzinfo=U),
              "network_unavailable"),
             ("cn-home", dt.datetime(2014, 8, 5, tzinfo=U), dt.datetime(2014, 8, 6, tzinfo=U),
              "down"),
             ("kr-office", dt.datetime(2014, 8, 10, tzinfo=U),
              dt.datetime(2014, 8, 11, tzinfo=U), "down"),
             ("cn-home", dt.datetime(2014, 8, 20, tzinfo=U), dt.datetime(2014, 8, 23, tzinfo=U),
              None)],
    measurements_every=24)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("history") / "history.db"
    with open_store(str(path)) as store:
        runs, ms, vs = synthetic.write(store, SCENARIO)
    assert runs > 8600 and ms > 0 and vs > runs * len(SERVICES)
    return str(path)


@pytest.fixture(scope="module")
def results(db: str) -> dict[tuple[str, str], object]:
    with open_store(db) as store:
        return {(r.service, r.vantage): r for r in change_points(store)}


def test_onsets_found_within_one_sweep(results: dict) -> None:
    for service, truth in (("kakaotalk", JUL2), ("line", JUL2), ("instagram", SEP28)):
        r = results[(service, "cn-home")]
        assert [c.kind for c in r.changes] == ["onset"], service
        c = r.changes[0]
        # the change happened after last_before and no later than first_after
        assert abs(c.first_after - truth) <= HOUR, (service, c)
        assert truth - 2 * HOUR <= c.last_before < truth, (service, c)
        assert c.confidence >= 0.8


def test_no_change_for_uncensored_vantage_or_steady_services(results: dict) -> None:
    for service in SERVICES:
        assert results[(service, "kr-office")].changes == (), service
        assert results[(service, "kr-office")].initial == "ok"
    assert results[("whatsapp", "cn-home")].changes == ()
    fb = results[("facebook", "cn-home")]
    assert fb.changes == () and fb.initial == "blocked"
    assert len(fb.episodes) == 1 and fb.episodes[0].onset is None


def test_comparison_labels(db: str) -> None:
    with open_store(db) as store:
        found = comparison(store, load_events())
    labels = {(c.event.id, c.vantage): c for c in found}
    assert all(c.vantage == "cn-home" for c in found)  # only the CN vantage matches CN events
    assert labels[("cn-2014-kakaotalk", "cn-home")].label == AGREES
    assert labels[("cn-2014-line", "cn-home")].label == AGREES
    assert labels[("cn-2014-instagram", "cn-home")].label == AGREES
    # blocked from our first sweep in 2014: the 2009 onset cannot be seen
    assert labels[("cn-2009-facebook", "cn-home")].label == NOT_COVERED
    assert labels[("cn-2014-didi", "cn-home")].label == NO_DATA  # never measured
    assert not any(c.event.event in ("rule", "statement") for c in found)


def test_comparison_not_observed_and_later(db: str) -> None:
    own = parse_events(
        "id,service,country,event,date,precision,source,confidence\n"
        "a,whatsapp,CN,blocked,2014-08,month,test,low\n"
        "b,instagram,CN,blocked,2014-08-15,day,test,low\n"
        "c,kakaotalk,KR,blocked,2014-07-01,day,test,low\n"
        "d,facebook,CN,blocked,2022-09-22,day,test,low\n"
        "e,kakaotalk,CN,blocked,2014-08,month,test,low\n", "own.csv")
    with open_store(db) as store:
        found = {c.event.id: c for c in comparison(store, own)}
    assert found["a"].label == NOT_OBSERVED
    assert found["b"].label == LATER and found["b"].diff_days == pytest.approx(44, abs=0.1)
    assert found["c"].vantage == "kr-office" and found["c"].label == NOT_OBSERVED
    # blocked throughout our sweeps, which end years before this report: nothing to compare
    # a later, month-precision report of the block seen on 1 July: seen a month earlier
    assert found["e"].label == BEFORE and found["e"].diff_days is not None
    assert -31 < found["e"].diff_days < -29
    assert found["d"].label == NOT_COVERED and found["d"].diff_days is None
    assert "sweeps end (2014-" in found["d"].note


def test_timeline_counts_gaps_as_gaps(db: str) -> None:
    with open_store(db) as store:
        tl = timeline(store, "day", Filters(services=["kakaotalk"], vantages=["cn-home"]))
    (series,) = tl.series
    cells = {c.start.date(): c for c in series.cells}
    for day in (21, 22):
        assert cells[dt.date(2014, 8, day)].state == "gap"
        assert cells[dt.date(2014, 8, day)].runs == 0
    assert cells[dt.date(2014, 6, 10)].state == "no evidence"  # network down all day
    assert cells[dt.date(2014, 8, 5)].state == "no evidence"  # outage: down, not ok
    assert cells[dt.date(2014, 6, 1)].state == "ok"
    assert cells[dt.date(2014, 7, 3)].state == "blocked"
    assert cells[dt.date(2014, 7, 3)].runs == 24


def test_latest_service_verdict_wins(tmp_path: Path) -> None:
    scenario = synthetic.Scenario(vantages=[("v", "CN")], services=["line"],
                                  start=dt.datetime(2014, 7, 1, tzinfo=U),
                                  end=dt.datetime(2014, 7, 2, tzinfo=U), flaky=0)
    with open_store(str(tmp_path / "r.db")) as store:
        synthetic.write(store, scenario)
        run_id = store.runs(limit=1)[0].id
        bulk_insert(store, "verdicts", [{
            "run_id": run_id, "measurement_id": None, "service": "line", "verdict": "blocked",
            "layer": "dns", "rule_id": "reanalysis", "analyzer_version": "2", "evidence": "",
            "details": {}, "created_at": dt.datetime(2014, 8, 1, tzinfo=U)}])
        tl = timeline(store, "day")
    (cell,) = tl.series[0].cells
    assert cell.counts["ok"] == 23 and cell.counts["blocked"] == 1


def test_detect_rules() -> None:
    t0 = dt.datetime(2020, 1, 1, tzinfo=U)

    def series(states: str) -> list[Sweep]:
        names = {"o": "ok", "b": "blocked", "p": "partial", "d": "down", "i": "inconclusive"}
        return [Sweep(t0 + i * HOUR, names[s]) for i, s in enumerate(states)]

    assert detect("s", "v", series("oooooboooooobbbboooo")).changes == ()  # runs shorter than k
    r = detect("s", "v", series("ooooooddddddddbbbbbb"))  # outage straddles the change
    (c,) = r.changes
    assert c.last_before == t0 + 5 * HOUR and c.first_after == t0 + 14 * HOUR
    r = detect("s", "v", series("bbbbbbbooooooopppppp"))
    assert [c.kind for c in r.changes] == ["end", "onset"]
    assert r.initial == "blocked" and len(r.episodes) == 2
    assert detect("s", "v", series("ddddiiii")).initial is None
    with pytest.raises(ValueError):
        detect("s", "v", [], min_sweeps=0)


BAD_FILES = {
    "": "empty file",
    "id,service\n": "missing column(s) country",
    "id,service,country,event,date,precision,source,confidence,colour\n": "unknown column",
    ("id,service,country,event,date,precision,source,confidence\n"
     "x,line,China,blocked,2014-07-01,day,s,high\n"): "own.csv:2: country",
    ("id,service,country,event,date,precision,source,confidence\n"
     "x,line,CN,blocked,2014-07,day,s,high\n"): "precision day needs YYYY-MM-DD",
    ("id,service,country,event,date,precision,source,confidence\n"
     "x,line,CN,banned,2014-07-01,day,s,sure\n"): "event: 'banned' is not one of",
    ("id,service,country,event,date,precision,source,confidence\n"
     "x,line,CN,blocked,2014-07-01,day,,high\n"): "own.csv:2: source: required",
    ("id,service,country,event,date,precision,source,confidence\n"
     "x,line,CN,blocked,2014-07-01,day,s\n"): "7 fields, expected 8",
    ("id,service,country,event,date,precision,source,confidence,end_date\n"
     "x,line,CN,blocked,2014-07-01,day,s,high,2014-06-01\n"): "is before date",
    ("id,service,country,event,date,precision,source,confidence\n"
     'x,line,CN,blocked,"2014-07-01,day,s,high\n'): "own.csv",
}


@pytest.mark.parametrize("text,message", BAD_FILES.items())
def test_bad_event_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "own.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(EventsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_events([path], builtin=False)


def test_bad_event_file_on_the_command_line(tmp_path: Path, db: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "own.csv"
    path.write_bytes(b"\xff\xfe garbage")
    assert main(["report", "compare", "--db", db, "--events", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8" in err and "Traceback" not in err
    assert main(["report", "events", "--events", str(tmp_path / "missing.csv")]) == 2
    assert "cannot read" in capsys.readouterr().err
    dup = tmp_path / "dup.csv"
    dup.write_text("id,service,country,event,date,precision,source,confidence\n"
                   "cn-2014-line,line,CN,blocked,2014-07-01,day,s,high\n", encoding="utf-8")
    assert main(["report", "events", "--events", str(dup)]) == 2
    assert "already used" in capsys.readouterr().err


def test_builtin_events_cover_the_field_notes() -> None:
    events = load_events()
    ids = {e.id for e in events}
    assert {"cn-2009-facebook", "cn-2014-kakaotalk", "cn-2014-line", "cn-2014-instagram",
            "cn-2014-im-real-names", "cn-2017-greenvpn", "cn-2017-personal-vpn",
            "cn-2017-chongqing-channels", "cn-2022-google-sni",
            "cn-2022-google-dns", "cn-2014-didi"} <= ids
    assert all(e.source and (e.source_date or e.reference) for e in events)
    green = next(e for e in events if e.id == "cn-2017-greenvpn")
    assert green.end_date == dt.date(2017, 7, 1)


def test_html_report_has_every_service(db: str, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    own = tmp_path / "own.csv"  # a later report of the July block: observed before it
    own.write_text("id,service,country,event,date,precision,source,confidence\n"
                   "later,kakaotalk,CN,blocked,2014-08,month,test,low\n", "utf-8")
    assert main(["report", "html", "--db", db, "-o", str(out), "--events", str(own)]) == 0
    page = out.read_text("utf-8")
    for service in SERVICES:
        assert f"<h2>{service}</h2>" in page
    assert page.count("<svg") == len(SERVICES)
    assert "agrees" in page and "observed before report" in page
    # nothing to fetch (only in-page references such as clip-path="url(#p1)") or run
    assert not re.search(r"(src|href)=[\"']?(https?:|//)|url\(['\"]?(https?:|//)", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page


def test_html_escapes_event_text(db: str) -> None:
    own = parse_events("id,service,country,event,date,precision,source,confidence\n"
                       "x,line,CN,blocked,2014-07-01,day,<script>alert(1)</script>,high\n",
                       "own.csv")
    with open_store(db) as store:
        page = report_html(store, own, Filters(services=["line"]))
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_cli_outputs(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "changes", "--db", db, "-f", "json"]) == 0
    changes = json.loads(capsys.readouterr().out)
    onsets = {(c["service"], c["vantage"]) for c in changes if c["change"] == "onset"}
    assert onsets == {("kakaotalk", "cn-home"), ("line", "cn-home"), ("instagram", "cn-home")}
    assert main(["report", "compare", "--db", db, "-f", "csv", "-s", "instagram"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("event_id,service,country")
    assert any(line.startswith("cn-2014-instagram,") and ",agrees," in line for line in lines)
    assert main(["report", "timeline", "--db", db, "-s", "line", "--vantage", "cn-home",
                 "--since", "2014-08-19", "--until", "2014-08-25"]) == 0
    out = capsys.readouterr().out
    assert "gap (no runs)" in out and "2014-08-20 .. 2014-08-22" in out
    assert main(["report", "events", "-f", "csv", "--service", "instagram"]) == 0
    assert "cn-2014-instagram" in capsys.readouterr().out


def test_python_api(db: str) -> None:
    data = load(db, since="2014-07-01", until="2014-07-03", services=["line"],
                as_frames=False)
    assert data.verdicts and all(v["service"] == "line" for v in data.verdicts)
    assert {v["vantage"] for v in data.verdicts} == {"cn-home", "kr-office"}
    assert len(data.verdicts) == 2 * 48
    assert data.measurements and all(m["service"] == "line" for m in data.measurements)
    # instants are datetimes in UTC in both tables
    for row in (data.measurements[0], data.verdicts[0]):
        assert isinstance(row["started_at"], dt.datetime), row["started_at"]
        assert row["started_at"].utcoffset() == dt.timedelta(0)
    pandas = pytest.importorskip("pandas")
    frames = load(db, since="2014-07-01", until="2014-07-03", services=["line"])
    assert isinstance(frames.verdicts, pandas.DataFrame)
    assert len(frames.verdicts) == 96
    for frame in (frames.measurements, frames.verdicts):
        assert pandas.api.types.is_datetime64_any_dtype(frame["started_at"])


def test_an_empty_change_point_table_says_why(db: str, capsys: pytest.CaptureFixture[str]
                                              ) -> None:
    assert main(["report", "changes", "--db", db, "-s", "line", "--vantage", "kr-office"]) == 0
    err = capsys.readouterr().err
    assert "no change point: a state is established by 5 consecutive agreeing sweeps" in err
    assert main(["report", "changes", "--db", db, "-s", "no-such-service"]) == 0
    assert "no change point: no run matches the selection" in capsys.readouterr().err
    assert main(["report", "changes", "--db", db, "-s", "line", "--vantage", "kr-office",
                 "-f", "csv"]) == 0
    assert capsys.readouterr().err == ""  # data formats carry no prose
