"""What the censor's NFQUEUE helpers (``inject``, ``delay``) share: a JSON config re-read when
it changes, and binding a queue until the process is stopped."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Reloading(Generic[T]):
    """``parse`` of a JSON file, redone whenever the file's mtime changes. A file that cannot be
    read or parsed keeps the last good value (and says why on stderr): a scenario switch
    replaces the file atomically, so this only happens on a real mistake."""

    def __init__(self, who: str, path: Path, parse: Callable[[Any], T], initial: T) -> None:
        self.who, self.path, self.parse = who, path, parse
        self.value = initial
        self.mtime = -1.0

    def current(self) -> T:
        try:
            mtime = self.path.stat().st_mtime
            if mtime != self.mtime:
                self.value = self.parse(json.loads(self.path.read_text(encoding="utf-8")))
                self.mtime = mtime
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"{self.who}: cannot read {self.path}: {exc}", file=sys.stderr, flush=True)
        return self.value


def serve(who: str, queue: int, config: Path, handler: Callable[[Any], None],
          **bind: Any) -> int:
    """Bind ``handler`` to NFQUEUE ``queue`` and run until killed."""
    from netfilterqueue import NetfilterQueue

    nfq = NetfilterQueue()
    nfq.bind(queue, handler, **bind)
    print(f"{who}: queue {queue}, config {config}, pid {os.getpid()}", flush=True)
    try:
        nfq.run()
    finally:
        nfq.unbind()
    return 0
