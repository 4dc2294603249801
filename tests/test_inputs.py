"""Test lists users bring (blockwatch/inputs.py): the three formats, and every kind of bad input
ending in an InputError or a skipped line, never a traceback, a hang or unbounded memory."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import threading
import time
import tracemalloc
from collections.abc import Mapping
from pathlib import Path

import pytest

from blockwatch.inputs import (
    MAX_LINE,
    InputError,
    InputList,
    InputURL,
    load_inputs,
    services_from_inputs,
)

DATA = Path(__file__).parent / "data" / "inputs"
HEADER = "url,category_code,category_description,date_added,source,notes"


def write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8", newline="")
    else:
        path.write_bytes(data)
    return path


def descriptor(*nettests: Mapping[str, object], **top: object) -> str:
    return json.dumps({"name": "test", **top, "nettests": list(nettests)})


def error(path: Path, fmt: str = "auto", **kw: int) -> str:
    with pytest.raises(InputError) as info:
        load_inputs(path, fmt, **kw)
    return str(info.value)


def reasons(result: InputList) -> dict[str, str]:
    return dict(result.skipped)


# --- plain lists ------------------------------------------------------------------------------


def test_plain_list_ignores_blanks_and_comments_and_strips(tmp_path: Path) -> None:
    path = write(tmp_path, "list.txt", "# my list\n\n   \n  http://example.com/a  \n"
                 "\t# indented comment\nhttps://example.org/\n")
    result = load_inputs(path)
    assert result.format == "plain"
    assert result.path == str(path)
    assert result.urls == (
        InputURL(url="http://example.com/a", category=None, where=f"{path}:4"),
        InputURL(url="https://example.org/", category=None, where=f"{path}:6"),
    )
    assert result.skipped == ()
    assert result.duplicates == 0


@pytest.mark.parametrize(("given", "normalised"), [
    ("HTTP://EXAMPLE.COM/Path?Q=A", "http://example.com/Path?Q=A"),
    ("http://example.com:80/", "http://example.com/"),
    ("https://example.com:443/x", "https://example.com/x"),
    ("https://example.com:80/", "https://example.com:80/"),
    ("http://example.com:8080/", "http://example.com:8080/"),
    ("http://example.com/a#section", "http://example.com/a"),
    ("http://example.com/a?b=c#d", "http://example.com/a?b=c"),
    ("http://example.com", "http://example.com"),
    ("https://bücher.de/Straße", "https://xn--bcher-kva.de/Straße"),
    ("https://\u041c\u041e\u0421\u041a\u0412\u0410.\u0440\u0444/",  # Moscow, in Cyrillic capitals
     "https://xn--80adxhks.xn--p1ai/"),
    ("http://192.0.2.1/", "http://192.0.2.1/"),
    ("http://[2001:DB8:0::1]:8080/", "http://[2001:db8::1]:8080/"),
    ("http://under_score.example.com./", "http://under_score.example.com./"),
    ("http://example.com/%7Euser/a%20b", "http://example.com/%7Euser/a%20b"),
])
def test_urls_are_normalised(tmp_path: Path, given: str, normalised: str) -> None:
    result = load_inputs(write(tmp_path, "list.txt", given + "\n"))
    assert [u.url for u in result.urls] == [normalised]


@pytest.mark.parametrize(("line", "reason"), [
    ("example.com", "no http:// or https://"),
    ("www.example.com/path", "no http:// or https://"),
    ("ftp://example.com/", "scheme 'ftp' is not http(s)"),
    ("javascript://alert(1)", "scheme 'javascript' is not http(s)"),
    ("http:///path", "no host in URL"),
    ("http://:80/", "no host in URL"),
    ("http://exa mple.com/", "space in URL"),
    ("http://exa<mple.com/", "invalid host name"),
    ("http://exa%6Dple.com/", "invalid host name"),
    ("http://a..b.com/", "invalid host name"),
    ("http://" + "a" * 64 + ".com/", "invalid host name"),
    ("http://1.2.3.999/", "invalid IPv4 address"),
    ("http://[::1/", "not a valid URL"),
    ("http://[v1.fe]/", "invalid IPv6 address"),
    ("http://example.com:99999/", "invalid port"),
    ("http://example.com:0/", "invalid port"),
    ("http://example.com:http/", "invalid port"),
    ("http://user:secret@example.com/", "user name or password"),
    ("http://example.com/" + "a" * 2048, "URL longer than 2048 characters"),
    ("http://example.com/\x1b[31mred", "control or invisible character"),
    ("http://example.com/\u202egnp.exe", "control or invisible character"),
    ("http://example.com/\x7f", "control or invisible character"),
])
def test_bad_lines_are_skipped_with_a_reason(tmp_path: Path, line: str, reason: str) -> None:
    path = write(tmp_path, "list.txt", f"http://ok.example/\n{line}\n")
    result = load_inputs(path)
    assert [u.url for u in result.urls] == ["http://ok.example/"]
    assert list(reasons(result)) == [f"{path}:2"]
    assert reason in reasons(result)[f"{path}:2"]


def test_reasons_show_content_as_short_reprs(tmp_path: Path) -> None:
    evil = "http://example.com/\x1b]0;pwned\x07\x1b[2J" + "x" * 500
    result = load_inputs(write(tmp_path, "list.txt", f"{evil}\nhttp://ok.example/\n"))
    (_, reason), = result.skipped
    assert "\x1b" not in reason and "\x07" not in reason
    assert "\\x1b" in reason
    assert len(reason) < 150


def test_a_file_with_no_url_is_an_error(tmp_path: Path) -> None:
    text = "Dear diary,\nToday I went to the market.\nftp://old.example/\n"
    path = write(tmp_path, "notes.txt", text)
    message = error(path)
    assert message.startswith(f"{path}: no URL found")
    assert message == (f"{path}: no URL found (3 lines or entries skipped; the first, "
                       f"{path}:1: no http:// or https://: 'Dear diary,')")


@pytest.mark.parametrize("text", ["", "\n\n   \n", "# only a comment\n", "\ufeff"])
def test_an_empty_file_is_an_error(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "empty.txt", text)
    assert error(path) == f"{path}: no URL found (0 lines or entries skipped)"


def test_duplicates_after_normalisation_are_counted(tmp_path: Path) -> None:
    text = ("http://example.com/\nHTTP://Example.COM:80/\nhttp://example.com/#top\n"
            "https://example.com/\nhttp://example.com/\n")
    result = load_inputs(write(tmp_path, "list.txt", text))
    assert [u.url for u in result.urls] == ["http://example.com/", "https://example.com/"]
    assert [u.where.rsplit(":", 1)[1] for u in result.urls] == ["1", "4"]
    assert result.duplicates == 3


def test_bom_and_crlf(tmp_path: Path) -> None:
    text = "\ufeffhttp://example.com/\r\n# comment\r\n\r\nhttp://example.org/x?y\r\n"
    result = load_inputs(write(tmp_path, "list.txt", text))
    assert result.format == "plain"
    assert [u.url for u in result.urls] == ["http://example.com/", "http://example.org/x?y"]
    assert result.skipped == ()


# --- size, binary and line limits -------------------------------------------------------------


def test_a_huge_file_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.txt"
    with path.open("wb") as fh:  # sparse: costs no disk
        fh.truncate(100 * 1024 * 1024)
    tracemalloc.start()
    try:
        message = error(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert message == (f"{path}: 104857600 bytes, more than the limit of 33554432 bytes")
    assert peak < 1024 * 1024


def test_a_stream_over_max_bytes_is_refused_while_reading(tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def writer() -> None:
        try:
            with fifo.open("wb") as fh:
                for _ in range(10_000):
                    fh.write(b"http://example.com/\n")
        except BrokenPipeError:
            pass

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        message = error(fifo, max_bytes=50_000)
    finally:
        thread.join(timeout=10)
    assert message.startswith(f"{fifo}: more than 50000 bytes")


def test_a_device_never_hangs(tmp_path: Path) -> None:
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    started = time.monotonic()
    assert "NUL byte" in error(Path("/dev/zero"))
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("fmt", ["auto", "plain", "csv"])
def test_nul_bytes_are_binary(tmp_path: Path, fmt: str) -> None:
    path = write(tmp_path, "junk.bin", b"url\nhttp://example.com/\nabc\x00def\n")
    assert error(path, fmt) == f"{path}:3: NUL byte: binary data, not a text list"


def test_bytes_that_are_not_utf8_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "latin1.txt", "http://example.com/\nhttp://caf\xe9.example/\n"
                 .encode("latin-1"))
    assert error(path) == f"{path}:2: not UTF-8 text (byte 0xe9)"


def test_random_binary_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "random.bin", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    message = error(path)
    assert message.startswith(f"{path}:1: not UTF-8 text")


def test_a_truncated_utf8_sequence_at_the_end_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "cut.txt", b"http://example.com/\nhttp://b\xc3")
    assert error(path) == f"{path}:2: not UTF-8 text (byte 0xc3)"


def test_long_lines_are_skipped_not_kept(tmp_path: Path) -> None:
    long_line = b"http://example.com/" + b"a" * (4 * MAX_LINE)
    path = write(tmp_path, "long.txt", b"http://a.example/\n" + long_line + b"\nhttp://b.example/\n")
    result = load_inputs(path)
    assert [u.url for u in result.urls] == ["http://a.example/", "http://b.example/"]
    assert result.skipped == ((f"{path}:2", f"line longer than {MAX_LINE} bytes"),)


def test_binary_hidden_in_a_long_line_is_still_found(tmp_path: Path) -> None:
    data = b"http://a.example/\n" + b"a" * (3 * MAX_LINE) + b"\xff\n"
    path = write(tmp_path, "long.bin", data)
    assert error(path) == f"{path}:2: not UTF-8 text (byte 0xff)"


def test_a_long_line_without_newline_at_the_end(tmp_path: Path) -> None:
    path = write(tmp_path, "long.txt", b"http://a.example/\n" + "é".encode() * MAX_LINE)
    result = load_inputs(path)
    assert len(result.urls) == 1
    assert result.skipped == ((f"{path}:2", f"line longer than {MAX_LINE} bytes"),)


def test_more_than_max_urls_is_an_error(tmp_path: Path) -> None:
    text = "".join(f"http://host{i}.example/\n" for i in range(11))
    path = write(tmp_path, "list.txt", text)
    assert error(path, max_urls=10) == f"{path}:11: more than the limit of 10 URLs"
    assert len(load_inputs(path, max_urls=11).urls) == 11


def test_duplicates_do_not_count_against_max_urls(tmp_path: Path) -> None:
    path = write(tmp_path, "list.txt", "http://example.com/\n" * 50)
    result = load_inputs(path, max_urls=1)
    assert len(result.urls) == 1 and result.duplicates == 49


def test_skipped_lines_are_listed_up_to_a_bound(tmp_path: Path) -> None:
    text = "x\n" * 5000 + "http://example.com/\n"
    result = load_inputs(write(tmp_path, "list.txt", text))
    assert len(result.urls) == 1
    assert len(result.skipped) == 1001
    assert result.skipped[-1][1] == "4000 more skipped, not listed"


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert error(tmp_path / "nope.txt") == f"{tmp_path / 'nope.txt'}: cannot read: " \
        "No such file or directory"
    assert error(tmp_path) == f"{tmp_path}: cannot read: Is a directory"


def test_an_unprintable_file_name_is_shown_as_repr(tmp_path: Path) -> None:
    path = write(tmp_path, "evil\x1b[2J.txt", "nothing here\n")
    message = error(path)
    assert "\x1b" not in message and "\\x1b[2J" in message


def test_unknown_format_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "list.txt", "http://example.com/\n")
    assert error(path, "xml").startswith("unknown input format 'xml'")


# --- Citizen Lab CSV --------------------------------------------------------------------------


def test_citizen_lab_csv_with_categories_and_multiline_fields() -> None:
    path = DATA / "citizenlab-sample.csv"
    result = load_inputs(path)
    assert result.format == "csv"
    assert result.urls == (
        InputURL(url="http://www.example.com/", category="NEWS", where=f"{path}:2"),
        InputURL(url="https://example.org/path?q=1", category="HUMR", where=f"{path}:3"),
        InputURL(url="http://example.net/", category="POLR", where=f"{path}:4"),
        InputURL(url="https://example.com/", category="NEWS", where=f"{path}:6"),
    )
    assert result.duplicates == 0 and result.skipped == ()


def test_csv_columns_in_any_order_extra_columns_and_no_category(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", "notes,URL,extra,category_code\nhi,http://a.example/,x,"
                 "GRP\n,http://b.example/,,\n")
    result = load_inputs(path)
    assert [(u.url, u.category) for u in result.urls] == [("http://a.example/", "GRP"),
                                                          ("http://b.example/", None)]
    only_url = load_inputs(write(tmp_path, "b.csv", "url\nhttp://c.example/\n"))
    assert only_url.format == "csv"
    assert [(u.url, u.category) for u in only_url.urls] == [("http://c.example/", None)]


def test_csv_without_url_column_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.csv", "address,category_code\nhttp://a.example/,NEWS\n")
    message = error(path, "csv")
    assert message.startswith(f"{path}:1: no 'url' column: found ['address', 'category_code']")
    assert "expected url and optionally category_code" in message


def test_csv_rows_with_wrong_field_counts_and_bad_cells_are_skipped(tmp_path: Path) -> None:
    rows = [HEADER, "http://a.example/,NEWS,News,2020-01-01,,", "http://b.example/,NEWS",
            "http://c.example/,NEWS,News,2020-01-01,,,extra", "example.com,NEWS,News,,,",
            ",NEWS,News,,,", ",,,,,", "", "http://d.example/,\x1b[31m,x,,,",
            "http://e.example/,NEWS,News,,,"]
    path = write(tmp_path, "t.csv", "\n".join(rows) + "\n")
    result = load_inputs(path)
    assert [u.url for u in result.urls] == ["http://a.example/", "http://e.example/"]
    skipped = reasons(result)
    assert skipped == {
        f"{path}:3": "2 fields, the header has 6",
        f"{path}:4": "7 fields, the header has 6",
        f"{path}:5": "no http:// or https://: 'example.com'",
        f"{path}:6": "empty URL",
        f"{path}:9": "category_code is not a short printable code: '\\x1b[31m'",
    }


def test_csv_with_crlf_and_bom(tmp_path: Path) -> None:
    text = "\ufeff" + HEADER + "\r\nhttp://a.example/,NEWS,News,,,\"two\r\nlines\"\r\n" \
        "http://b.example/,HUMR,Human rights,,,\r\n"
    path = write(tmp_path, "crlf.csv", text)
    result = load_inputs(path)
    assert result.format == "csv"
    assert [(u.url, u.category, u.where) for u in result.urls] == [
        ("http://a.example/", "NEWS", f"{path}:2"), ("http://b.example/", "HUMR", f"{path}:4")]


def test_csv_with_an_unterminated_quote_is_a_bounded_error(tmp_path: Path) -> None:
    text = HEADER + '\nhttp://a.example/,NEWS,"News,,,\n' + "http://b.example/,x,y,,,\n" * 20_000
    path = write(tmp_path, "quote.csv", text)
    assert "not a valid CSV file: field larger than field limit" in error(path)


def test_csv_long_line_is_skipped(tmp_path: Path) -> None:
    text = HEADER + "\nhttp://a.example/" + "a" * (2 * MAX_LINE) + ",NEWS,,,,\n" \
        "http://b.example/,NEWS,,,,\n"
    path = write(tmp_path, "long.csv", text)
    result = load_inputs(path)
    assert [u.where for u in result.urls] == [f"{path}:3"]
    assert result.skipped == ((f"{path}:2", f"line longer than {MAX_LINE} bytes"),)


def test_a_csv_with_no_url_rows_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "empty.csv", HEADER + "\n")
    assert error(path) == f"{path}: no URL found (0 lines or entries skipped)"


def test_format_override(tmp_path: Path) -> None:
    path = write(tmp_path, "list.csv", "url\nhttp://a.example/\n")
    assert load_inputs(path).format == "csv"
    forced = load_inputs(path, "plain")
    assert forced.format == "plain"
    assert [u.url for u in forced.urls] == ["http://a.example/"]
    assert forced.skipped == ((f"{path}:1", "no http:// or https://: 'url'"),)
    # a plain list whose first line holds "url" and a URL is not taken for a CSV header
    assert load_inputs(write(tmp_path, "p.txt", "http://x.example/,url\n")).format == "plain"


# --- OONI Run v2 ------------------------------------------------------------------------------


def test_ooni_run_descriptor() -> None:
    path = DATA / "run-v2.json"
    result = load_inputs(path)
    assert result.format == "ooni-run"
    assert result.urls == (
        InputURL(url="https://example.com/", category="HUMR",  # from inputs_extra
                 where=f"{path}:nettests[0].inputs[0]"),
        InputURL(url="https://example.org/", category=None,
                 where=f"{path}:nettests[0].inputs[1]"),
    )
    assert reasons(result) == {
        f"{path}:nettests[0].inputs[2]": "no http:// or https://: 'not a url'",
        f"{path}:nettests[1]": "test_name 'openvpn' is not web_connectivity",
        f"{path}:nettests[2]": "test_name 'whatsapp' is not web_connectivity",
        f"{path}:nettests[3]": "web_connectivity with targets_name "
                               "'websites_list_prioritized': a list only the OONI backend computes",
    }


def test_ooni_run_detection_is_by_content(tmp_path: Path) -> None:
    text = "\ufeff\n  \r\n" + descriptor({"test_name": "web_connectivity",
                                          "inputs": ["http://a.example/"]})
    result = load_inputs(write(tmp_path, "run.txt", text.replace("\n", "\r\n")))
    assert result.format == "ooni-run"
    assert [u.url for u in result.urls] == ["http://a.example/"]


def test_ooni_run_api_views_load(tmp_path: Path) -> None:
    """The create response and the engine descriptor carry fields the API adds."""
    nettest = {"test_name": "web_connectivity", "inputs": ["http://a.example/"],
               "inputs_extra": [{"category_code": "HUMR"}], "targets_name": None}
    response = descriptor(nettest, oonirun_link_id="10005", is_expired=False,
                          date_created="2024-01-01T00:00:00Z", date_updated="2024-01-02",
                          expiration_date="2025-01-01", revision=1, is_mine=False, color="#000000",
                          description="d", description_intl={}, short_description_intl={},
                          icon=None, title="t", author="a")
    assert len(load_inputs(write(tmp_path, "create.json", response)).urls) == 1
    engine = json.dumps({"revision": "1", "date_created": "", "nettests": [nettest]})
    assert len(load_inputs(write(tmp_path, "engine.json", engine)).urls) == 1


@pytest.mark.parametrize(("top", "nettest", "message"), [
    ({"error": "x"}, {}, "top level: unknown field(s) 'error', not in the OONI Run v2 spec"),
    ({"links": [], "only_latest": True}, {}, "unknown field(s) 'links', 'only_latest'"),
    ({}, {"options": {}}, "nettests[0]: unknown field(s) 'options'"),
    ({}, {"target_name": "x"}, "nettests[0]: unknown field(s) 'target_name'"),
    ({}, {"backend_options": {}, "input": "x"}, "unknown field(s) 'backend_options', 'input'"),
])
def test_ooni_run_unknown_fields_are_errors(tmp_path: Path, top: dict[str, object],
                                             nettest: dict[str, object], message: str) -> None:
    text = descriptor({"test_name": "web_connectivity", "inputs": ["http://a.example/"],
                       **nettest}, **top)
    path = write(tmp_path, "run.json", text)
    assert error(path).startswith(f"{path}: ")
    assert message in error(path)


@pytest.mark.parametrize(("doc", "message"), [
    ({"nettests": [{"test_name": "web_connectivity", "inputs": "http://a.example/"}]},
     "nettests[0].inputs: expected a list, got a string"),
    ({"nettests": [{"test_name": "web_connectivity", "inputs": ["http://a.example/", 3]}]},
     "nettests[0].inputs[1]: expected a string, got a number"),
    ({"nettests": [{"test_name": "web_connectivity", "inputs": [None]}]},
     "nettests[0].inputs[0]: expected a string, got null"),
    ({"nettests": [{"test_name": "x"}, {"test_name": 7}]},
     "nettests[1].test_name: expected a string, got a number"),
    ({"nettests": [{"test_name": "x", "is_manual_run_enabled": "yes"}]},
     "nettests[0].is_manual_run_enabled: expected true or false, got a string"),
    ({"nettests": [{"test_name": "web_connectivity", "inputs_extra": [1]}]},
     "nettests[0].inputs_extra[0]: expected an object, got a number"),
    ({"nettests": {"test_name": "x"}}, "nettests: expected a list, got an object"),
    ({"nettests": ["web_connectivity"]}, "nettests[0]: expected an object, got a string"),
    ({"name": 1, "nettests": []}, "name: expected a string, got a number"),
    ({"name_intl": {"it": 1}, "nettests": []}, "name_intl['it']: expected a string, got a number"),
    ({"name_intl": "x", "nettests": []}, "name_intl: expected an object, got a string"),
    ({"revision": True, "nettests": []}, "revision: expected an integer or a string"),
    ({"name": "x"}, "not an OONI Run descriptor: no 'nettests'"),
    ({"nettests": [{"inputs": ["http://a.example/"]}]}, "nettests[0]: no 'test_name'"),
    ({"nettests": [{"test_name": "web_connectivity", "inputs": ["http://a.example/"],
                    "inputs_extra": [{}, {}]}]},
     "nettests[0].inputs_extra: 2 entries for 1 inputs"),
])
def test_ooni_run_wrong_types_name_the_json_path(tmp_path: Path, doc: dict[str, object],
                                                 message: str) -> None:
    path = write(tmp_path, "run.json", json.dumps(doc))
    assert error(path).startswith(f"{path}: {message}")


@pytest.mark.parametrize(("text", "message"), [
    ('{"name": "x",\n  "nettests": [,]}', ":2:16: not valid JSON: Expecting value"),
    ('{"nettests": [{"test_name": "web_connectivity",}]}', ":1:48: not valid JSON"),
    ('{"nettests": ' + "[" * 100_000, ": not valid JSON here: nested too deeply"),
    ('{"revision": ' + "9" * 5000 + ', "nettests": []}', ": not valid JSON here: nested too"),
    ('{"nettests": []} trailing', ":1:18: not valid JSON: Extra data"),
], ids=["comma", "trailing-comma", "deep", "long-number", "extra-data"])
def test_ooni_run_json_that_does_not_parse(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "run.json", text)
    assert error(path).startswith(f"{path}{message}")


def test_ooni_run_forced_on_other_json(tmp_path: Path) -> None:
    path = write(tmp_path, "list.json", '["http://a.example/"]')
    assert error(path, "ooni-run") == (f"{path}: not an OONI Run descriptor: a list, "
                                       "not an object")


def test_ooni_run_binary_and_empty(tmp_path: Path) -> None:
    path = write(tmp_path, "run.json", b'{"nettests":\n [\n"\xff"]}')
    assert error(path) == f"{path}:3: not UTF-8 text (byte 0xff)"
    path = write(tmp_path, "nul.json", b'{"nettests":\n\x00}')
    assert error(path) == f"{path}:2: NUL byte: binary data, not a text list"
    path = write(tmp_path, "none.json", descriptor({"test_name": "whatsapp"},
                                                    {"test_name": "web_connectivity"}))
    message = error(path)
    assert message.startswith(f"{path}: no URL found (2 lines or entries skipped; the first, ")
    assert "test_name 'whatsapp' is not web_connectivity" in message


def test_ooni_run_max_bytes_and_max_urls(tmp_path: Path) -> None:
    inputs = [f"http://h{i}.example/" for i in range(20)]
    path = write(tmp_path, "run.json", descriptor({"test_name": "web_connectivity",
                                                   "inputs": inputs}))
    assert error(path, max_urls=5) == f"{path}:nettests[0].inputs[5]: more than the limit of 5 URLs"
    size = path.stat().st_size
    assert error(path, max_bytes=100) == (f"{path}: {size} bytes, more than the limit of 100 "
                                          "bytes")


def test_mutated_files_raise_nothing_but_input_error(tmp_path: Path) -> None:
    """Seeded random damage to each fixture: a result or an InputError, never anything else."""
    rng = random.Random(20240601)
    seeds = [(DATA / name).read_bytes() for name in ("citizenlab-sample.csv", "run-v2.json")]
    seeds.append(b"http://example.com/\n# c\nhttps://b\xc3\xbccher.de/\n")
    junk = [b"\x00", b"\xff", b'"', b",", b"{", b"}", b"[", b"\r", b"\n", b"://", b"\x1b", b"%"]
    for n in range(300):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data) or 1)
            if rng.random() < 0.5:
                data[at:at + rng.randint(1, 8)] = rng.choice(junk)
            else:
                del data[at:at + rng.randint(1, 30)]
        path = write(tmp_path, f"m{n}", bytes(data))
        for fmt in ("auto", "plain", "csv", "ooni-run"):
            try:
                load_inputs(path, fmt)
            except InputError as e:
                assert str(e).startswith(str(path)) and "\x1b" not in str(e)


# --- 1,000-line lists and services ------------------------------------------------------------


def thousand_urls() -> list[str]:
    return [f"https://site{i}.example/page?id={i}" for i in range(1000)]


def thousand_csv() -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(HEADER.split(","))
    for i, url in enumerate(thousand_urls()):
        w.writerow([url, ("NEWS", "HUMR", "POLR")[i % 3], "desc", "2020-01-01", "", f"n, {i}"])
    return out.getvalue()


@pytest.mark.parametrize(("name", "make", "fmt"), [
    ("list.txt", lambda: "\n".join(thousand_urls()) + "\n", "plain"),
    ("list.csv", thousand_csv, "csv"),
    ("run.json", lambda: descriptor({"test_name": "web_connectivity",
                                     "inputs": thousand_urls()}), "ooni-run"),
])
def test_a_thousand_urls_in_each_format(tmp_path: Path, name: str, make: object,
                                        fmt: str) -> None:
    assert callable(make)
    result = load_inputs(write(tmp_path, name, make()))
    assert result.format == fmt
    assert len(result.urls) == 1000
    assert [u.url for u in result.urls] == thousand_urls()
    services = services_from_inputs(result)
    assert len(services) == 1000
    assert len({s.name for s in services}) == 1000
    if fmt == "csv":
        assert [s.category for s in services[:4]] == ["NEWS", "HUMR", "POLR", "NEWS"]
    else:
        assert {s.category for s in services} == {"input"}


def test_services_from_inputs() -> None:
    path = DATA / "citizenlab-sample.csv"
    services = services_from_inputs(load_inputs(path))
    first = services[0]
    assert first.name == "http://www.example.com/"
    assert first.title == "www.example.com"
    assert first.category == "NEWS"
    assert first.urls == ("http://www.example.com/",)
    assert first.source == f"{path}:2"
    assert first.domains == () and first.endpoints == ()
    plain = InputList(path="p", format="plain", skipped=(), duplicates=0, urls=(
        InputURL(url="http://[2001:db8::1]:8080/", category=None, where="p:1"),))
    (v6,) = services_from_inputs(plain)
    assert v6.title == "2001:db8::1" and v6.category == "input"


def test_ooni_run_inputs_extra_carry_the_category(tmp_path: Path) -> None:
    doc = {"nettests": [{"test_name": "web_connectivity",
                         "inputs": ["https://a.example/", "https://b.example/"],
                         "inputs_extra": [{"category_code": "NEWS"}, {}]}]}
    path = write(tmp_path, "run.json", json.dumps(doc))
    found = load_inputs(path)
    assert [(u.url, u.category) for u in found.urls] == [("https://a.example/", "NEWS"),
                                                          ("https://b.example/", None)]
