"""Writing OONI's format: blockwatch's exported rows as OONI measurements.

One OONI df-000 envelope per exported measurement (``Store.export_rows``), with blockwatch's
observations as OONI ``test_keys`` (df-002 queries, df-005 tcp_connect, df-006 tls_handshakes,
df-001 requests), what blockwatch adds beyond OONI's fields under ``x_`` names, and ``probe_ip``
"127.0.0.1" (OONI's own scrubbed value). ``write_ooni`` streams them as JSON lines; this is
``blockwatch export --format ooni``. No I/O but the file handed in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from blockwatch.ooni.models import SCRUBBED_IP


def _ooni_time(text: str | None) -> str | None:
    return text[:19].replace("T", " ") if text else None


def _queries(o: Mapping[str, Any]) -> list[dict[str, Any]]:
    answers = []
    for r in o.get("responses") or []:
        for a in r.get("answers") or []:
            kind = a.get("rtype")
            key = {"A": "ipv4", "AAAA": "ipv6"}.get(kind or "", "hostname")
            answers.append({"answer_type": kind, key: a.get("value"), "ttl": a.get("ttl")})
        break  # the first response is what a stub resolver used; the rest are in x_responses
    return [{"hostname": o.get("qname"), "query_type": o.get("qtype"),
             "engine": o.get("transport"), "resolver_address": o.get("resolver"),
             "failure": o.get("failure"), "answers": answers or None, "t": o.get("t0"),
             "x_responses": len(o.get("responses") or [])}]


def _test_keys(row: Mapping[str, Any]) -> dict[str, Any]:
    tk: dict[str, Any] = {"queries": [], "tcp_connect": [], "tls_handshakes": [], "requests": []}
    for o in row.get("observations") or []:
        layer = o.get("layer")
        if layer == "dns":
            tk["queries"].extend(_queries(o))
        elif layer == "tcp":
            tk["tcp_connect"].append({"ip": o.get("address"), "port": o.get("port"),
                                      "status": {"success": o.get("failure") is None,
                                                 "failure": o.get("failure")}, "t": o.get("t"),
                                      "x_answer_of": o.get("answer_of")})
        elif layer == "tls":
            tk["tls_handshakes"].append({
                "address": f"{o.get('address')}:{o.get('port')}", "server_name": o.get("sni"),
                "failure": o.get("failure"), "tls_version": o.get("version"),
                "cipher_suite": o.get("cipher"), "negotiated_protocol": o.get("alpn"),
                "no_tls_verify": bool(o.get("control")), "t": o.get("t"),
                "x_peer_chain_sha256": o.get("peer_chain_sha256"),
                "x_control_sni": bool(o.get("control"))})
        elif layer == "http":
            tk["requests"].append({
                "request": {"url": o.get("url"), "method": "GET"}, "failure": o.get("failure"),
                "response": {"code": o.get("status"), "headers_list": o.get("headers") or [],
                             "body": o.get("body_sample"),
                             "body_is_truncated": bool(o.get("body_truncated"))
                             or (o.get("body_length") or 0) > len(o.get("body_sample") or ""),
                             "x_body_length": o.get("body_length"),
                             "x_body_sha256": o.get("body_sha256")},
                "x_redirects": o.get("redirects") or [], "t": o.get("t")})
        else:
            tk.setdefault(f"x_{layer}", []).append(o)
    tk["failure"] = row.get("failure")
    tk["x_failed_operation"] = row.get("failed_operation")
    tk["x_blockwatch"] = {k: row.get(k) for k in ("verdict", "rule_id", "analyzer_version",
                                                  "evidence")}
    return tk


def ooni_envelope(row: Mapping[str, Any], software_version: str = "") -> dict[str, Any]:
    """One exported measurement (``Store.export_rows``) as an OONI df-000 measurement."""
    start = _ooni_time(row.get("started_at"))
    return {
        "data_format_version": "0.2.0",
        "measurement_start_time": start, "test_start_time": start,
        "probe_cc": row.get("country") or "ZZ", "probe_asn": f"AS{row.get('asn') or 0}",
        "probe_ip": SCRUBBED_IP, "probe_network_name": None,
        "report_id": row.get("run_id"), "input": row.get("target"),
        "software_name": "blockwatch", "software_version": software_version,
        "test_name": f"blockwatch_{row.get('probe')}", "test_version": row.get("probe_version"),
        "test_runtime": row.get("runtime_s"),
        "annotations": {"measurement_id": row.get("measurement_id"),
                        "vantage": row.get("vantage"), "service": row.get("service")},
        "test_keys": _test_keys(row),
    }


def write_ooni(rows: Iterable[Mapping[str, Any]], fh: TextIO) -> int:
    """OONI JSON lines: one df-000 envelope per measurement, streamed."""
    count = 0
    for row in rows:
        fh.write(json.dumps(ooni_envelope(row), ensure_ascii=False, separators=(",", ":")))
        fh.write("\n")
        count += 1
    return count
