"""The built-in service catalogue (``probes/data/services.toml``) and custom services.

A service table is validated here once, so the scheduler only ever sees well-formed Services;
a mistake raises ``CatalogueError`` naming the service and the key.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from probes.model import Endpoint, Service

_KEYS = {"title", "category", "domains", "urls", "endpoints", "asns", "prefixes",
         "exclusive_prefixes", "cert_names", "source", "name"}


class CatalogueError(ValueError):
    """A service definition is wrong; the message names the service and key."""


def parse_endpoint(text: str) -> Endpoint:
    """``host:port``, ``[v6]:port`` or ``udp://host:port``."""
    transport = "tcp"
    raw = text
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme not in ("tcp", "udp"):
            raise ValueError(f"endpoint {raw!r}: scheme must be tcp:// or udp://")
        transport = scheme
    host, sep, port_s = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"endpoint {raw!r}: expected host:port")
    host = host.strip("[]")
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"endpoint {raw!r}: port {port_s!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"endpoint {raw!r}: port {port} out of range")
    return Endpoint(host=host, port=port, transport=transport)  # type: ignore[arg-type]


def _str_list(name: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise CatalogueError(f"service {name!r}: {key} must be a list of non-empty strings")
    return tuple(value)


def service_from_dict(name: str, data: Mapping[str, Any]) -> Service:
    unknown = set(data) - _KEYS
    if unknown:
        raise CatalogueError(f"service {name!r}: unknown key {sorted(unknown)[0]!r}")
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise CatalogueError(f"service {name!r}: name must be letters, digits, - or _")
    domains = _str_list(name, "domains", data.get("domains", []))
    urls = _str_list(name, "urls", data.get("urls", []))
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CatalogueError(f"service {name!r}: url {url!r} must be http(s)://host/...")
    try:
        endpoints = tuple(parse_endpoint(e) for e in _str_list(name, "endpoints",
                                                               data.get("endpoints", [])))
        prefixes = _str_list(name, "prefixes", data.get("prefixes", []))
        for p in prefixes:
            ipaddress.ip_network(p, strict=False)
    except ValueError as exc:
        raise CatalogueError(f"service {name!r}: {exc}") from None
    asns = data.get("asns", [])
    if not isinstance(asns, list) or not all(isinstance(a, int) and a > 0 for a in asns):
        raise CatalogueError(f"service {name!r}: asns must be a list of positive integers")
    if not (domains or urls or endpoints):
        raise CatalogueError(f"service {name!r}: needs at least one of domains, urls, endpoints")
    exclusive = data.get("exclusive_prefixes", False)
    if not isinstance(exclusive, bool):
        raise CatalogueError(f"service {name!r}: exclusive_prefixes must be true or false")
    if exclusive and not prefixes:
        raise CatalogueError(f"service {name!r}: exclusive_prefixes needs prefixes")
    return Service(
        name=name,
        title=str(data.get("title", name)),
        category=str(data.get("category", "other")),
        domains=domains,
        urls=urls,
        endpoints=endpoints,
        asns=tuple(asns),
        prefixes=prefixes,
        exclusive_prefixes=exclusive,
        cert_names=_str_list(name, "cert_names", data.get("cert_names", [])),
        source=str(data.get("source", "")),
    )


def load_catalogue() -> dict[str, Service]:
    """The built-in catalogue, keyed by service name, in file order."""
    text = resources.files("probes").joinpath("data/services.toml").read_text("utf-8")
    data = tomllib.loads(text)
    return {name: service_from_dict(name, body) for name, body in data["services"].items()}
