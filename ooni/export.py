"""Writing OONI's format: blockwatch's exported rows as OONI measurements.

One OONI df-000 measurement per exported blockwatch measurement (``Store.export_rows``), as
ooni/spec writes them (``blockwatch.ooni.spec`` holds the typed models a test checks every
exported record against):

- the envelope: ``measurement_start_time`` is the measurement's start, ``test_start_time`` its
  run's; ``software_name`` "blockwatch" and ``software_version`` the version that measured (the
  run's record; an imported run's software is named in the annotation ``measured_by``);
  ``report_id`` the run id; ``probe_ip`` "127.0.0.1" (OONI's own scrubbed value);
  ``probe_network_name`` "" (what OONI's clients write when they did not look it up: blockwatch
  never looks the volunteer's address or ASN up); ``resolver_ip`` the address the run's first
  resolver sent its queries to, as the run recorded it (``scheduler.host``: the configured
  address, or the system's first nameserver), else "127.0.0.2" (probe-cli's value for an
  unknown resolver: a run stored before blockwatch recorded it, or a DoH resolver named by
  host); ``resolver_asn`` "AS0" and ``resolver_network_name`` "" (not looked up, as for the
  probe); the ``annotations`` OONI's clients add (``architecture`` as Go names it, ``platform``
  as OONI names it, both as the run recorded them, "unknown" for a run stored before that;
  ``engine_name`` "blockwatch", ``engine_version``) and blockwatch's (``vantage``, ``service``,
  ``measurement_id``); ``extensions`` naming the primitives present (version 0, as OONI's);
  ``test_helpers`` empty (blockwatch's controls are not OONI's helper);
- web measurements (the ``http`` probe) are ``web_connectivity`` measurements (ts-017) with its
  keys, so that OONI's own tools read them: the primitives, ``control`` null and
  ``control_failure`` "unknown_failure: no available helpers" (what probe-cli writes when it has
  no test helper: blockwatch's control vantages measure other runs in other windows, not the
  ``control`` answer OONI's helper gives for this measurement), ``dns_experiment_failure``,
  ``http_experiment_failure``, ``accessible`` and ``blocking`` from blockwatch's verdict
  (``dns_blocked`` -> "dns", ``tcp_blocked`` -> "tcp_ip", ``tls_blocked`` or a failed fetch ->
  "http-failure", a block page -> "http-diff"; ``ok`` -> accessible, not blocking; ``down`` ->
  neither; any other verdict null: OONI's "could not tell"), the comparison keys OONI's helper
  fills null;
- every other probe keeps a ``blockwatch_<probe>`` test name, with the primitives it has
  (``blockwatch.ooni.export_keys``) and its own observations under ``x_<layer>``;
- ``test_keys.x_blockwatch`` holds the verdict and the measurement as blockwatch stores it, so
  that ``blockwatch import ooni`` reads every kind of record back exactly (transform
  ``blockwatch``), VPN and Tor handshakes and raw-packet traces included.

``write_ooni`` streams JSON lines; this is ``blockwatch export --format ooni``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TextIO

from blockwatch.ooni.export_keys import primitives
from blockwatch.ooni.models import SCRUBBED_IP

DATA_FORMAT_VERSION = "0.2.0"
NO_HELPER = "unknown_failure: no available helpers"  # probe-cli's control_failure without one
UNKNOWN_RESOLVER = "127.0.0.2"  # probe-cli's resolver_ip when it could not tell
EXTENSIONS = {"queries": "dnst", "tcp_connect": "tcpconnect", "tls_handshakes": "tlshandshake",
              "requests": "httpt"}
WEB_TEST_VERSION = "0.4.3"  # the ts-017 keys written (no test helper: control is null)
_BLOCKING = {"dns": "dns", "tcp": "tcp_ip", "tls": "http-failure"}


def ooni_time(text: str | None) -> str | None:
    """OONI's ``YYYY-MM-DD HH:MM:SS`` (UTC) of an exported ISO 8601 time."""
    return text[:19].replace("T", " ") if text else None


def _instant(text: str | None) -> dt.datetime:
    if not text:
        return dt.datetime.fromtimestamp(0, dt.UTC)
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _blocking(row: Mapping[str, Any]) -> tuple[bool | None, str | bool | None]:
    """(accessible, blocking) of ts-017 from blockwatch's verdict."""
    verdict, layer = row.get("verdict") or "", row.get("verdict_layer")
    if verdict == "ok":
        return True, False
    if verdict == "down":  # the site is down everywhere: not accessible, not blocked
        return False, False
    if not verdict.endswith("_blocked"):
        return None, None
    layer = layer or verdict.removesuffix("_blocked")
    if layer == "http":
        return False, "http-failure" if row.get("failure") else "http-diff"
    return False, _BLOCKING.get(layer or "", "http-failure")


