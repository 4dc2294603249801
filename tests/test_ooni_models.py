"""OONI's formats as typed models: real OONI data fits them; a record that does not is a skip
that names the field, never a traceback; what OONI adds (unknown fields) and leaves out (nulls)
does not stop an import; hostile input stays bounded; blockwatch's own OONI export fits them."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest

from blockwatch import ooni as O
from blockwatch.exports import FORMATS
from blockwatch.ooni.models import (
    CommonKeys,
    OONIError,
    OONIMeasurement,
    WebConnectivity,
    WebConnectivityKeys,
    parse,
)
from blockwatch.ooni.transform import TRANSFORMS, common
from blockwatch.probes.catalogue import load_catalogue
from blockwatch.storage import open_store

REAL = Path(__file__).resolve().parent / "data" / "ooni" / "real"
FILES = sorted(REAL.glob("*.json"))
CATALOGUE = load_catalogue()


def real(name: str) -> dict[str, Any]:
    return dict(json.loads((REAL / name).read_text()))


def model_for(record: dict[str, Any]) -> type[OONIMeasurement]:
    return TRANSFORMS.get(record["test_name"], common.TRANSFORM).model


def imported(record: dict[str, Any], tmp_path: Path) -> O.ImportReport:
    path = tmp_path / "one.json"
    path.write_text(json.dumps(record))
    with open_store(f"sqlite:///{tmp_path / 'bw.db'}") as store:
        return O.import_ooni(store, [path], CATALOGUE)


def put(record: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(record)
    at: Any = out
    for part in path[:-1]:
        at = at[part]
    at[path[-1]] = value
    return out


def test_the_real_files_are_every_kind_we_model() -> None:
    assert len(FILES) == 12
    tests = {real(f.name)["test_name"] for f in FILES}
    assert {"web_connectivity", "whatsapp", "telegram", "signal", "openvpn", "riseupvpn", "tor",
            "vanilla_tor"} <= tests


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_every_real_file_validates(path: Path) -> None:
    record = json.loads(path.read_text())
    m = parse(model_for(record), record)
    assert m.test_name == record["test_name"]
    assert (m.probe_cc, m.probe_asn, m.report_id) == (
        record["probe_cc"], record["probe_asn"], record["report_id"])
    assert m.measurement_start_time.tzinfo is not None
    # every test's keys also fit the common model: a test without a transform of its own is read
    parse(OONIMeasurement, record)
    if record["test_name"] == "web_connectivity":
        assert isinstance(m, WebConnectivity)
        assert isinstance(m.test_keys, WebConnectivityKeys) and m.test_keys.control is not None


def test_the_typed_fields_hold_what_the_record_holds() -> None:
    record = real("web_connectivity_b64_hdr.json")
    m = parse(WebConnectivity, record)
    tk, raw = m.test_keys, record["test_keys"]
    assert [q.hostname for q in tk.queries or []] == [q["hostname"] for q in raw["queries"]]
    tcp = tk.tcp_connect
    assert isinstance(tcp, list)
    assert [(e.ip, e.port) for e in tcp] == [(e["ip"], e["port"]) for e in raw["tcp_connect"]]
    requests = tk.requests or []
    assert requests[0].request is not None and requests[0].request.url == raw["requests"][0][
        "request"]["url"]
    # a header value that is not UTF-8 is OONI's BinaryData form
    binary = [v for r in requests if r.response and r.response.headers
              for v in r.response.headers.values() if not isinstance(v, str | None)]
    assert binary and all(b.format == "base64" for b in binary)
    assert tk.control is not None and tk.control.dns is not None
    assert tk.blocking == raw["blocking"]
    # fields blockwatch does not read are kept as they were, unchecked
    assert tk.model_extra is not None and tk.model_extra["dns_consistency"] == raw[
        "dns_consistency"]


# a wrong type in a field the transform reads: the record is skipped, the reason names the field
WRONG = [
    ("whatsapp.json", ("test_keys", "tcp_connect", 0, "port"), "443",
     "field test_keys.tcp_connect[].port should be an integer",
     "test_keys.tcp_connect[0].port is a string"),
    ("whatsapp.json", ("test_keys", "queries", 1, "hostname"), 42,
     "field test_keys.queries[].hostname should be a string",
     "test_keys.queries[1].hostname is 42"),
    ("signal_679.json", ("test_keys", "tls_handshakes", 0, "no_tls_verify"), "no",
     "field test_keys.tls_handshakes[].no_tls_verify should be true or false", None),
    ("signal_679.json", ("test_keys", "tls_handshakes", 0, "peer_certificates", 0),
     {"format": "hex", "data": "00"},
     "field test_keys.tls_handshakes[].peer_certificates[].format should be 'base64'", None),
    ("telegram_nourl.json", ("test_keys", "requests", 0, "response", "body"), 7,
     "field test_keys.requests[].response.body should be a string or an object", None),
    ("telegram_nourl.json", ("test_keys", "requests", 0, "response", "code"), "200",
     "field test_keys.requests[].response.code should be an integer", None),
    ("web_connectivity_ir_fp.json", ("test_keys", "control", "dns", "addrs"), "10.10.34.35",
     "field test_keys.control.dns.addrs should be a list", None),
    ("web_connectivity_ir_fp.json", ("test_keys", "queries"), {"hostname": "x"},
     "field test_keys.queries should be a list", None),
    ("web_connectivity_null.json", ("probe_cc",), 98, "field probe_cc should be a string", None),
    ("web_connectivity_null.json", ("test_runtime",), "1.5",
     "field test_runtime should be a number", None),
]


@pytest.mark.parametrize(("name", "path", "value", "reason", "where"), WRONG,
                         ids=[".".join(map(str, w[1])) for w in WRONG])
def test_a_wrong_type_is_a_skip_naming_the_field(tmp_path: Path, name: str,
                                                 path: tuple[str | int, ...], value: Any,
                                                 reason: str, where: str | None) -> None:
    record = put(real(name), path, value)
    with pytest.raises(OONIError) as err:
        O.from_ooni(record, CATALOGUE)
    assert str(err.value).startswith(reason + " (")
    if where is not None:
        assert f"({where})" in str(err.value)
    report = imported(record, tmp_path)
    assert report.runs == 0
    assert report.skipped == {reason: 1}


def test_a_reason_never_echoes_the_records_text() -> None:
    # the text of a record may hold the probe's IP: a reason says what kind of value was there
    record = put(real("whatsapp.json"), ("test_keys", "tcp_connect", 0, "port"), "198.51.100.7")
    with pytest.raises(OONIError) as err:
        O.from_ooni(record, CATALOGUE)
    assert "198.51.100.7" not in str(err.value)


def test_the_old_reasons_stay() -> None:
    # what the import has always said about a record without test keys or a start time
    record = real("whatsapp.json")
    for broken, reason in [({**record, "test_keys": [1]}, "no test_keys object"),
                           ({k: v for k, v in record.items() if k != "test_keys"},
                            "no test_keys object"),
                           ({**record, "measurement_start_time": None},
                            "no measurement_start_time"),
                           ({**record, "measurement_start_time": "2024-13-01 00:00:00"},
                            "measurement_start_time '2024-13-01 00:00:00' is not "
                            "'YYYY-MM-DD HH:MM:SS'")]:
        with pytest.raises(OONIError, match=f"^{reason}$"):
            O.from_ooni(broken, CATALOGUE)


# objects keyed by data (header names, endpoints), where a new key is new data, not a new field
MAPS = {"headers", "tcp_connect", "tls_handshake", "ip_info"}


def extras(value: Any, key: str = "") -> Any:
    """``value`` with an unknown field in every object."""
    if isinstance(value, dict):
        out = {k: extras(v, k) for k, v in value.items()}
        return out if key in MAPS else {**out, "x_new_field": {"nested": [1, None]}}
    if isinstance(value, list):
        return [extras(v) for v in value]
    return value


@pytest.mark.parametrize("name", ["web_connectivity_b64_hdr.json", "web_connectivity_no_body.json"])
def test_unknown_fields_everywhere_still_import_the_same(tmp_path: Path, name: str) -> None:
    # (these records have a measurement_uid, so the run id does not depend on their content)
    record = real(name)
    grown = extras(record)
    assert grown["test_keys"]["control"]["x_new_field"]
    assert O.from_ooni(grown, CATALOGUE) == O.from_ooni(record, CATALOGUE)
    assert imported(grown, tmp_path).runs == 1


NULLS = [("whatsapp.json", ("probe_cc",)), ("whatsapp.json", ("input",)),
         ("whatsapp.json", ("test_runtime",)), ("whatsapp.json", ("software_version",)),
         ("whatsapp.json", ("test_keys", "queries")),
         ("whatsapp.json", ("test_keys", "tcp_connect", 0, "status")),
         ("whatsapp.json", ("test_keys", "tcp_connect", 0, "t")),
         ("signal_679.json", ("test_keys", "tls_handshakes", 0, "peer_certificates")),
         ("telegram_nourl.json", ("test_keys", "requests", 0, "response", "headers_list")),
         ("telegram_nourl.json", ("test_keys", "requests", 0, "response", "headers", "Server")),
         ("web_connectivity_ir_fp.json", ("test_keys", "control", "dns", "addrs")),
         ("web_connectivity_ir_fp.json", ("test_keys", "control", "http_request")),
         ("web_connectivity_ir_fp.json", ("test_keys", "blocking"))]


@pytest.mark.parametrize(("name", "path"), NULLS, ids=[".".join(map(str, n[1])) for n in NULLS])
def test_null_fields_still_import(tmp_path: Path, name: str, path: tuple[str | int, ...]) -> None:
    record = put(real(name), path, None)
    assert imported(record, tmp_path).runs == 1


def test_old_probes_false_failure_in_a_tcp_status_is_accepted() -> None:
    # df-005: "some older versions of OONI Probe set this to false instead of null"
    record = put(real("whatsapp.json"), ("test_keys", "tcp_connect", 0, "status", "failure"), False)
    assert O.from_ooni(record, CATALOGUE).measurements


def test_the_common_model_reads_what_a_test_of_its_own_adds_as_extras() -> None:
    record = real("web_connectivity_ir_fp.json")
    m = parse(OONIMeasurement, record)
    assert type(m.test_keys) is CommonKeys
    assert m.test_keys.model_extra and "control" in m.test_keys.model_extra


HOSTILE = {
    "t": (("test_keys", "tcp_connect", 0, "t"), 1e300,
          "field test_keys.tcp_connect[].t should be at most 1000000000.0"),
    "nan": (("test_keys", "tcp_connect", 0, "t"), float("nan"),
            "field test_keys.tcp_connect[].t should be a finite number"),
    "runtime": (("test_runtime",), float("inf"), "field test_runtime should be a finite number"),
    "port": (("test_keys", "tcp_connect", 0, "port"), 70000,
             "field test_keys.tcp_connect[].port should be at most 65535"),
    "id": (("test_keys", "queries", 0, "transaction_id"), 2**70,
           "field test_keys.queries[].transaction_id should be at most 9223372036854775807"),
    "year": (("measurement_start_time",), "9999-12-31 23:59:59",
             "measurement_start_time '9999-12-31 23:59:59' is after the year 9000"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_values_that_would_overflow_are_refused(tmp_path: Path, case: str) -> None:
    path, value, reason = HOSTILE[case]
    record = put(real("whatsapp.json"), path, value)
    assert imported(record, tmp_path).skipped == {reason: 1}


def test_hostile_text_imports_or_is_skipped_never_raises(tmp_path: Path) -> None:
    wc = real("web_connectivity_b64_hdr.json")
    odd = [put(real("whatsapp.json"), ("test_keys", "tls_handshakes", 0, "address"), "1.2.3.4:²"),
           put(real("whatsapp.json"), ("test_keys", "tls_handshakes", 0, "address"),
               "1.2.3.4:" + "9" * 5000),
           put(real("whatsapp.json"), ("probe_asn",), "AS" + "9" * 40),
           put(wc, ("test_keys", "requests", 0, "tags"), ["depth=²"]),
           put({**wc, "measurement_uid": "another"},
               ("test_keys", "control", "tcp_connect", "1.2.3.4:" + "9" * 5000),
               {"status": False, "failure": "connection_refused_error"})]
    lines = [json.dumps(r) for r in odd]
    lines += ["[" * 100_000, '{"x": ' + "9" * 5000 + "}",
              json.dumps({**real("whatsapp.json"), "x": json.loads("[" * 900 + "]" * 900)})]
    path = tmp_path / "odd.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with open_store(f"sqlite:///{tmp_path / 'bw.db'}") as store:
        report = O.import_ooni(store, [path], CATALOGUE)
    assert report.runs == 6
    assert report.skipped == {"not JSON": 2}
    reasons = sorted(s.reason for s in report.examples)
    assert reasons[0].startswith("not JSON (Exceeds the limit (4300 digits)")
    assert reasons[1] == "not JSON (nested too deeply)"


def test_blockwatchs_ooni_export_fits_the_models(tmp_path: Path) -> None:
    # what `blockwatch export --format ooni` writes, `blockwatch import ooni` can read
    with open_store(f"sqlite:///{tmp_path / 'bw.db'}") as store:
        O.import_ooni(store, [REAL], CATALOGUE)
        out = io.StringIO()
        n = FORMATS["ooni"].write(store.export_rows(), out)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert n == len(records) > 100
    for record in records:
        m = parse(OONIMeasurement, record)
        assert m.probe_ip == "127.0.0.1"
