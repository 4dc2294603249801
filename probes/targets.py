"""What a service gives a planner: its names, its URLs' endpoints, the sweep's resolvers.

Each probe plans its own targets (a ``plan(service, pc)`` function in its module, named by its
registry line); these are the pieces they share. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from blockwatch.probes.model import Service
from blockwatch.probes.scope import is_ip


@dataclass(frozen=True, slots=True)
class PlanContext:
    """The sweep's side of planning: the resolvers to ask, the control resolvers,
    ``silent`` addresses where no DNS server runs (any answer from there is forged), and each
    probe's own settings (``[probe.NAME]``)."""

    resolvers: Sequence[str] = ("system",)
    controls: Sequence[str] = ()
    silent: Sequence[str] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)  # each probe's knobs, by name


def url_endpoint(url: str) -> tuple[str, int, bool]:
    """(host, port, TLS?) of a URL."""
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    return parts.hostname or "", parts.port or (443 if tls else 80), tls


def hosts(service: Service) -> list[str]:
    """The service's names: its domains, then its URLs' hosts, then its endpoints' hosts (an
    app's chat servers: their DNS is evidence of their own; IP literals left out)."""
    out = list(service.domains)
    for host in [*(url_endpoint(u)[0] for u in service.urls),
                 *(e.host for e in service.endpoints)]:
        if host not in out and not is_ip(host):
            out.append(host)
    return out


def tcp_endpoints(service: Service) -> dict[tuple[str, int], bool]:
    """The service's TCP endpoints, (host, port) -> speaks TLS: its URLs', then its extra
    endpoints (a named host on 443 is taken to speak TLS)."""
    out: dict[tuple[str, int], bool] = {}
    for url in service.urls:
        host, port, tls = url_endpoint(url)
        out[(host, port)] = out.get((host, port), False) or tls
    for ep in service.endpoints:
        if ep.transport == "tcp":
            key = (ep.host, ep.port)
            out[key] = out.get(key, False) or ep.tls or (ep.port == 443 and not is_ip(ep.host))
    return out
