"""The connectivity baseline: is the local network up at all before a sweep?

A TCP handshake to well-known anycast addresses (by IP: the check must not depend on DNS). Any
endpoint that answers, even with a RST, proves the path out works; if every endpoint times out
or is unreachable the network is down and no target may be judged "blocked". Endpoints outside
the scope are skipped, not contacted; if none is left the baseline is "unchecked".
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from probes.failures import CONNECTION_REFUSED, CONNECTION_RESET, classify
from probes.model import Endpoint
from probes.scope import Scope


@dataclass(frozen=True, slots=True)
class Baseline:
    status: str  # "up", "down" or "unchecked"
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def network_ok(self) -> bool:
        return self.status != "down"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "checks": self.checks}


async def _check(ep: Endpoint, limit: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    failure: str | None = None
    try:
        async with asyncio.timeout(limit):
            _, writer = await asyncio.open_connection(ep.host, ep.port)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    except Exception as exc:
        failure = classify(exc)
    return {"endpoint": str(ep), "failure": failure,
            "t": round(time.perf_counter() - t0, 4)}


async def check_baseline(endpoints: Sequence[Endpoint], scope: Scope,
                         limit: float = 5.0) -> Baseline:
    allowed = [ep for ep in endpoints if scope.allows(ep.host)]
    if not allowed:
        return Baseline("unchecked", [{"endpoint": str(ep), "failure": "out_of_scope"}
                                      for ep in endpoints])
    checks = list(await asyncio.gather(*(_check(ep, limit) for ep in allowed)))
    answered = any(c["failure"] in (None, CONNECTION_REFUSED, CONNECTION_RESET) for c in checks)
    return Baseline("up" if answered else "down", checks)
