"""Structured log lines for unattended runs: one ``key=value`` line per event (logfmt).

    ts=2026-11-27T17:00:00.123Z level=info event=run.done group=hourly run=0193... status=complete

Guarantees: one line per record, whatever the message holds (newlines and quotes are escaped,
values with spaces quoted), timestamps in UTC; so ``grep``, ``journalctl`` and log shippers can
split them without a parser of ours. Fields come from ``extra={"fields": {...}}``; ``event`` is
the logger's message.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Mapping
from typing import Any

_BARE = re.compile(r"^[A-Za-z0-9_.:/@+\-,\[\]]+$")


def quote(value: object) -> str:
    text = "" if value is None else str(value)
    if _BARE.match(text):
        return text
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               .replace("\r", "\\r"))
    return f'"{escaped}"'


def fields(**values: Any) -> dict[str, Any]:
    """``log.info("run.done", extra=fields(run=..., status=...))``"""
    return {"fields": values}


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, dt.UTC)
        parts = [f"ts={ts.strftime('%Y-%m-%dT%H:%M:%S.')}{ts.microsecond // 1000:03d}Z",
                 f"level={record.levelname.lower()}", f"event={quote(record.getMessage())}"]
        extra: Mapping[str, Any] = getattr(record, "fields", None) or {}
        parts += [f"{key}={quote(value)}" for key, value in extra.items() if value is not None]
        if record.name not in ("blockwatch", "root"):
            parts.append(f"logger={record.name}")
        if record.exc_info:
            parts.append(f"error={quote(self.formatException(record.exc_info))}")
        return " ".join(parts)
