"""Raw-packet evidence by default: a failed TLS or HTTP exchange is traced as a follow-up.

From one vantage a reset or a silence after the TCP handshake looks the same whether a censor or
the server made it; the ``trace`` probe's facts tell them apart (a RST whose IP TTL differs from
the server's SYN-ACK, or interference that begins before the server's distance). So, where raw
sockets are available (CAP_NET_RAW) and the sweep goes out directly (no SOCKS5 proxy: raw
packets would bypass it), every endpoint whose TLS handshake or HTTP exchange failed *after the
TCP handshake* with a reset, an EOF or a timeout gets one trace target of its own, run at once
in the same name's slot and judged with its service (``trace`` is an ``adds_only`` probe: it
can make a verdict blocking, never take blocking away).

Only those failures are followed: a SYN that is dropped or refused has no SYN-ACK to compare a
reset with and no server distance to locate a drop against, so a trace would spend a TTL
search and settle nothing (docs/verdicts.md; a control vantage does). Each endpoint is traced
once per sweep (``host:port`` and mode), at most ``max_follow_ups`` of them, and none where the
config already selects ``trace`` for that service (its planner traced every endpoint).

``[probe.trace] follow_up = false`` switches this off. Without CAP_NET_RAW nothing is sent and
the run's summary says how many failures were not traced and why (``raw_evidence``).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from blockwatch.probes import failures as F
from blockwatch.probes.context import ProbeContext
from blockwatch.probes.model import Measurement, Target

# what a censor's reset, FIN or drop after the TCP handshake looks like from here
FOLLOWED = frozenset({F.CONNECTION_RESET, F.CONNECTION_ABORTED, F.EOF_ERROR, F.GENERIC_TIMEOUT})
# the operations that come after the TCP handshake, by probe
AFTER_CONNECT = {"tls": {"tls_handshake"}, "http": {"tls_handshake", "http_round_trip"}}


class TraceSettings(BaseModel):
    """``[probe.trace]``: follow-up traces of failed endpoints."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    follow_up: bool = True
    max_follow_ups: int = Field(default=64, ge=0, le=100_000)


def raw_sockets_available() -> bool:
    """Whether this process may open a raw socket (CAP_NET_RAW): one is opened and closed."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP).close()
    except OSError:
        return False
    return True


def follow_up_target(m: Measurement) -> Target | None:
    """The trace target that would settle ``m``'s failure, or None (not a failure a trace
    reads: a DNS or connect failure, a certificate problem, another probe)."""
    t = m.target
    sni: str | None
    host: str | None
    if m.failure not in FOLLOWED or m.failed_operation not in AFTER_CONNECT.get(t.probe, ()):
        return None
    if t.probe == "tls":
        if t.port is None:
            return None
        host, port, sni = t.host, t.port, t.sni or t.host
    else:
        if t.url is None:
            return None
        try:
            parts = urlsplit(t.url)
            host, explicit = parts.hostname, parts.port
        except ValueError:
            return None
        if not host:
            return None
        tls = parts.scheme == "https"
        if m.failed_operation == "http_round_trip" and tls:
            return None  # inside TLS: the trace's ClientHello would be answered
        port = explicit or (443 if tls else 80)
        sni = host if tls else None
    mode = "tls" if sni else "http"
    return Target(service=t.service, probe="trace", host=host, port=port, sni=sni,
                  options=(("follow_up", t.probe), ("mode", mode)), category=t.category)


@dataclass(slots=True)
class Follower:
    """One sweep's follow-up traces: which were made, which could not be."""

    key = "raw_evidence"  # its entry in the run's summary
    enabled: bool
    reason: str | None  # why nothing is traced (no CAP_NET_RAW, a proxy, switched off)
    limit: int
    planned: set[tuple[str, str, int | None]]  # (service, host, port) the config traces anyway
    seen: set[tuple[str, int | None, str]] = field(default_factory=set)
    traced: int = 0
    untraced: int = 0  # failures a trace would have read, not traced (reason, or the limit)

    def __call__(self, m: Measurement) -> Target | None:
        target = follow_up_target(m)
        if target is None or (target.service, target.host, target.port) in self.planned:
            return None
        key = (target.host.lower(), target.port, dict(target.options)["mode"])
        if key in self.seen:
            return None
        self.seen.add(key)
        if not self.enabled or self.traced >= self.limit:
            self.untraced += 1
            return None
        self.traced += 1
        return target

    def summary(self) -> dict[str, Any] | None:
        """What the run's summary says (``raw_evidence``), or None when nothing failed so."""
        if not self.traced and not self.untraced:
            return None
        out: dict[str, Any] = {"traced": self.traced}
        if self.untraced:
            out["untraced"] = self.untraced
            out["why"] = self.reason or f"over [probe.trace] max_follow_ups = {self.limit}"
        return out


def follower(targets: Sequence[Target], ctx: ProbeContext) -> Follower | None:
    """The sweep's follower, or None when it has nothing to follow (no TLS/HTTP targets) or the
    config switched it off."""
    settings = ctx.settings.get("trace") or TraceSettings()
    if not settings.follow_up or not any(t.probe in AFTER_CONNECT for t in targets):
        return None
    planned = {(t.service, t.host, t.port) for t in targets if t.probe == "trace"}
    reason = None
    if ctx.proxy:
        reason = "the sweep goes through a SOCKS5 proxy, which raw packets would bypass"
    elif not raw_sockets_available():
        reason = ("no raw sockets (CAP_NET_RAW): run as root or `setcap cap_net_raw+ep` on the "
                  "Python interpreter")
    return Follower(enabled=reason is None, reason=reason, limit=settings.max_follow_ups,
                    planned=planned)
