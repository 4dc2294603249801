"""Fingerprints: OONI's format loads as is, mistakes are named, false positives come first."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from blockwatch.analysis import fingerprints as fpr
from blockwatch.analysis.fingerprints import (
    FingerprintError,
    FingerprintSet,
    load,
    load_file,
    parse_entry,
)

# OONI's own fingerprint files (BSD-3, tests/data/ooni/LICENSE)
SHARED = Path(__file__).resolve().parent / "data" / "ooni" / "fingerprints"


def entry(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"name": "t.x", "location_found": "body", "pattern": "blocked",
                               "pattern_type": "contains", "scope": "nat"}
    base.update(kw)
    return base


def write(tmp_path: Path, data: object, name: str = "f.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(data), encoding="utf-8")
    return p


def test_builtin_set_loads_and_names_are_unique() -> None:
    fps = fpr.builtin()
    assert len(fps) >= 10
    assert len({f.name for f in fps}) == len(fps)
    assert all(f.source for f in fps), "every shipped fingerprint says where its fact comes from"
    s = load()
    assert s.match_dns("8.7.198.45") is not None
    assert s.match_dns("2001:0:53aa:64c::1") is not None  # Teredo
    assert s.match_dns("2001:db8::1") is None
    assert s.match_dns("157.240.1.35") is None


def test_oonis_own_files_load_and_match_fast() -> None:
    t0 = time.perf_counter()
    s = load(sorted(SHARED.glob("*.json")))
    load_s = time.perf_counter() - t0
    assert len(s) == len(fpr.builtin()) + 150 + 1699
    assert s.match_dns("37.61.54.158") is not None  # an OONI-only Chinese poison IP
    body = "<html>" + "x" * 8000 + "</html>"
    t0 = time.perf_counter()
    for _ in range(20):
        assert s.match_http(body, [("Server", "nginx")]) == []
    per_body = (time.perf_counter() - t0) / 20
    assert load_s < 2.0 and per_body < 0.05, (load_s, per_body)


def test_pattern_types() -> None:
    s = FingerprintSet([
        parse_entry(entry(name="full", pattern="exact", pattern_type="full"), "t"),
        parse_entry(entry(name="prefix", location_found="header.Location",
                          pattern="http://block.", pattern_type="prefix"), "t"),
        parse_entry(entry(name="re", pattern=r"<title>Bl.cked</title>",
                          pattern_type="regexp"), "t"),
    ])
    assert [m.fingerprint.name for m in s.match_http("exact")] == ["full"]
    assert s.match_http("exactly") == []
    got = s.match_http("", [("location", "http://block.example/")])
    assert [(m.fingerprint.name, m.where) for m in got] == [("prefix", "header.location")]
    assert [m.fingerprint.name for m in s.match_http("a <title>Blocked</title>")] == ["re"]


def test_false_positives_are_returned_first() -> None:
    s = FingerprintSet([
        parse_entry(entry(name="block", pattern="Access"), "t"),
        parse_entry(entry(name="cdn", pattern="cdn-cgi", scope="fp"), "t"),
    ])
    got = s.match_http("Access ... /cdn-cgi/ ...")
    assert [m.fingerprint.name for m in got] == ["cdn", "block"]
    assert got[0].fingerprint.false_positive and not got[1].fingerprint.false_positive


def test_builtin_cloudflare_challenge_is_a_false_positive() -> None:
    got = load().match_http('<script src="/cdn-cgi/challenge-platform/h/b/orchestrate"></script>')
    assert got and got[0].fingerprint.false_positive


@pytest.mark.parametrize(("data", "message"), [
    ({"name": "x"}, "must be a JSON list"),
    (["nope"], "entry 0: must be an object"),
    ([entry(pattern_type="glob")], "entry 0 (t.x): pattern_type 'glob' must be one of"),
    ([entry(location_found="cookie")], "location_found 'cookie' must be dns, body"),
    ([entry(pattern="(", pattern_type="regexp")], "pattern is not a valid regexp"),
    ([entry(), {"name": "y", "pattern": "p"}], "entry 1 (y): missing location_found"),
    ([entry(pattern="")], "pattern must be a non-empty string"),
    ([entry(confidence_no_fp="high")], "confidence_no_fp must be an integer"),
])
def test_bad_entries_are_named(tmp_path: Path, data: object, message: str) -> None:
    with pytest.raises(FingerprintError) as err:
        load_file(write(tmp_path, data))
    assert message in str(err.value)
    assert str(tmp_path / "f.json") in str(err.value)


def test_bad_files_are_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('[{"name": "a",\n', encoding="utf-8")
    with pytest.raises(FingerprintError, match=r"broken.json:2:1: not valid JSON"):
        load_file(broken)
    with pytest.raises(FingerprintError, match="no such fingerprint file"):
        load_file(tmp_path / "missing.json")
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(FingerprintError, match="not UTF-8"):
        load_file(binary)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FingerprintError, match="holds no"):
        load([empty])


def test_huge_file_is_refused_before_reading(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fpr, "MAX_FILE_BYTES", 100)
    with pytest.raises(FingerprintError, match="too large"):
        load_file(write(tmp_path, [entry(pattern="x" * 200)]))


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    a = write(tmp_path, [entry()], "a.json")
    b = write(tmp_path, [entry()], "b.json")
    with pytest.raises(FingerprintError, match=r"'t\.x' is defined twice"):
        load([a, b], include_builtin=False)
    assert len(load([tmp_path / "a.json"], include_builtin=False)) == 1
