"""OONI measurements as blockwatch runs: one transform per OONI test that needs its own.

``from_ooni`` maps the df-000 envelope (start, vantage ``ooni-CC-ASN``, run id) and hands the
test keys to the test's transform: ``TRANSFORMS`` names the tests with a file of their own
(web_connectivity, with its test helper's control); every other test (whatsapp, telegram,
signal, facebook_messenger, riseupvpn, openvpn, tor, ...) is read by ``common``, from OONI's
network primitives. The vantage is OONI's (``probe_cc``, ``probe_asn``); ``probe_ip`` is never
kept and is scrubbed from stored text. DoH/DoT queries and the test helper are the run's
controls. Pure functions, no I/O. A new test is one file here and one line in ``TRANSFORMS``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from blockwatch.ooni.models import OONIError
from blockwatch.ooni.transform import common, web_connectivity
from blockwatch.ooni.transform.common import CONTROL_VANTAGE, Ctx, Imported
from blockwatch.probes.model import Measurement, Run, RunInputs, Service

IMPORT_GROUP = "ooni-import"

Transform = Callable[[Ctx, Mapping[str, Any]], list[Measurement]]
# the tests read otherwise than by common.measurements
TRANSFORMS: dict[str, Transform] = {"web_connectivity": web_connectivity.measurements}


def _start(record: Mapping[str, Any]) -> dt.datetime:
    text = record.get("measurement_start_time")
    if not isinstance(text, str):
        raise OONIError("no measurement_start_time")
    try:
        return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC)
    except ValueError:
        raise OONIError(f"measurement_start_time {text[:40]!r} is not 'YYYY-MM-DD HH:MM:SS'") \
            from None


def _asn(text: Any) -> int | None:
    match = re.fullmatch(r"AS(\d+)", str(text or ""))
    return int(match.group(1)) or None if match else None


def run_id_for(record: Mapping[str, Any], start: dt.datetime) -> str:
    """A UUIDv7-shaped id: time-ordered like blockwatch's, and the same for the same OONI
    measurement (its ``measurement_uid``, else its whole content), so importing a file twice
    finds the first import."""
    uid = record.get("measurement_uid")
    identity = str(uid) if uid else json.dumps(record, sort_keys=True, default=str)
    digest = hashlib.sha256(identity.encode()).digest()
    ms = int(start.timestamp() * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(digest[:10], "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 64) & 0xFFF) << 64 | (0b10 << 62) | (
        rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def service_for(record: Mapping[str, Any], catalogue: Mapping[str, Service]) -> str:
    """The catalogue service an OONI measurement is about, else its host or test name."""
    test = str(record.get("test_name") or "")
    if test in catalogue:
        return test
    host = (urlsplit(str(record.get("input") or "")).hostname or "").lower()
    for name, svc in catalogue.items():
        hosts = {*svc.domains, *(urlsplit(u).hostname or "" for u in svc.urls)}
        if host and any(host == d or host.endswith("." + d) for d in hosts):
            return name
    return host or test or "ooni"


def from_ooni(record: Mapping[str, Any], catalogue: Mapping[str, Service]) -> Imported:
    """One OONI measurement as a blockwatch run; ``OONIError`` if it is not one."""
    tk = record.get("test_keys")
    if not isinstance(tk, dict):
        raise OONIError("no test_keys object")
    start = _start(record)
    cc = record.get("probe_cc") if isinstance(record.get("probe_cc"), str) else None
    asn = _asn(record.get("probe_asn"))
    run_id = run_id_for(record, start)
    test = str(record.get("test_name") or "unknown")
    vantage = f"ooni-{cc or 'ZZ'}-AS{asn or 0}"
    probe_ip = record.get("probe_ip") if isinstance(record.get("probe_ip"), str) else None
    c = Ctx(record, run_id, vantage, service_for(record, catalogue), start, probe_ip)
    ms = TRANSFORMS.get(test, common.measurements)(c, record)
    resolvers = sorted({m.target.resolver for m in ms if m.probe == "dns" and m.target.resolver
                        and m.target.resolver.startswith(("https://", "tls://"))} | {
        CONTROL_VANTAGE})
    summary = {"source": "ooni", "test_name": test, "input": record.get("input"),
               "report_id": record.get("report_id"),
               "ooni": {k: tk.get(k) for k in ("blocking", "accessible") if k in tk}}
    software = f"{record.get('software_name', 'ooniprobe')} {record.get('software_version', '')}"
    run = Run(id=run_id, vantage=vantage, started_at=start, country=cc, asn=asn,
              finished_at=start + dt.timedelta(seconds=_runtime(record)), status="complete",
              software_version=software.strip(), config_hash="ooni", group=IMPORT_GROUP,
              summary=summary, inputs=RunInputs(control_resolvers=tuple(resolvers),
                                                control_vantages=(CONTROL_VANTAGE,)))
    return Imported(run, ms, tk.get("blocking"))


def _runtime(record: Mapping[str, Any]) -> float:
    value = record.get("test_runtime")
    return float(value) if isinstance(value, int | float) and value >= 0 else 0.0




__all__ = ["CONTROL_VANTAGE", "IMPORT_GROUP", "TRANSFORMS", "Imported", "Transform", "from_ooni",
           "run_id_for", "service_for"]
