"""Text from the network, or from a file somebody else made, is data: never a terminal escape,
rich markup, a spreadsheet formula or matplotlib mathtext in what blockwatch prints, exports or
draws (issue #15). Every layer shows such text, so this module lives at the bottom (``probes``,
which every package may import).

- ``printable``: control characters (C0 but tab and newline, DEL, C1: ESC and BEL among them)
  and the Unicode bidirectional overrides that reorder what a terminal shows are written as
  visible ``\\xNN``/``\\uNNNN`` escapes; the rest is unchanged. Rich markup is a separate
  matter: show text in ``rich.text.Text`` (``cell``), which never parses it.
- ``one_line``: the same for a message of one line (a reason, a skipped record): every
  character ``str.isprintable`` refuses, newlines included, is escaped.
- ``csv_cell``: a text cell that a spreadsheet would run as a formula (starting with ``=``,
  ``+``, ``-``, ``@``, a tab or a carriage return: OWASP's list) gets a leading ``'``, which
  spreadsheets show as text; numbers stay numbers.
- ``json_safe``: JSON text with the same characters escaped as JSON escapes (still valid).
- ``mathtext``: ``$`` escaped, so that matplotlib draws the name instead of parsing it.
"""

from __future__ import annotations

import re
from typing import Any

_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every character that could drive or reorder a terminal made visible."""
    return _UNSAFE.sub(_escape, text)


def one_line(text: str) -> str:
    """``text`` as one printable line: every character ``str.isprintable`` refuses (controls,
    newlines, invisible and bidi characters) shown as its escape (``\\x1b``, ``\\n``)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def cell(value: Any) -> Any:
    """A ``rich.text.Text`` of ``value`` made printable (never parsed as markup)."""
    from rich.text import Text

    return Text(printable("" if value is None else str(value)))


def csv_cell(value: Any) -> Any:
    """A CSV cell: text made printable and kept from being a formula; other values as given."""
    if not isinstance(value, str):
        return value
    value = printable(value)
    return "'" + value if value.startswith(_FORMULA) else value


def json_safe(text: str) -> str:
    """JSON text (``json.dumps``'s, which escapes C0 itself) with the C1 controls and bidi
    overrides it leaves raw escaped as ``\\uNNNN``: still valid JSON, the same data."""
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def mathtext(text: str) -> str:
    """``text`` for a matplotlib label: printable, with ``$`` escaped."""
    return printable(text).replace("$", r"\$")
