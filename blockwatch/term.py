"""What blockwatch prints for people: consoles that follow the terminal's width, cut text that
says it was cut, and a closed pipe that ends a command quietly.

Guarantees:
* a table is as wide as the terminal it is printed on (an 80-column console reads every table
  with its borders whole: cells wrap, they never push the border out); written to a pipe or a
  file, it is ``$COLUMNS`` wide if set, else ``PIPE_WIDTH``;
* text cut to fit (``clip``) ends in an ellipsis;
* a reader that goes away (``blockwatch report events -f csv | head``) ends the command with
  exit 0 and nothing on stderr: rich's own handling (exit 1) is replaced by ``BrokenPipeError``,
  which ``blockwatch.cli.main`` turns into a quiet end (``closed_pipe``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from rich.console import Console

PIPE_WIDTH = 160  # a table written to a pipe or a file, without $COLUMNS: nothing squeezed
ELLIPSIS = "…"


class _Console(Console):
    def on_broken_pipe(self) -> None:
        raise BrokenPipeError  # blockwatch.cli.main ends quietly (rich would exit 1)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def width(stream: Any) -> int:
    """The columns a table printed on ``stream`` may use."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if _isatty(stream):
        try:
            return os.get_terminal_size(stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            return 80
    return PIPE_WIDTH


def console(file: TextIO | None = None, *, stderr: bool = False) -> Console:
    """A rich console on ``file`` (default stdout, or stderr) as wide as ``width`` says."""
    stream = file if file is not None else (sys.stderr if stderr else sys.stdout)
    # a height too: without one, rich takes a TERM of "dumb" (or none) as 80 columns, whatever
    # the width says
    return _Console(file=stream, width=width(stream), height=25, soft_wrap=False)


def clip(text: str | None, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in an ellipsis when anything was cut."""
    text = text or ""
    if len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)].rstrip() + ELLIPSIS


def closed_pipe() -> None:
    """stdout's reader went away: point stdout at /dev/null so that the interpreter's last
    flush cannot fail again and print a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


class _ConsoleStream:
    """A stream for logging handlers that prints each line through a rich console (above a
    live progress bar, which it would otherwise overwrite)."""

    def __init__(self, target: Console) -> None:
        self.target = target

    def write(self, text: str) -> int:
        from rich.text import Text

        line = text.rstrip("\n")
        if line:
            self.target.print(Text(line), soft_wrap=True)  # a log line is data, never markup
        return len(text)

    def flush(self) -> None:
        pass


@contextmanager
def log_through(target: Console) -> Iterator[None]:
    """While it lasts, the root logger's stderr handlers write through ``target``."""
    moved = []
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and handler.stream in (sys.stderr,
                                                                          sys.__stderr__):
            moved.append((handler, handler.setStream(_ConsoleStream(target))))
    try:
        yield
    finally:
        for handler, stream in moved:
            handler.setStream(stream)