def _web_keys(row: Mapping[str, Any], tk: dict[str, Any]) -> dict[str, Any]:
    failure, op = row.get("failure"), row.get("failed_operation")
    dns_failure = failure if op == "resolve" else None
    accessible, blocking = _blocking(row)
    return {
        **tk, "agent": "redirect", "client_resolver": None, "retries": None,
        "socksproxy": None, "control": None, "control_failure": NO_HELPER,
        "dns_experiment_failure": dns_failure,
        "http_experiment_failure": failure if failure and op != "resolve" else None,
        "dns_consistency": None, "body_length_match": None, "body_proportion": None,
        "status_code_match": None, "headers_match": None, "title_match": None,
        "accessible": accessible, "blocking": blocking}


def _blockwatch(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "verdict": row.get("verdict"), "rule_id": row.get("rule_id"),
        "layer": row.get("verdict_layer"), "analyzer_version": row.get("analyzer_version"),
        "evidence": row.get("evidence"),
        "measurement": {k: row.get(k) for k in (
            "measurement_id", "run_id", "vantage", "probe", "probe_version", "started_at",
            "runtime_s", "queued_s", "failure", "failed_operation", "observations")}
        | {"target": row.get("target_json")}}


def ooni_envelope(row: Mapping[str, Any], software_version: str = "") -> dict[str, Any]:
    """One exported measurement (``Store.export_rows``) as an OONI df-000 measurement;
    ``software_version``: the exporting blockwatch's, for a row whose run recorded none."""
    start = _instant(row.get("started_at"))
    tk = primitives(row.get("observations") or [], start)
    web = row.get("probe") == "http"
    tk["failure"] = row.get("failure")
    tk["x_failed_operation"] = row.get("failed_operation")
    if web:
        tk = _web_keys(row, tk)
    tk["x_blockwatch"] = _blockwatch(row)
    recorded = row.get("software_version") or ""
    # a run blockwatch measured records its version ("0.1.0"); an imported one the software
    # that measured it ("ooniprobe-android 1.1.4"): that is said in the annotations instead
    version = recorded if recorded[:1].isdigit() else software_version
    measured = ooni_time(row.get("started_at"))
    host = row.get("run_host") or {}
    return {
        "annotations": {"architecture": _text(host.get("architecture")),
                        "engine_name": "blockwatch", "engine_version": version,
                        "platform": _text(host.get("platform")),
                        "measurement_id": row.get("measurement_id"),
                        "vantage": row.get("vantage"), "service": row.get("service"),
                        **({"measured_by": recorded} if recorded and recorded != version
                           else {})},
        "data_format_version": DATA_FORMAT_VERSION,
        "extensions": {name: 0 for key, name in EXTENSIONS.items() if tk.get(key)},
        "input": row.get("target"),
        "measurement_start_time": measured,
        "probe_asn": f"AS{row.get('asn') or 0}", "probe_cc": row.get("country") or "ZZ",
        "probe_ip": SCRUBBED_IP, "probe_network_name": "",
        "report_id": row.get("run_id"),
        "resolver_asn": "AS0", "resolver_ip": _text(host.get("resolver_ip"), UNKNOWN_RESOLVER),
        "resolver_network_name": "",
        "software_name": "blockwatch", "software_version": version,
        "test_helpers": {},
        "test_name": "web_connectivity" if web else f"blockwatch_{row.get('probe')}",
        "test_runtime": row.get("runtime_s"),
        "test_start_time": ooni_time(row.get("run_started_at")) or measured,
        "test_version": WEB_TEST_VERSION if web else row.get("probe_version"),
        "test_keys": tk,
    }


def _text(value: Any, unknown: str = "unknown") -> str:
    return value if isinstance(value, str) and value else unknown


def with_runs(rows: Iterable[Mapping[str, Any]],
              host_of: Callable[[str], Mapping[str, Any] | None]) -> Iterator[dict[str, Any]]:
    """The rows, each with its run's record of the machine (``run_host``: ``host_of(run_id)``,
    asked once per run while its rows follow one another)."""
    cached: dict[str, Mapping[str, Any] | None] = {}
    for row in rows:
        run_id = str(row.get("run_id"))
        if run_id not in cached:
            if len(cached) >= _RUNS_CACHED:
                cached.clear()
            cached[run_id] = host_of(run_id)
        yield {**row, "run_host": cached[run_id]}


_RUNS_CACHED = 4096


def own_version() -> str:
    """The installed blockwatch's version, whatever its distribution is named."""
    from importlib import metadata

    for dist in metadata.packages_distributions().get("blockwatch", []):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "0+unknown"


def write_ooni(rows: Iterable[Mapping[str, Any]], fh: TextIO) -> int:
    """OONI JSON lines: one df-000 measurement per blockwatch measurement, streamed."""
    version = own_version()
    count = 0
    for row in rows:
        fh.write(json.dumps(ooni_envelope(row, version), ensure_ascii=False,
                            separators=(",", ":")))
        fh.write("\n")
        count += 1
    return count
