"""Resolver specifications: ``system``, ``udp://``, ``tcp://``, ``tls://`` and ``https://``.

Parsing only; the queries are in ``probes.dns``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"udp": 53, "tcp": 53, "tls": 853, "https": 443}


@dataclass(frozen=True, slots=True)
class ResolverSpec:
    """Where to send DNS queries.

    ``address`` is an IP literal for udp/tcp/tls; for https it is the host of the URL (an IP
    literal or a name that is looked up with the system resolver). ``server_name`` is the TLS name
    checked for DoT (``tls://1.1.1.1#cloudflare-dns.com``) and DoH.
    """

    scheme: str
    address: str = ""
    port: int = 0
    url: str | None = None
    server_name: str | None = None

    @property
    def is_system(self) -> bool:
        return self.scheme == "system"

    def __str__(self) -> str:
        if self.scheme == "system":
            return "system"
        if self.scheme == "https":
            return self.url or ""
        host = f"[{self.address}]" if ":" in self.address else self.address
        name = f"#{self.server_name}" if self.server_name else ""
        return f"{self.scheme}://{host}:{self.port}{name}"


def parse_resolver(text: str) -> ResolverSpec:
    """Parse a resolver string; raise ValueError naming what is wrong."""
    text = text.strip()
    if text == "system":
        return ResolverSpec("system")
    parts = urlsplit(text)
    scheme = parts.scheme
    if scheme not in DEFAULT_PORTS:
        raise ValueError(
            f"resolver {text!r}: scheme must be system, udp://, tcp://, tls:// or https://"
        )
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError(f"resolver {text!r}: invalid port") from None
    host = parts.hostname or ""
    if not host:
        raise ValueError(f"resolver {text!r}: no address")
    if scheme == "https":
        return ResolverSpec("https", host, port, url=text, server_name=host)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"resolver {text!r}: {scheme}:// needs an IP address (a name would need a resolver)"
        ) from None
    server_name = parts.fragment or None
    return ResolverSpec(scheme, host, port, server_name=server_name)
