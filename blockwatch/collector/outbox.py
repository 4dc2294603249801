"""The vantage's outbox: every run reaches the collector, however long the collector is away.

Guarantees:

- a run is queued in the local database (table ``outbox``) in the transaction-safe store the
  sweep wrote it to, so a crash, a reboot or a week without the collector loses nothing;
- ``flush`` sends each queued run's batches in order (``client.batches``) and remembers how many
  were stored (``batches_sent``), so an interrupted run resumes where it stopped; the collector
  stores each batch idempotently, so a batch sent twice (an answer lost) is harmless;
- a 2xx answer is the collector's word that the batch is committed; when every batch of a run is,
  the run leaves the outbox;
- a 4xx answer (other than 408 and 429) is a refusal for good: the run is set aside
  (``rejected``) with the collector's reason, shown by ``blockwatch outbox``, and never retried
  by itself (``blockwatch submit --retry-rejected`` tries again, e.g. after a new token);
- 5xx, 408, 429, a timeout or no connection: retried later, with exponential backoff (30 s,
  doubling, at most 6 h) and jitter (x0.5 to x1.5), so many vantages coming back at once do not
  arrive together;
- the vantage's SOCKS5 proxy (``[vantage] socks5_proxy``, e.g. Tor) and CA (``[collector]
  ca_file``, else ``[tls] ca_bundle``, else the system's) apply to the submission.
"""

from __future__ import annotations

import datetime as dt
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockwatch.probes.textsafe import one_line as printable  # network text
from blockwatch.storage import collector as db

BACKOFF_S = 30.0
BACKOFF_MAX_S = 6 * 3600.0
RETRY = {408, 429}


@dataclass(frozen=True, slots=True)
class Sending:
    """Where and how a vantage submits."""

    url: str  # the collector's base URL
    token: str
    timeout: float = 30.0
    proxy: str | None = None
    ca_file: str | None = None


@dataclass(slots=True)
class FlushReport:
    sent: list[str] = field(default_factory=list)  # runs now wholly at the collector
    retry: dict[str, str] = field(default_factory=dict)  # run -> why it waits
    rejected: dict[str, str] = field(default_factory=dict)  # run -> the collector's reason
    batches: int = 0

    @property
    def pending(self) -> int:
        return len(self.retry)


def enqueue(store: Any, run_id: str, collector: str) -> None:
    db.enqueue(store, run_id, collector)


def entries(store: Any) -> list[Any]:
    return db.outbox(store)


