"""Dates on the command line: ``--since`` and ``--until`` take an ISO date or time (UTC unless
it names its offset) or a span back from now (``7d``, ``12h``, ``1d12h``, ``2w``, ``90m``).

Guarantees: every value is an aware UTC-comparable datetime; anything else is an
``argparse.ArgumentTypeError`` that says which forms are accepted (exit 2, never a traceback).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re

_WEEKS = re.compile(r"^(\d{1,4})w$")
FORMS = "YYYY-MM-DD, YYYY-MM-DDTHH:MM, or a span back from now such as 7d, 12h, 2w"


def parse_when(text: str, *, now: dt.datetime | None = None) -> dt.datetime:
    from blockwatch.config import parse_duration

    value = text.strip()
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        pass
    else:
        return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    now = now or dt.datetime.now(dt.UTC)
    weeks = _WEEKS.match(value.lower())
    try:
        seconds = int(weeks.group(1)) * 7 * 86400.0 if weeks else parse_duration(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (use {FORMS})") from None
    if value.replace(".", "").isdigit():  # a bare number is a year or a typo, not seconds
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (use {FORMS})")
    try:
        return now - dt.timedelta(seconds=seconds)
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{text!r} reaches back before year 1") from None
