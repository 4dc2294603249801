"""The connectivity baseline: is the local network up at all before a sweep?

A TCP handshake to well-known anycast addresses (by IP: the check must not depend on DNS). Any
endpoint that answers, even with a RST, proves the path out works, and ends the check at once
(a blocked endpoint must not cost every sweep its timeout); if every endpoint times out or is
unreachable, all are asked once more (a lost SYN is not a dead network), and only then is the
network down and no target may be judged "blocked". Endpoints outside the scope are skipped,
not contacted; if none is left the baseline is "unchecked". Connections are the one dialer's
(``probes.dial``), from the configured source address, as the sweep's own will be.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from blockwatch.probes.dial import Dialer
from blockwatch.probes.failures import CONNECTION_REFUSED, CONNECTION_RESET, classify
from blockwatch.probes.model import Endpoint
from blockwatch.probes.scope import Scope


@dataclass(frozen=True, slots=True)
class Baseline:
    status: str  # "up", "down" or "unchecked"
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def network_ok(self) -> bool:
        return self.status != "down"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "checks": self.checks}


async def _check(dialer: Dialer, ep: Endpoint, limit: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    failure: str | None = None
    try:
        (await dialer.connect(ep.host, ep.port, limit)).close()
    except Exception as exc:
        failure = classify(exc)
    return {"endpoint": str(ep), "failure": failure,
            "t": round(time.perf_counter() - t0, 4)}


def _answered(check: dict[str, Any]) -> bool:
    return check["failure"] in (None, CONNECTION_REFUSED, CONNECTION_RESET)


async def _round(dialer: Dialer, endpoints: Sequence[Endpoint],
                 limit: float) -> list[dict[str, Any]]:
    """Every endpoint at once; done as soon as one answers (the others are cancelled: a
    blocked endpoint must not hold every sweep up for its whole timeout)."""
    tasks = [asyncio.create_task(_check(dialer, ep, limit)) for ep in endpoints]
    try:
        for finished in asyncio.as_completed(tasks):
            if _answered(await finished):
                break
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return [t.result() if t.done() and not t.cancelled() and t.exception() is None else
            {"endpoint": str(ep), "failure": "not_waited_for"}
            for t, ep in zip(tasks, endpoints, strict=True)]


async def check_baseline(endpoints: Sequence[Endpoint], scope: Scope, limit: float = 5.0, *,
                         source_address: str | None = None) -> Baseline:
    """Up as soon as one endpoint answers. If none does, a second round asks again: a lost
    SYN (and its retransmissions) is not a network that is down."""
    allowed = [ep for ep in endpoints if scope.allows(ep.host)]
    if not allowed:
        return Baseline("unchecked", [{"endpoint": str(ep), "failure": "out_of_scope"}
                                      for ep in endpoints])
    dialer = Dialer(scope, source_address=source_address)  # before the sweep: no limits yet
    checks = await _round(dialer, allowed, limit)
    if not any(_answered(c) for c in checks):
        checks += await _round(dialer, allowed, limit)
    return Baseline("up" if any(_answered(c) for c in checks) else "down", checks)
