"""Records blockwatch wrote (``blockwatch export --format ooni``): the measurement read back
from ``test_keys.x_blockwatch.measurement`` exactly as it was stored (its target, probe
version, start, runtime, failure and every observation, VPN, Tor and raw-packet ones
included), a new id in the importing run. OONI's keys beside it (the primitives,
web_connectivity's) are for OONI's tools and are not read again: they say less than the
measurement does. The record's envelope is checked as any OONI record's. Pure functions.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pydantic import ConfigDict

from blockwatch.ooni.models import CommonKeys, OONIMeasurement
from blockwatch.ooni.transform.common import _NAMESPACE, Ctx, Transform
from blockwatch.probes.model import Measurement, Target, observation_from_dict

SOFTWARE = "blockwatch"


def written_by_blockwatch(record: Any) -> bool:
    tk = record.get("test_keys") if isinstance(record, dict) else None
    return (record.get("software_name") == SOFTWARE and isinstance(tk, dict)
            and isinstance(tk.get("x_blockwatch"), dict)
            and isinstance(tk["x_blockwatch"].get("measurement"), dict))


def _instant(text: Any) -> dt.datetime:
    if not isinstance(text, str):
        raise TypeError("started_at is not a string")
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("started_at without a time zone")
    return value.astimezone(dt.UTC)


class _Keys(CommonKeys):
    """Nothing but x_blockwatch is read: the primitives are not checked again."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True, allow_inf_nan=False)
    queries: Any = None
    tcp_connect: Any = None
    tls_handshakes: Any = None
    requests: Any = None


class Exported(OONIMeasurement):
    """The envelope of a record blockwatch exported."""

    test_keys: _Keys


def measurements(c: Ctx, m: Exported) -> list[Measurement]:
    """The one measurement the record carries (ValueError/TypeError/KeyError if it is not
    what blockwatch writes: the import skips the record and says so)."""
    stored = (m.test_keys.model_extra or {})["x_blockwatch"]["measurement"]
    observations = stored["observations"]
    if not isinstance(observations, list) or not isinstance(stored["target"], dict):
        raise TypeError("observations or target of the wrong type")
    c.seq += 1
    return [Measurement(
        id=str(uuid.uuid5(_NAMESPACE, f"{c.run_id}/{c.seq}")), run_id=c.run_id,
        vantage=c.vantage, target=Target.from_dict(stored["target"]),
        probe_version=str(stored["probe_version"]), started_at=_instant(stored["started_at"]),
        runtime_s=float(stored["runtime_s"]), queued_s=float(stored.get("queued_s") or 0.0),
        observations=tuple(observation_from_dict(o) for o in observations),
        failure=stored["failure"], failed_operation=stored["failed_operation"])]


TRANSFORM = Transform(Exported, measurements)
