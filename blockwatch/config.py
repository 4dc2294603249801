"""Configuration: one TOML file, validated once at the edge with pydantic.

Everything below this module receives typed objects; nothing else reads the config file or the
environment. A wrong key, type or value raises ``ConfigError`` whose message names the key and,
where it can be found, the file and line; nothing is measured or written.

Size: one pydantic model per TOML table, the ``Config`` that checks across tables, and the error
formatting that finds a wrong key's file and line; the tables are one schema (the README's
configuration reference follows it) validated in one place, which is this module's guarantee.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

import platformdirs
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from blockwatch.errors import ConfigError as ConfigError  # re-exported: callers import it here
from blockwatch.probes import registry
from blockwatch.probes.catalogue import (
    CatalogueError,
    load_catalogue,
    service_from_dict,
    vpn_from_dict,
)
from blockwatch.probes.model import Service
from blockwatch.probes.resolvers import parse_resolver
from blockwatch.probes.scope import parse_entry

if TYPE_CHECKING:
    from blockwatch.inputs import InputList

# the names [probes] probes accepts and its default, from the probe registry (opt-in probes
# such as "trace", raw-packet evidence that needs CAP_NET_RAW, are not in the default)
PROBE_NAMES: tuple[str, ...] = registry.DEFAULT_SELECTION


def _known_probe(name: str) -> str:
    if name not in registry.SELECTABLE:
        raise ValueError(f"unknown probe {name!r}: the probes are "
                         f"{', '.join(registry.SELECTABLE)}")
    return name


ProbeName = Annotated[str, AfterValidator(_known_probe)]
DEFAULT_CONTROLS = ["https://1.1.1.1/dns-query", "tls://9.9.9.9#dns.quad9.net"]
DEFAULT_BASELINE = ["1.1.1.1:443", "9.9.9.9:443", "8.8.8.8:443"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_socks(v: str | None) -> str | None:
    if v is None:
        return v
    parts = urlsplit(v)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("socks5", "socks5h") or not parts.hostname or not port:
        raise ValueError("must look like socks5://HOST:PORT")
    return v


class Vantage(_Strict):
    name: str = Field(default="default", min_length=1, max_length=64)
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    asn: int | None = Field(default=None, gt=0, lt=2**32)
    socks5_proxy: str | None = None
    source_address: str | None = None

    _proxy = field_validator("socks5_proxy")(_check_socks)

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


class Collector(_Strict):
    """``[collector]``: where this vantage submits its runs (blockwatch/collector/outbox.py)."""

    url: str | None = Field(default=None, max_length=2048)
    token_file: Path | None = None
    ca_file: Path | None = None
    timeout: float = Field(default=30.0, gt=0, le=600)
    # at most this long is spent submitting at the end of a run (the rest waits for the next)
    flush_budget_s: float = Field(default=60.0, ge=0, le=3600)
    # before each run, fetch the control vantages' recent measurements from the collector and
    # judge this run against them (blockwatch/collector/controls.py)
    controls: bool = True

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None:
            parts = urlsplit(v)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be https://HOST[:PORT] (or http:// on a trusted link)")
        return v

    @field_validator("ca_file", "token_file")
    @classmethod
    def _file(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"file {v} does not exist")
        return v

    @model_validator(mode="after")
    def _token(self) -> Collector:
        if self.url is not None and self.token_file is None:
            raise ValueError("url needs token_file (blockwatch collector token add prints the "
                             "token to put in it)")
        return self


class Timeouts(_Strict):
    dns: PositiveSeconds = 4.0
    tcp: PositiveSeconds = 10.0
    tls: PositiveSeconds = 10.0
    http: PositiveSeconds = 15.0


class Concurrency(_Strict):
    # names in flight (every probe of a name runs together); lower it on a weak link
    total: int = Field(default=256, ge=1, le=20000, alias="global")
    # connections in flight to one server address
    per_host: int = Field(default=8, ge=1, le=256)
    # DNS queries in flight at one resolver (a home router's dnsmasq serves 150 at most), and
    # at most this many new queries a second (0: no rate limit)
    per_resolver: int = Field(default=100, ge=1, le=4096)
    per_resolver_qps: float = Field(default=0, ge=0, le=100000)


def _check_resolvers(values: list[str]) -> list[str]:
    for v in values:
        parse_resolver(v)
    return values


class DNS(_Strict):
    resolvers: list[str] = Field(default_factory=lambda: ["system"], min_length=1)
    controls: list[str] = Field(default_factory=lambda: list(DEFAULT_CONTROLS))
    # UDP retransmissions of an unanswered query within its timeout (with backoff)
    retries: int = Field(default=2, ge=0, le=5)
    # a query that got no response at all is asked once more before its silence counts
    confirm: bool = True
    # addresses where no DNS server runs, on a path through the network under test: any answer
    # from one was forged on the way (an on-path injector)
    silent: list[str] = Field(default_factory=list, max_length=8)

    _r = field_validator("resolvers", "controls")(_check_resolvers)

    @field_validator("silent")
    @classmethod
    def _silent(cls, v: list[str]) -> list[str]:
        for entry in v:
            try:
                ipaddress.ip_address(entry)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address (a silent address is an "
                                 "address where no DNS server runs)") from None
        return v


_HOSTNAME_OR_EMPTY = r"^$|^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"


class TLS(_Strict):
    ca_bundle: Path | None = None
    # after a handshake with the real server name fails, the same address is tried with this
    # harmless name: SNI filtering lets it through, address blocking and outages do not
    control_sni: str = Field(default="example.com", max_length=253, pattern=_HOSTNAME_OR_EMPTY)

    @field_validator("ca_bundle")
    @classmethod
    def _exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"file {v} does not exist")
        return v


class Probes(_Strict):
    scope: list[str] = Field(default_factory=lambda: ["public", "system-resolvers"], min_length=1)
    # the catalogue's services to sweep: unset = all of them, unless test lists are given
    # ([inputs], --input-file), then none; [] = none; ["all"] = every one
    services: list[str] | None = None
    probes: list[ProbeName] = Field(default_factory=lambda: list(PROBE_NAMES), min_length=1)

    @field_validator("scope")
    @classmethod
    def _scope(cls, v: list[str]) -> list[str]:
        for entry in v:
            parse_entry(entry)
        return v


class Inputs(_Strict):
    """Test lists: every URL is a target of its own (DNS, TCP/TLS to every address, HTTP),
    judged and reported on its own, named by its URL, grouped by its category."""

    # plain URL lists, Citizen Lab test-list CSVs, OONI Run v2 descriptors (JSON); relative
    # paths are read from the config file's folder
    files: list[Path] = Field(default_factory=list)
    format: Literal["auto", "plain", "csv", "ooni-run"] = "auto"
    # only the URLs of these category codes (Citizen Lab's NEWS, HUMR, ...); empty = all
    categories: list[Annotated[str, Field(min_length=1, max_length=32)]] = Field(
        default_factory=list)


class Baseline(_Strict):
    endpoints: list[str] = Field(default_factory=lambda: list(DEFAULT_BASELINE))
    timeout: PositiveSeconds = 5.0

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: list[str]) -> list[str]:
        from blockwatch.probes.catalogue import parse_endpoint

        for e in v:
            ep = parse_endpoint(e)
            ipaddress.ip_address(ep.host)  # an address: the check must not depend on DNS
        return v


_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?"
                       r"(?:(\d+(?:\.\d+)?)s)?$")


def parse_duration(value: object) -> float:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"1h30m"``, ``"1d"``; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like 90s, 15m, 1h30m or a number of seconds")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip().lower()
    m = _DURATION.match(text)
    if not text or m is None or not any(m.groups()):
        raise ValueError(f"{value!r} is not a duration (use e.g. 90s, 15m, 1h30m, 1d)")
    days, hours, minutes, seconds = (float(g or 0) for g in m.groups())
    return days * 86400 + hours * 3600 + minutes * 60 + seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
GROUP_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Analysis(_Strict):
    # OONI-format fingerprint files (or folders of *.json), beside the built-in set; they are
    # validated when a command loads them (probes.fingerprints names the bad entry)
    fingerprints: list[Path] = Field(default_factory=list)
    # vantages whose measurements in the same database are controls for this one (e.g. an
    # uncensored VPS, a second blockwatch through a VPN), and how far apart in time (hours)
    # their measurements may be from this run's
    control_vantages: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list)
    control_max_age_h: float = Field(default=6.0, gt=0, le=24 * 30)
    # a SOCKS5 proxy whose exit is outside the censored network (e.g. Tor's, socks5://
    # 127.0.0.1:9050): every sweep also probes TCP/TLS/HTTP through it, as the control vantage
    # control_proxy_vantage (default: this vantage's name + "-via-proxy")
    control_proxy: str | None = None
    control_proxy_vantage: str | None = Field(default=None, min_length=1, max_length=64)

    _control_proxy = field_validator("control_proxy")(_check_socks)

    @field_validator("fingerprints")
    @classmethod
    def _exist(cls, v: list[Path]) -> list[Path]:
        for p in v:
            if not p.exists():
                raise ValueError(f"{p} does not exist")
        return v


class Schedule(_Strict):
    """One schedule group: what it runs, when, for how long at most, and from which vantage."""

    name: str = Field(pattern=GROUP_NAME)
    services: list[str] = Field(default_factory=list)
    categories: list[str] = Field(default_factory=list)
    every: Duration | None = Field(default=None, ge=1, le=366 * 86400)
    cron: str | None = None
    spread: Duration = Field(default=0.0, ge=0, le=366 * 86400)
    max_runtime: Duration | None = Field(default=None, gt=0, le=7 * 86400)
    vantage: str | None = Field(default=None, min_length=1, max_length=64)

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        from blockwatch.scheduler.groups import validate_cron

        return None if v is None else validate_cron(v)

    @model_validator(mode="after")
    def _when(self) -> Schedule:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of every (e.g. \"1h\") or cron (e.g. \"0 * * * *\")")
        if self.every is not None and self.spread > self.every:
            raise ValueError("spread must not be longer than every (runs would overlap)")
        return self


class Config(_Strict):
    # true: the user has read what blockwatch does (README, `blockwatch consent`) and agrees to
    # unattended runs; without it an unattended run refuses
    consent: StrictBool = False  # true or false: "yes" is not an informed answer
    vantage: Vantage = Field(default_factory=Vantage)
    storage: Storage = Field(default_factory=Storage)
    collector: Collector = Field(default_factory=Collector)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    concurrency: Concurrency = Field(default_factory=Concurrency)
    dns: DNS = Field(default_factory=DNS)
    tls: TLS = Field(default_factory=TLS)
    probes: Probes = Field(default_factory=Probes)
    baseline: Baseline = Field(default_factory=Baseline)
    analysis: Analysis = Field(default_factory=Analysis)
    inputs: Inputs = Field(default_factory=Inputs)
    services: list[dict[str, Any]] = Field(default_factory=list)
    vpn: list[dict[str, Any]] = Field(default_factory=list)
    schedules: list[Schedule] = Field(default_factory=list)
    # [probe.NAME] tables: each probe's own knobs, checked by the model its registry line names
    # (probes.registry.Spec.settings); validated, they are that model's instances
    probe: dict[str, Any] = Field(default_factory=dict)

    # derived, set by load_config
    source: str = Field(default="(defaults)", exclude=True)
    digest: str = Field(default="", exclude=True)
    _catalogue: dict[str, Service] | None = PrivateAttr(default=None)

    @field_validator("probe")
    @classmethod
    def _probe_settings(cls, v: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, table in v.items():
            model = registry.settings_model(name)
            if model is None:
                with_knobs = [s.name for s in registry.SPECS if s.settings]
                raise ValueError(f"[probe.{name}]: no probe {name!r} with settings (those "
                                 f"with settings: {', '.join(with_knobs) or 'none'})")
            if not isinstance(table, dict):
                raise ValueError(f"[probe.{name}] must be a table")
            try:
                out[name] = model(**table)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"probe.{name}.{where}: {first['msg']}") from None
        return out

    def probe_settings(self) -> dict[str, Any]:
        """Each probe with knobs: its settings (the config's, or the model's defaults)."""
        out: dict[str, Any] = {}
        for spec in registry.SPECS:
            model = registry.settings_model(spec.name) if spec.settings else None
            if model is not None:
                out[spec.name] = self.probe.get(spec.name) or model()
        return out

    def storage_url(self) -> str:
        if self.storage.url:
            return self.storage.url
        data = Path(platformdirs.user_data_dir("blockwatch", appauthor=False))
        return f"sqlite:///{data / 'blockwatch.db'}"

    def catalogue(self) -> dict[str, Service]:
        """Built-in services plus the custom ones (a custom service may replace a built-in).
        Built once per config (a copy each call: callers may change theirs)."""
        if self._catalogue is None:
            self._catalogue = self._build_catalogue()
        return dict(self._catalogue)

    def _build_catalogue(self) -> dict[str, Service]:
        services = load_catalogue()
        for i, body in enumerate(self.services):
            name = body.get("name")
            if not isinstance(name, str):
                raise ConfigError(f"{self.source}: services[{i}].name: a name is required")
            try:
                services[name] = service_from_dict(name, body, self._base())
            except CatalogueError as exc:
                raise ConfigError(f"{self.source}: services[{i}]: {exc}") from None
        for i, body in enumerate(self.vpn):
            # each [[vpn]] entry joins the service it names (`service`, default: its own name)
            body = dict(body)
            service = str(body.pop("service", body.get("name", f"vpn{i}")))
            try:
                ep = vpn_from_dict(f"vpn[{i}]", body)
            except CatalogueError as exc:
                raise ConfigError(f"{self.source}: {exc}") from None
            if ep.key_file is not None and not Path(ep.key_file).is_file():
                raise ConfigError(f"{self.source}: vpn[{i}].key_file: {ep.key_file} is not a "
                                  "readable file")
            old = services.get(service)
            services[service] = (dataclasses.replace(old, vpn=(*old.vpn, ep)) if old else
                                 Service(name=service, title=service, category="vpn",
                                         vpn=(ep,)))
        return services

    def _base(self) -> Path:
        """Where the config's relative file names live: the config file's directory."""
        return Path(self.source).parent if self.source not in ("(defaults)", "<config>") \
            else Path(".")

    def input_lists(self, files: Sequence[str | Path] = (), fmt: str | None = None
                    ) -> list[InputList]:
        """The test lists of ``[inputs] files`` (relative to the config file) and ``files``
        (from the command line); ``InputError`` names a bad file and line."""
        from blockwatch.inputs import load_inputs

        base = self._base()
        paths = [p if p.is_absolute() else base / p for p in self.inputs.files]
        return [load_inputs(p, fmt or self.inputs.format) for p in [*paths, *map(Path, files)]]

    def input_services(self, lists: Sequence[InputList]) -> list[Service]:
        """One service per URL of the lists (the first list naming a URL gives its category),
        only of ``[inputs] categories`` if any are set."""
        from blockwatch.inputs import services_from_inputs

        wanted = set(self.inputs.categories)
        found: dict[str, Service] = {}
        for lst in lists:
            for s in services_from_inputs(lst):
                if not wanted or s.category in wanted:
                    found.setdefault(s.name, s)
        return list(found.values())

    def selected_services(self, names: Sequence[str] | None = None,
                          inputs: Sequence[Service] = ()) -> list[Service]:
        """The services of a run: ``names`` (the command line's), else ``[probes] services``
        (unset: the whole catalogue, unless test lists give the run its targets), plus the
        ``inputs`` (the test lists' URLs)."""
        catalogue = self.catalogue()
        if names:
            wanted = list(names)
        elif self.probes.services is not None:
            wanted = list(self.probes.services)
        else:
            wanted = [] if inputs else list(catalogue)
        if "all" in wanted and "all" not in catalogue:
            wanted = [*catalogue, *(n for n in wanted if n != "all")]
        from_inputs = {s.name for s in inputs}
        unknown = [n for n in wanted if n not in catalogue and n not in from_inputs]
        if unknown:
            where = "--service" if names else f"{self.source}: probes.services"
            raise ConfigError(
                f"{where}: unknown service {unknown[0]!r}; known: {', '.join(sorted(catalogue))}"
            )
        chosen = [catalogue[n] for n in dict.fromkeys(wanted) if n in catalogue]
        taken = {s.name for s in chosen}
        chosen += [s for s in inputs if s.name not in taken]
        if not chosen:
            raise ConfigError(
                f"{self.source}: nothing to measure: [probes] services is empty and no test "
                "list was given (--input-file FILE, [inputs] files, or services = [\"all\"] "
                "for the built-in catalogue)")
        return chosen

    def schedule(self, name: str) -> Schedule:
        for group in self.schedules:
            if group.name == name:
                return group
        known = ", ".join(g.name for g in self.schedules) or "none: add [[schedules]]"
        raise ConfigError(f"{self.source}: no schedule group {name!r} (known: {known})")

    def group_services(self, group: Schedule, inputs: Sequence[Service] = ()) -> list[Service]:
        """The group's services and categories (of the catalogue, then of the test lists'
        URLs) in order, or the run default."""
        if not group.services and not group.categories:
            return self.selected_services(inputs=inputs)
        wanted = set(group.services)
        return [s for s in [*self.catalogue().values(), *inputs]
                if s.name in wanted or s.category in group.categories]

    def _check_schedules(self, text: str) -> None:
        catalogue = self.catalogue()
        categories = {s.category for s in catalogue.values()}
        seen: set[str] = set()
        for i, group in enumerate(self.schedules):
            def fail(key: str, problem: str, i: int = i) -> ConfigError:
                line = _find_line(text, ("schedules", i, key))
                where = f"{self.source}:{line}" if line else self.source
                return ConfigError(f"{where}: schedules[{i}].{key}: {problem}")

            if group.name in seen:
                raise fail("name", f"group {group.name!r} is defined twice")
            seen.add(group.name)
            unknown = [n for n in group.services if n not in catalogue]
            if unknown:
                raise fail("services", f"unknown service {unknown[0]!r}; see `blockwatch services`")
            bad = [c for c in group.categories if c not in categories]
            if bad and not self.inputs.files:  # a test list's categories are known at run time
                raise fail("categories", f"unknown category {bad[0]!r}; known: "
                           f"{', '.join(sorted(categories))}")


def _find_line(text: str, loc: tuple[int | str, ...]) -> int | None:
    """Best-effort line number of a key path in TOML text (pydantic knows no positions).

    ``[[name]]`` tables are counted, so ``("schedules", 1, "every")`` finds the second group's
    ``every``; trailing list indexes (an item of an inline array) point at the array's key.
    """
    target = list(loc)
    found = _line_of(text, target)
    while found is None and target and isinstance(target[-1], int):
        target.pop()
        found = _line_of(text, target)
    return found


def _line_of(text: str, target: list[int | str]) -> int | None:
    table: list[int | str] = []
    counts: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        header = re.match(r"^(\[\[?)\s*([^\]]+?)\s*\]\]?", stripped)
        if header:
            table = [p.strip().strip('"') for p in header.group(2).split(".")]
            if header.group(1) == "[[":
                key = ".".join(str(p) for p in table)
                counts[key] = counts.get(key, -1) + 1
                table.append(counts[key])
            if table == target:
                return lineno
            continue
        m = re.match(r"^([A-Za-z0-9_\-\"]+)\s*=", stripped)
        if m and [*table, m.group(1).strip('"')] == target:
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
    except RecursionError:  # tomllib recurses once per level of nested arrays and tables
        raise ConfigError(f"{source}: values nested too deeply to be a blockwatch config") \
            from None
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source, text)) from None
    except RecursionError:
        raise ConfigError(f"{source}: values nested too deeply to be a blockwatch config") \
            from None
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    cfg = cfg.model_copy(update={"source": source, "digest": digest})
    try:
        cfg.catalogue()  # custom services are validated now, before anything runs
    except ConfigError as exc:
        raise ConfigError(_with_line(str(exc), source, text)) from None
    cfg._check_schedules(text)
    return cfg


def _with_line(message: str, source: str, text: str) -> str:
    """``source: services[2]...`` as ``source:LINE: services[2]...`` (the table's own line)."""
    m = re.match(rf"^{re.escape(source)}: (services|vpn)\[(\d+)\]", message)
    line = _find_line(text, (m.group(1), int(m.group(2)))) if m else None
    return f"{source}:{line}{message[len(source):]}" if line else message


def default_config_path() -> Path:
    """Where ``blockwatch init`` writes the config every command reads by default
    ($XDG_CONFIG_HOME/blockwatch/config.toml)."""
    return Path(platformdirs.user_config_dir("blockwatch", appauthor=False)) / "config.toml"


def load_config(path: str | Path | None) -> Config:
    """Load and validate a config file; ``None`` means the one ``blockwatch init`` wrote
    (``default_config_path``) if there is one, else the built-in defaults."""
    if path is None:
        default = default_config_path()
        if not default.is_file():
            return Config()
        path = default
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc}") from None
    if not text.strip():
        print(f"blockwatch: note: {p} is empty: the built-in defaults apply", file=sys.stderr)
    return parse_config(text, str(p))
