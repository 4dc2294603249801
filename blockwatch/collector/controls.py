"""The vantage's side of controls across vantages: before a sweep, the control vantages'
recent measurements are fetched from the collector into the local database, so that the
sweep's own verdicts are judged against them (``[analysis] control_vantages``, as if the two
vantages shared a database).

Guarantees:

- what the collector sends is checked as the collector checks a submission (the same
  decompression bounds, the same typed models, every record of the control vantage it was
  asked for) and stored idempotently; a hostile or broken answer is a problem reported, never
  stored in part;
- a collector that does not answer costs one connection attempt under a short timeout (at
  most ``FETCH_TIMEOUT_S``), and the sweep goes on without those controls;
- at most ``MAX_VANTAGES`` control vantages and the collector's ``MAX_CONTROLS`` measurements
  each are fetched.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

FETCH_TIMEOUT_S = 10.0
MAX_VANTAGES = 32
ANSWER_MAX = 16 * 2**20  # an answer's compressed size (the collector's MAX_BODY)


@dataclass(slots=True)
class Fetched:
    vantages: list[str] = field(default_factory=list)  # control vantages now in the database
    measurements: int = 0  # control measurements fetched (new or already here)
    problems: list[str] = field(default_factory=list)  # printable, one a vantage or request


def _read(answer: Any, limit: int) -> bytes:
    body = b""
    for chunk in answer.iter_bytes():
        body += chunk
        if len(body) > limit:
            raise ValueError(f"an answer larger than {limit} bytes")
    return body


def fetch(store: Any, sending: Any, services: Sequence[str], since: dt.datetime,
          until: dt.datetime) -> Fetched:
    """The control vantages' runs and measurements of ``services`` from ``since`` to ``until``
    into ``store``."""
    import httpx
    import orjson

    from blockwatch.collector.batch import BatchError, decompress, parse
    from blockwatch.collector.ingest import store_batch
    from blockwatch.collector.outbox import _client, _error_of
    from blockwatch.collector.tokens import Vantage
    from blockwatch.probes.textsafe import one_line as printable
    from blockwatch.storage.errors import StorageError

    out = Fetched()
    quick = dataclasses.replace(sending, timeout=min(sending.timeout, FETCH_TIMEOUT_S))
    query = orjson.dumps({"since": since.isoformat(), "until": until.isoformat(),
                          "services": sorted(set(services))[:5000]})
    with _client(quick) as client:
        try:
            with client.stream("GET", "/api/v1/controls") as answer:
                head = _read(answer, 64 * 1024)
                if answer.status_code != 200:
                    out.problems.append(f"the collector answered {answer.status_code}: "
                                        f"{_error_of(answer.status_code, head)}")
                    return out
            names = orjson.loads(head)["vantages"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError("not a list of vantage names")
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            out.problems.append(printable(f"no controls from the collector "
                                          f"({type(exc).__name__}: {exc})"[:300]))
            return out
        for name in names[:MAX_VANTAGES]:
            try:
                with client.stream("POST", f"/api/v1/controls/{name}", content=query,
                                   headers={"Content-Type": "application/json",
                                            "Content-Encoding": "identity"}) as answer:
                    body = _read(answer, ANSWER_MAX)
                    if answer.status_code != 200:
                        out.problems.append(printable(
                            f"{name[:64]}: {answer.status_code}: "
                            f"{_error_of(answer.status_code, body[:64 * 1024])}"))
                        continue
                batch = parse(decompress(body, "gzip"))
                found = len(batch.measurements)
                store_batch(store, batch, Vantage(name=name, country=None, asn=None,
                                                  created_at=dt.datetime.now(dt.UTC)))
            except (httpx.HTTPError, ValueError, StorageError) as exc:  # BatchError: ValueError
                what = str(exc) if isinstance(exc, BatchError) else f"{type(exc).__name__}: {exc}"
                out.problems.append(printable(f"{name[:64]}: not stored ({what})"[:300]))
                continue
            out.vantages.append(name)
            out.measurements += found
    return out


def with_controls(store: Any, sending: Any, services: Sequence[str],
                  settings: Any) -> tuple[Any, Fetched]:
    """The sweep ``settings`` with the control vantages fetched from the collector for the
    ``services`` (from ``control_max_age_s`` ago to now) added to its control vantages, and
    what the fetch found; a collector away: the settings as they were."""
    until = dt.datetime.now(dt.UTC)
    got = fetch(store, sending, services,
                until - dt.timedelta(seconds=settings.control_max_age_s), until)
    added = tuple(v for v in got.vantages if v not in settings.control_vantages)
    return (dataclasses.replace(settings, control_vantages=(*settings.control_vantages,
                                                            *added)), got)


def daemon_hook(store: Any, sending: Any) -> Any:
    """What the scheduling daemon calls before each sweep (in a thread): the plan's settings
    with the collector's controls (``with_controls``), problems logged."""
    import logging

    log = logging.getLogger("blockwatch.schedule")

    def prepare(plan: Any) -> Any:
        settings, got = with_controls(store, sending, [s.name for s in plan.services],
                                      plan.settings)
        for problem in got.problems:
            log.warning("collector.controls: %s", problem)
        return settings

    return prepare
