"""Configuration: one TOML file, validated once at the edge with pydantic.

Everything below this module receives typed objects; nothing else reads the config file or the
environment. A wrong key, type or value raises ``ConfigError`` whose message names the key and,
where it can be found, the file and line; nothing is measured or written.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from probes.catalogue import CatalogueError, load_catalogue, service_from_dict
from probes.model import Service
from probes.resolvers import parse_resolver
from probes.scope import parse_entry

ProbeName = Literal["dns", "tcp", "tls", "http"]
PROBE_NAMES: tuple[ProbeName, ...] = ("dns", "tcp", "tls", "http")
DEFAULT_CONTROLS = ["https://1.1.1.1/dns-query", "tls://9.9.9.9#dns.quad9.net"]
DEFAULT_BASELINE = ["1.1.1.1:443", "9.9.9.9:443", "8.8.8.8:443"]


class ConfigError(Exception):
    """The configuration is wrong; the message says where and what."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Vantage(_Strict):
    name: str = Field(default="default", min_length=1, max_length=64)
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    asn: int | None = Field(default=None, gt=0, lt=2**32)
    socks5_proxy: str | None = None
    source_address: str | None = None

    @field_validator("socks5_proxy")
    @classmethod
    def _proxy(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("socks5", "socks5h") or not parts.hostname or not parts.port:
            raise ValueError("must look like socks5://HOST:PORT")
        return v

    @field_validator("source_address")
    @classmethod
    def _source(cls, v: str | None) -> str | None:
        if v is not None:
            ipaddress.ip_address(v)
        return v


class Storage(_Strict):
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(sqlite|postgresql)(\+\w+)?://", v):
            raise ValueError("must be sqlite:///PATH or postgresql://USER@HOST/DB")
        return v


PositiveSeconds = Annotated[float, Field(gt=0, le=300)]


class Timeouts(_Strict):
    dns: PositiveSeconds = 4.0
    tcp: PositiveSeconds = 10.0
    tls: PositiveSeconds = 10.0
    http: PositiveSeconds = 15.0


class Concurrency(_Strict):
    total: int = Field(default=64, ge=1, le=4096, alias="global")
    per_host: int = Field(default=4, ge=1, le=256)
    per_resolver: int = Field(default=32, ge=1, le=1024)


def _check_resolvers(values: list[str]) -> list[str]:
    for v in values:
        parse_resolver(v)
    return values


class DNS(_Strict):
    resolvers: list[str] = Field(default_factory=lambda: ["system"], min_length=1)
    controls: list[str] = Field(default_factory=lambda: list(DEFAULT_CONTROLS))
    retries: int = Field(default=1, ge=0, le=5)

    _r = field_validator("resolvers", "controls")(_check_resolvers)


class TLS(_Strict):
    ca_bundle: Path | None = None

    @field_validator("ca_bundle")
    @classmethod
    def _exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"file {v} does not exist")
        return v


class Probes(_Strict):
    scope: list[str] = Field(default_factory=lambda: ["public", "system-resolvers"], min_length=1)
    services: list[str] = Field(default_factory=list)
    probes: list[ProbeName] = Field(default_factory=lambda: list(PROBE_NAMES), min_length=1)

    @field_validator("scope")
    @classmethod
    def _scope(cls, v: list[str]) -> list[str]:
        for entry in v:
            parse_entry(entry)
        return v


class Baseline(_Strict):
    endpoints: list[str] = Field(default_factory=lambda: list(DEFAULT_BASELINE))
    timeout: PositiveSeconds = 5.0

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: list[str]) -> list[str]:
        from probes.catalogue import parse_endpoint

        for e in v:
            ep = parse_endpoint(e)
            ipaddress.ip_address(ep.host)  # an address: the check must not depend on DNS
        return v


class Config(_Strict):
    vantage: Vantage = Field(default_factory=Vantage)
    storage: Storage = Field(default_factory=Storage)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    concurrency: Concurrency = Field(default_factory=Concurrency)
    dns: DNS = Field(default_factory=DNS)
    tls: TLS = Field(default_factory=TLS)
    probes: Probes = Field(default_factory=Probes)
    baseline: Baseline = Field(default_factory=Baseline)
    services: list[dict[str, Any]] = Field(default_factory=list)

    # derived, set by load_config
    source: str = Field(default="(defaults)", exclude=True)
    digest: str = Field(default="", exclude=True)

    def storage_url(self) -> str:
        if self.storage.url:
            return self.storage.url
        data = Path(platformdirs.user_data_dir("blockwatch", appauthor=False))
        return f"sqlite:///{data / 'blockwatch.db'}"

    def catalogue(self) -> dict[str, Service]:
        """Built-in services plus the custom ones (a custom service may replace a built-in)."""
        services = load_catalogue()
        for i, body in enumerate(self.services):
            name = body.get("name")
            if not isinstance(name, str):
                raise ConfigError(f"{self.source}: services[{i}].name: a name is required")
            try:
                services[name] = service_from_dict(name, body)
            except CatalogueError as exc:
                raise ConfigError(f"{self.source}: services[{i}]: {exc}") from None
        return services

    def selected_services(self, names: list[str] | None = None) -> list[Service]:
        catalogue = self.catalogue()
        wanted = names or self.probes.services or list(catalogue)
        unknown = [n for n in wanted if n not in catalogue]
        if unknown:
            raise ConfigError(
                f"unknown service {unknown[0]!r}; known: {', '.join(sorted(catalogue))}"
            )
        return [catalogue[n] for n in dict.fromkeys(wanted)]


def _find_line(text: str, loc: tuple[int | str, ...]) -> int | None:
    """Best-effort line number of a key path in TOML text (pydantic knows no positions)."""
    keys = [k for k in loc if isinstance(k, str)]
    table: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        header = re.match(r"^\[\[?\s*([^\]]+?)\s*\]\]?", stripped)
        if header:
            table = [p.strip().strip('"') for p in header.group(1).split(".")]
            if table == keys:
                return lineno
            continue
        m = re.match(r"^([A-Za-z0-9_\-\"]+)\s*=", stripped)
        if m and [*table, m.group(1).strip('"')] == keys:
            return lineno
    return None


def _format_errors(exc: ValidationError, source: str, text: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in loc).replace(".[", "[")
        if key == "concurrency.total":
            key = "concurrency.global"
        lineno = _find_line(text, tuple("global" if k == "total" else k for k in loc))
        where = f"{source}:{lineno}" if lineno else source
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{where}: {key}: {msg}")
    return "\n".join(lines)


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source, text)) from None
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    cfg = cfg.model_copy(update={"source": source, "digest": digest})
    cfg.catalogue()  # custom services are validated now, before anything runs
    return cfg


def load_config(path: str | Path | None) -> Config:
    """Load and validate a config file; ``None`` means built-in defaults (no file needed)."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc}") from None
    return parse_config(text, str(p))