def backoff(attempts: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after the ``attempts``-th failed try (1, 2, ...)."""
    base = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** max(0, attempts - 1))
    return float(base * (0.5 + rand()))


def _client(sending: Sending) -> Any:
    import httpx

    verify: Any = True
    if sending.ca_file:
        verify = ssl.create_default_context(cafile=sending.ca_file)
    return httpx.Client(base_url=sending.url, timeout=sending.timeout, verify=verify,
                        proxy=sending.proxy, trust_env=False,
                        headers={"Authorization": f"Bearer {sending.token}",
                                 "Content-Encoding": "gzip",
                                 "Content-Type": "application/x-ndjson"})


ANSWER_MAX = 64 * 1024  # what is read of the collector's answer, whatever it sends


def _post(client: Any, body: bytes) -> tuple[int, bytes]:
    """POST a batch; the status and at most ``ANSWER_MAX`` bytes of the answer."""
    with client.stream("POST", "/api/v1/submit", content=body) as answer:
        head = b""
        for chunk in answer.iter_bytes():
            head += chunk
            if len(head) >= ANSWER_MAX:
                break
        return answer.status_code, head[:ANSWER_MAX]


def _error_of(status: int, head: bytes) -> str:
    import orjson

    try:
        return printable(str(orjson.loads(head)["error"])[:500])
    except Exception:
        return f"HTTP {status}"


def flush(store: Any, sending: Sending, *, force: bool = False, retry_rejected: bool = False,
          budget_s: float | None = None, only: str | None = None) -> FlushReport:
    """Send what is due (everything with ``force``; the run ``only``, if given), within
    ``budget_s`` seconds if given."""
    import httpx

    from blockwatch.collector.client import batches

    report = FlushReport()
    started = dt.datetime.now(dt.UTC)
    due = [e for e in entries(store)
           if (e.state == "pending" and (force or e.next_attempt_at <= started))
           or (retry_rejected and e.state == "rejected")]
    if only is not None:
        due = [e for e in due if e.run_id == only]
    if not due:
        return report
    with _client(sending) as client:
        for entry in due:
            if budget_s is not None and (dt.datetime.now(dt.UTC) - started).total_seconds() \
                    > budget_s:
                report.retry[entry.run_id] = "left for the next flush (time budget)"
                continue
            sent, outcome = entry.batches_sent, None
            for body in batches(store, entry.run_id, start=sent):
                try:
                    status, head = _post(client, body)
                except httpx.HTTPError as exc:
                    outcome = ("retry", printable(f"{type(exc).__name__}: {exc}"[:500]))
                    break
                if 200 <= status < 300:
                    sent, report.batches = sent + 1, report.batches + 1
                    _set(store, entry.run_id, batches_sent=sent)
                    continue
                kind = "retry" if status >= 500 or status in RETRY else "rejected"
                outcome = (kind, f"{status}: {_error_of(status, head)}")
                break
            if outcome is None:
                _done(store, entry.run_id)
                report.sent.append(entry.run_id)
            elif outcome[0] == "rejected":
                _set(store, entry.run_id, state="rejected", last_error=outcome[1])
                report.rejected[entry.run_id] = outcome[1]
            else:
                attempts = entry.attempts + 1
                _set(store, entry.run_id, state="pending", attempts=attempts,
                     last_error=outcome[1], next_attempt_at=dt.datetime.now(dt.UTC)
                     + dt.timedelta(seconds=backoff(attempts)))
                report.retry[entry.run_id] = outcome[1]
    return report


def _set(store: Any, run_id: str, **values: Any) -> None:
    db.update_outbox(store, run_id, **values)


def _done(store: Any, run_id: str) -> None:
    db.drop_from_outbox(store, run_id)


def read_token(path: Path) -> str:
    """The token in ``path`` (its first line); ValueError naming the file when unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the collector token ({exc})") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token.startswith("bwc_") or len(token) > 128:
        raise ValueError(f"{path}: not a collector token (blockwatch collector token add "
                         "prints one, starting bwc_)")
    return token


def sending_of(cfg: Any) -> Sending | None:
    """The config's ``[collector]`` as a Sending (None: no collector configured); ValueError
    naming the file when the token cannot be read."""
    c = cfg.collector
    if c.url is None or c.token_file is None:
        return None
    ca = c.ca_file or cfg.tls.ca_bundle
    return Sending(url=c.url.rstrip("/"), token=read_token(c.token_file), timeout=c.timeout,
                   proxy=cfg.vantage.socks5_proxy, ca_file=str(ca) if ca else None)


def after_run(store: Any, sending: Sending, run_id: str, *, budget_s: float) -> FlushReport:
    """Queue the run that just ended and send it; if the collector took it, send every run
    still waiting too (it is back: no reason to wait for their backoff)."""
    started = dt.datetime.now(dt.UTC)
    enqueue(store, run_id, sending.url)
    report = flush(store, sending, force=True, only=run_id, budget_s=budget_s)
    if report.sent:
        spent = (dt.datetime.now(dt.UTC) - started).total_seconds()
        rest = flush(store, sending, force=True, budget_s=max(0.0, budget_s - spent))
        report.sent += rest.sent
        report.retry.update(rest.retry)
        report.rejected.update(rest.rejected)
        report.batches += rest.batches
    else:
        waiting = [e.run_id for e in entries(store) if e.state == "pending"]
        report.retry.update({r: report.retry.get(r, "not tried: the collector did not take "
                                                     "this run's batches") for r in waiting})
    return report


def daemon_hooks(store: Any, sending: Sending, budget_s: float, *, controls: bool = True
                 ) -> tuple[Callable[[str | None], Any], Callable[[str], None], Any]:
    """What the scheduling daemon calls: ``submit(run_id)`` after a run (``after_run``) or
    ``submit(None)`` at start and periodically (``flush`` of what is due), ``queue(run_id)``
    (a run that a stop interrupted is queued all the same), and ``prepare(plan)`` before a
    sweep (the collector's controls, ``controls.daemon_hook``; None with ``controls`` off)."""
    from blockwatch.collector.controls import daemon_hook

    def submit(run_id: str | None) -> Any:
        if run_id is None:
            return flush(store, sending, budget_s=budget_s)
        return after_run(store, sending, run_id, budget_s=budget_s)

    def queue(run_id: str) -> None:
        enqueue(store, run_id, sending.url)

    return submit, queue, daemon_hook(store, sending) if controls else None

