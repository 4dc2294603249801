"""OONI measurements as blockwatch runs: a transform per OONI test that needs its own.

``from_ooni`` picks the test's transform from ``TRANSFORMS`` by ``test_name`` (an explicit
registry: a new test is one file here and one line there), checks the record against the
transform's model (``blockwatch.ooni.models``; a record that does not fit raises ``OONIError``
naming the field), maps the df-000 envelope (start, the vantage ``ooni-CC-ASN``, the run id) and
lets the transform make the measurements:

- what blockwatch itself exported (``software_name`` "blockwatch" with its measurement under
  ``test_keys.x_blockwatch``): ``blockwatch``, the measurement read back exactly;
- ``web_connectivity``: its own file (one fetch with redirects, the test helper's control);
- every other test (whatsapp, telegram, signal, facebook_messenger, riseupvpn, openvpn, ...):
  ``common``, from OONI's network primitives (its docstring says what it does not read).

The vantage is OONI's (``probe_cc``, ``probe_asn``); ``probe_ip`` is never kept and is scrubbed
from stored text. DoH/DoT queries and the test helper are the run's controls. Pure functions,
no I/O.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from blockwatch.ooni.models import OONIMeasurement, parse
from blockwatch.ooni.transform import blockwatch, common, web_connectivity
from blockwatch.ooni.transform.common import CONTROL_VANTAGE, Ctx, Imported, Transform
from blockwatch.probes.model import Run, RunInputs, Service

IMPORT_GROUP = "ooni-import"

# the OONI tests read otherwise than by common.TRANSFORM, by test_name
TRANSFORMS: dict[str, Transform[Any]] = {"web_connectivity": web_connectivity.TRANSFORM}


def _asn(text: str | None) -> int | None:
    match = re.fullmatch(r"AS(\d+)", text or "")
    if match is None or len(match.group(1)) > 10:
        return None
    asn = int(match.group(1))
    return asn if 0 < asn < 2**32 else None  # AS0: not shared; ASNs are 32-bit


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


def service_for(m: OONIMeasurement, catalogue: Mapping[str, Service]) -> str:
    """The catalogue service an OONI measurement is about, else its host or test name."""
    test = m.test_name or ""
    if test in catalogue:
        return test
    host = (urlsplit(m.input or "").hostname or "").lower()
    for name, svc in catalogue.items():
        hosts = {*svc.domains, *(urlsplit(u).hostname or "" for u in svc.urls)}
        if host and any(host == d or host.endswith("." + d) for d in hosts):
            return name
    return host or test or "ooni"


def from_ooni(record: Mapping[str, Any], catalogue: Mapping[str, Service]) -> Imported:
    """One OONI measurement as a blockwatch run; ``OONIError`` if it is not one."""
    name = record.get("test_name")
    transform = TRANSFORMS.get(name, common.TRANSFORM) if isinstance(name, str) else \
        common.TRANSFORM
    if blockwatch.written_by_blockwatch(record):  # its own export: read back exactly
        transform = blockwatch.TRANSFORM
    m = parse(transform.model, record)
    start, cc, asn = m.measurement_start_time, m.probe_cc, _asn(m.probe_asn)
    run_id = run_id_for(record, start)
    vantage = f"ooni-{cc or 'ZZ'}-AS{asn or 0}"
    c = Ctx(run_id, vantage, service_for(m, catalogue), start, m.probe_ip)
    ms = transform.measurements(c, m)
    resolvers = sorted({m.target.resolver for m in ms if m.probe == "dns" and m.target.resolver
                        and m.target.resolver.startswith(("https://", "tls://"))} | {
        CONTROL_VANTAGE})
    tk = m.test_keys
    summary = {"source": "ooni", "test_name": m.test_name or "unknown", "input": m.input,
               "report_id": m.report_id,
               "ooni": {k: getattr(tk, k) for k in ("blocking", "accessible")
                        if k in tk.model_fields_set}}
    runtime = m.test_runtime if m.test_runtime is not None and m.test_runtime >= 0 else 0.0
    run = Run(id=run_id, vantage=vantage, started_at=start, country=cc, asn=asn,
              finished_at=start + dt.timedelta(seconds=runtime), status="complete",
              software_version=f"{m.software_name} {m.software_version}".strip(),
              config_hash="ooni", group=IMPORT_GROUP, summary=summary,
              inputs=RunInputs(control_resolvers=tuple(resolvers),
                               control_vantages=(CONTROL_VANTAGE,)))
    return Imported(run, ms, getattr(tk, "blocking", None))


__all__ = ["CONTROL_VANTAGE", "IMPORT_GROUP", "TRANSFORMS", "Imported", "Transform", "from_ooni",
           "run_id_for", "service_for"]
