"""The built-in service catalogue (``probes/data/services.toml``) and custom services.

A service table is validated here once, so the scheduler only ever sees well-formed Services;
a mistake raises ``CatalogueError`` naming the service and the key.
"""

from __future__ import annotations

import ipaddress
import ssl
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from blockwatch.probes.errors import CatalogueError as CatalogueError  # its home before errors.py
from blockwatch.probes.model import (
    SILENT_PROTOCOLS,
    VPN_PROTOCOLS,
    AppPart,
    AppRule,
    Endpoint,
    Service,
    TLSSettings,
    VPNEndpoint,
)

_KEYS = {"title", "category", "domains", "urls", "endpoints", "asns", "prefixes",
         "exclusive_prefixes", "cert_names", "source", "name", "vpn", "app", "tls"}
_VPN_KEYS = {"name", "protocol", "host", "port", "transport", "options", "key_file"}
_DEFAULT_PORTS = {"openvpn": 1194, "ikev2": 500, "wireguard": 51820, "pptp": 1723,
                  "l2tp": 1701, "tor": 443, "obfs4": 443, "shadowsocks": 8388}
_TRANSPORTS = {"ikev2": "udp", "wireguard": "udp", "l2tp": "udp", "pptp": "tcp", "tor": "tcp",
               "obfs4": "tcp", "shadowsocks": "tcp"}
_PART_KEYS = {"name", "endpoints", "blocked_when", "core"}
APP_RULES = {
    "all_chat_fail_with_working_control":
        "blocked if every chat endpoint fails (on every port) while the control succeeds",
    "any_chat_fail_with_working_control":
        "degraded if some chat endpoints fail while the control reaches them",
}


# the options each protocol reads, and what they may be (true/false are "yes"/"no")
VPN_OPTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "openvpn": {"tls_auth": ("yes", "no"), "tls_crypt": ("yes", "no"),
                "key_direction": ("0", "1", "none"), "auth": ("sha1", "sha256", "sha512")},
    "ikev2": {"natt": ("yes", "no")},
}


def _option_value(value: Any) -> str | None:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | str):
        return str(value)
    return None


def _vpn_options(where: str, protocol: str, options: Any) -> dict[str, str]:
    known = VPN_OPTIONS.get(protocol, {})
    if not isinstance(options, dict):
        raise CatalogueError(f"{where}: options must be a table ({_known(protocol)})")
    out: dict[str, str] = {}
    for key, raw in options.items():
        value = _option_value(raw)
        if key not in known:
            raise CatalogueError(f"{where}: options.{key} is not an option of {protocol} "
                                 f"({_known(protocol)})")
        if value is None or value.lower() not in known[key]:
            raise CatalogueError(f"{where}: options.{key} must be one of "
                                 f"{', '.join(known[key])} (true/false for yes/no)")
        out[key] = value.lower()
    return out


def _known(protocol: str) -> str:
    known = VPN_OPTIONS.get(protocol, {})
    return f"{protocol} has {', '.join(sorted(known))}" if known else f"{protocol} has none"


def vpn_from_dict(where: str, data: Mapping[str, Any]) -> VPNEndpoint:
    """One VPN endpoint (a catalogue ``vpn`` entry or a config ``[[vpn]]`` table)."""
    unknown = set(data) - _VPN_KEYS
    if unknown:
        raise CatalogueError(f"{where}: unknown key {sorted(unknown)[0]!r} (the keys are "
                             f"{', '.join(sorted(_VPN_KEYS))}, and service in a [[vpn]] table)")
    protocol = data.get("protocol")
    if protocol not in VPN_PROTOCOLS:
        raise CatalogueError(f"{where}: protocol must be one of {', '.join(VPN_PROTOCOLS)}")
    host = data.get("host")
    if not isinstance(host, str) or not host:
        raise CatalogueError(f"{where}: host is required")
    port = data.get("port", _DEFAULT_PORTS[protocol])
    if not isinstance(port, int) or not 0 < port < 65536:
        raise CatalogueError(f"{where}: port must be 1-65535")
    transport = data.get("transport", _TRANSPORTS.get(protocol, "udp"))
    if transport not in ("udp", "tcp") or (protocol in _TRANSPORTS
                                            and transport != _TRANSPORTS[protocol]):
        raise CatalogueError(f"{where}: transport {transport!r} is not possible for {protocol}")
    options = _vpn_options(where, protocol, data.get("options", {}))
    key_file = data.get("key_file")
    if key_file is not None and not isinstance(key_file, str):
        raise CatalogueError(f"{where}: key_file must be a path")
    if key_file is not None and protocol in SILENT_PROTOCOLS:
        raise CatalogueError(f"{where}: {protocol} is measured by TCP reachability only; "
                             "blockwatch does not use its key")
    name = data.get("name", f"{protocol}-{host}-{port}")
    return VPNEndpoint(name=str(name), protocol=protocol, host=host, port=port,
                       transport=transport, options=tuple(sorted(options.items())),
                       key_file=key_file)


