"""The censor's delay line: ``python -m blockwatch.lab.delay QUEUE CONFIG``.

This kernel has no netem, so added delay is made the way LAB-NOTES.md found to work: iptables
hands the service's packets (both directions) to NFQUEUE ``QUEUE``, and each packet's verdict
(accept) is issued ``delay_ms`` later from a timer thread. Packets keep their order (every one
waits the same time). CONFIG is a JSON file ``{"delay_ms": N}``, re-read when it changes.
Runs as root in the censor namespace; started and stopped by the lab, which tracks its PID.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from pathlib import Path
from typing import Any

from blockwatch.lab.nfq import Reloading, serve


class DelayLine:
    """Packets waiting for their verdict, in arrival order (all wait the same time)."""

    def __init__(self, config: Path) -> None:
        self.delay = Reloading("delay", config,
                               lambda raw: max(0, int(raw["delay_ms"])) / 1000, 0.0)
        self.waiting: collections.deque[tuple[float, Any]] = collections.deque()
        self.ready = threading.Condition()

    def hold(self, pkt: Any) -> None:
        with self.ready:
            self.waiting.append((time.monotonic() + self.delay.current(), pkt))
            self.ready.notify()

    def release_forever(self) -> None:
        while True:
            with self.ready:
                while not self.waiting:
                    self.ready.wait()
                due, pkt = self.waiting[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self.ready.wait(wait)
                    continue
                self.waiting.popleft()
            pkt.accept()


def main(argv: list[str]) -> int:
    queue, config = int(argv[0]), Path(argv[1])
    line = DelayLine(config)
    threading.Thread(target=line.release_forever, daemon=True).start()
    return serve("delay", queue, config, line.hold, max_len=65536)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