def _app(name: str, data: Any) -> AppRule | None:
    """``app = { parts = [{ name, endpoints, blocked_when = "all"|"any", core = true }, ...],
    text = "..." }``, or the older ``{ chat_endpoints, rule }`` (one core part, "chat")."""
    if data is None:
        return None
    where = f"service {name!r}: app"
    if not isinstance(data, dict):
        raise CatalogueError(f"{where} must be a table of parts (or chat_endpoints, rule)")
    if "chat_endpoints" in data or "rule" in data:
        if set(data) - {"chat_endpoints", "rule"}:
            raise CatalogueError(f"{where}: chat_endpoints and rule go without other keys")
        rule = data.get("rule", "all_chat_fail_with_working_control")
        if rule not in APP_RULES:
            raise CatalogueError(f"{where}.rule must be one of {', '.join(APP_RULES)}")
        chat = _str_list(name, "app.chat_endpoints", data.get("chat_endpoints", []))
        if not chat:
            raise CatalogueError(f"{where}.chat_endpoints is empty")
        return AppRule(parts=(AppPart("chat", chat),), text=APP_RULES[rule])
    if set(data) - {"parts", "text"}:
        raise CatalogueError(f"{where}: unknown key {sorted(set(data) - {'parts', 'text'})[0]!r} "
                             "(parts, text)")
    raw = data.get("parts")
    if not isinstance(raw, list) or not raw:
        raise CatalogueError(f"{where}.parts must be a non-empty list of tables")
    parts: list[AppPart] = []
    for i, part in enumerate(raw):
        at = f"{where}.parts[{i}]"
        if not isinstance(part, dict) or set(part) - _PART_KEYS:
            raise CatalogueError(f"{at} must be a table of {', '.join(sorted(_PART_KEYS))}")
        pname = part.get("name")
        if not isinstance(pname, str) or not pname.strip():
            raise CatalogueError(f"{at}.name must be a non-empty string")
        if any(p.name == pname for p in parts):
            raise CatalogueError(f"{at}: a second part named {pname!r}")
        endpoints = _str_list(name, f"app.parts[{i}].endpoints", part.get("endpoints", []))
        if not endpoints:
            raise CatalogueError(f"{at}.endpoints is empty")
        when = part.get("blocked_when", "all")
        if when not in ("all", "any"):
            raise CatalogueError(f"{at}.blocked_when must be \"all\" or \"any\"")
        core = part.get("core", True)
        if not isinstance(core, bool):
            raise CatalogueError(f"{at}.core must be true or false")
        parts.append(AppPart(pname, endpoints, when, core))
    text = data.get("text", "")
    if not isinstance(text, str):
        raise CatalogueError(f"{where}.text must be a string")
    return AppRule(parts=tuple(parts), text=text)


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


_TLS_KEYS = {"ca_file", "alpn"}


def _tls(name: str, data: Any, base: Path | None) -> TLSSettings | None:
    """``tls = { ca_file = "signal-ca.pem", alpn = ["h2"] }``: the CA file (relative to
    ``base``) must exist and hold at least one PEM certificate that ``ssl`` can load."""
    if data is None:
        return None
    where = f"service {name!r}: tls"
    if not isinstance(data, dict):
        raise CatalogueError(f"{where} must be a table (ca_file, alpn)")
    unknown = set(data) - _TLS_KEYS
    if unknown:
        raise CatalogueError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    alpn = data.get("alpn", [])
    if not isinstance(alpn, list) or not all(
            isinstance(a, str) and 0 < len(a.encode()) < 256 for a in alpn):
        raise CatalogueError(f"{where}.alpn must be a list of protocol names (1-255 bytes)")
    ca_file = data.get("ca_file")
    if ca_file is not None:
        if not isinstance(ca_file, str) or not ca_file:
            raise CatalogueError(f"{where}.ca_file must be a path")
        path = Path(ca_file).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        try:
            ssl.create_default_context(cafile=str(path))
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise CatalogueError(f"{where}.ca_file: {path} is not a readable PEM CA bundle "
                                 f"({exc.__class__.__name__}: {exc})") from None
        ca_file = str(path)
    return TLSSettings(ca_file=ca_file, alpn=tuple(alpn))


def service_from_dict(name: str, data: Mapping[str, Any],
                      base: Path | None = None) -> Service:
    """A service from its catalogue table; ``base``: where relative file names (``tls.ca_file``)
    live (the catalogue's or the config's directory)."""
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
    vpn_list = data.get("vpn", [])
    if not isinstance(vpn_list, list):
        raise CatalogueError(f"service {name!r}: vpn must be a list of tables")
    vpn = tuple(vpn_from_dict(f"service {name!r}: vpn[{i}]", v if isinstance(v, dict) else {})
                for i, v in enumerate(vpn_list))
    app = _app(name, data.get("app"))
    if app:
        known = {*(str(e) for e in endpoints), *urls}
        missing = [e for e in app.endpoints if e not in known]
        if missing:
            raise CatalogueError(f"service {name!r}: app endpoint {missing[0]!r} is not among "
                                 "its endpoints or urls")
    if not (domains or urls or endpoints or vpn):
        raise CatalogueError(f"service {name!r}: needs at least one of domains, urls, endpoints")
    exclusive = data.get("exclusive_prefixes", False)
    if not isinstance(exclusive, bool):
        raise CatalogueError(f"service {name!r}: exclusive_prefixes must be true or false")
    if exclusive and not prefixes:
        raise CatalogueError(f"service {name!r}: exclusive_prefixes needs prefixes")
    tls = _tls(name, data.get("tls"), base)
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
        tls=tls,
        cert_names=_str_list(name, "cert_names", data.get("cert_names", [])),
        source=str(data.get("source", "")),
        vpn=vpn,
        app=app,
    )


def load_catalogue() -> dict[str, Service]:
    """The built-in catalogue, keyed by service name, in file order."""
    data_dir = resources.files("blockwatch.probes").joinpath("data")
    data = tomllib.loads(data_dir.joinpath("services.toml").read_text("utf-8"))
    base = Path(str(data_dir))  # a built-in tls.ca_file ships beside services.toml
    return {name: service_from_dict(name, body, base) for name, body in data["services"].items()}
