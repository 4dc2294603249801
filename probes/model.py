"""The vocabulary of blockwatch: services, targets, observations, measurements, verdicts.

Everything here is a frozen, slotted, keyword-only dataclass with no I/O, so that every other
package (storage, scheduler, reports, the CLI) can share it without importing each other.
Observations are facts; verdicts are opinions computed from them by versioned rules.

Size: this is the vocabulary, one small dataclass per record every package shares (services,
targets, each probe's observation type, measurements, verdicts, runs) and the observations' dict
round trip; nothing in it acts, and one module keeps every package importing one vocabulary
instead of several.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

Probe = Literal["dns", "tcp", "tls", "http"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """A host:port that a service's clients talk to."""

    host: str
    port: int
    transport: Literal["tcp", "udp"] = "tcp"
    tls: bool = False

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


VPN_PROTOCOLS = ("openvpn", "ikev2", "wireguard", "pptp", "l2tp", "tor", "obfs4", "shadowsocks")
# protocols that answer nobody without their secret: only TCP reachability can be measured
SILENT_PROTOCOLS = ("obfs4", "shadowsocks")


@dataclass(frozen=True, slots=True, kw_only=True)
class VPNEndpoint:
    """A VPN server endpoint. ``options`` are non-secret (e.g. ("tls_auth", "yes")); a key
    file path is kept apart in ``key_file`` and its contents never leave memory."""

    name: str
    protocol: str
    host: str
    port: int
    transport: str = "udp"
    options: tuple[tuple[str, str], ...] = ()
    key_file: str | None = None


@dataclass(frozen=True, slots=True)
class AppPart:
    """One function of an app, measured at its endpoints, as OONI's experiment for the app
    measures it (WhatsApp's chat endpoints, registration server and web client; Telegram's data
    centres and web client; Signal's backend; Messenger's endpoints).

    ``endpoints``: target keys, ``host:port`` (the tcp/tls measurements there) or a URL (the
    http measurement of it). A host counts as blocked only when every endpoint of it is (OONI's
    WhatsApp: 443 and 5222), as working when one of them works. ``blocked_when``: ``"all"``,
    the part is blocked when every host is (the app tries them in turn: Telegram's data
    centres), degraded when some are and others work; ``"any"``, blocked when one host is (the
    app needs them all: Signal's backend). ``core``: the app cannot work without it (a web
    client is not core)."""

    name: str
    endpoints: tuple[str, ...]
    blocked_when: str = "all"
    core: bool = True


@dataclass(frozen=True, slots=True)
class AppRule:
    """An app-level verdict rule from the catalogue: the app's parts (``AppPart``)."""

    parts: tuple[AppPart, ...]
    text: str = ""

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(e for p in self.parts for e in p.endpoints))


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """How a service's TLS is checked, when it is not the default: ``ca_file``, a PEM bundle
    that alone is trusted for the service's names (a pinned CA, as OONI's Signal test pins
    Signal's; the system store and ``[tls] ca_bundle`` are not used); ``alpn``, the protocols
    offered instead of h2 and http/1.1."""

    ca_file: str | None = None
    alpn: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    """A named thing people use, with its endpoints and the facts expected about it."""

    name: str
    title: str
    category: str
    domains: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    asns: tuple[int, ...] = ()
    prefixes: tuple[str, ...] = ()
    exclusive_prefixes: bool = False
    cert_names: tuple[str, ...] = ()
    source: str = ""
    vpn: tuple[VPNEndpoint, ...] = ()
    app: AppRule | None = None
    tls: TLSSettings | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """One thing a probe measures: a name at a resolver, an endpoint, or a URL."""

    service: str
    probe: str
    host: str
    port: int | None = None
    url: str | None = None
    resolver: str | None = None
    sni: str | None = None
    transport: str | None = None  # "udp" or "tcp" for VPN probes
    # non-secret probe options, stored with the measurement (e.g. ("tls_auth", "yes")); key
    # material never goes here: it reaches the probe through ProbeContext.secrets
    options: tuple[tuple[str, str], ...] = ()
    # the service's category (a test list's category code, e.g. NEWS), for grouping results
    category: str | None = None

    @property
    def key(self) -> str:
        """A stable, human-readable identifier of the target, stored with the measurement."""
        if self.url is not None:
            return self.url
        if self.probe == "dns":
            return f"{self.host}@{self.resolver or 'system'}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        suffix = f"#{self.sni}" if self.sni and self.sni != self.host else ""
        scheme = f"{self.transport}://" if self.transport else ""
        return f"{scheme}{host}:{self.port}{suffix}"

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k in _TARGET_FIELDS if (v := getattr(self, k)) is not None}
        if not self.options:
            out.pop("options", None)
        else:
            out["options"] = [list(kv) for kv in self.options]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Target:
        data = dict(data)
        data["options"] = tuple(tuple(kv) for kv in data.get("options", ()))
        return cls(**data)


_TARGET_FIELDS = tuple(f.name for f in dataclasses.fields(Target))


# --- observations -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DNSAnswer:
    rtype: str
    value: str
    ttl: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DNSResponse:
    """One DNS response received for a query (a censor may send several)."""

    t: float  # seconds after the query was sent
    source: str  # address:port the response came from
    id: int
    flags: int
    rcode: str
    answers: tuple[DNSAnswer, ...] = ()
    ip_ttl: int | None = None
    malformed: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DNSObservation:
    layer: str = field(default="dns", init=False)
    resolver: str
    transport: str
    qname: str
    qtype: str
    t0: float
    responses: tuple[DNSResponse, ...] = ()
    failure: str | None = None
    # 1: the query; 2: asked again, anew, because the first got no response at all
    attempt: int = 1
    transmissions: int = 1  # UDP: sent this many times (retransmitted while unanswered)
    dropped: int = 0  # responses beyond the ones kept (a flood), counted only

    @property
    def addresses(self) -> tuple[str, ...]:
        """Addresses from the first well-formed response (what a stub resolver would use)."""
        for resp in self.responses:
            if resp.malformed is None:
                return tuple(a.value for a in resp.answers if a.rtype in ("A", "AAAA"))
        return ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TCPObservation:
    layer: str = field(default="tcp", init=False)
    address: str
    port: int
    t0: float
    t: float
    failure: str | None = None
    # set when the address is not from this vantage's own lookup but from a control
    # resolver's answer (the resolver), tried only to compare: it never decides the outcome
    answer_of: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSObservation:
    layer: str = field(default="tls", init=False)
    address: str
    port: int
    sni: str | None
    t0: float
    t: float
    version: str | None = None
    cipher: str | None = None
    alpn: str | None = None
    peer_chain_sha256: tuple[str, ...] = ()
    # the certificates themselves, base64 DER, leaf first: bounded (probes.tls.CHAIN_LIMITS),
    # so a chain longer or larger than that keeps its first certificates only
    peer_chain_der: tuple[str, ...] = ()
    cert_subject: str | None = None
    cert_sans: tuple[str, ...] = ()
    cert_not_after: str | None = None
    verified: bool | None = None
    verify_error: str | None = None
    failure: str | None = None
    # a handshake with the control SNI (a harmless name) on the same address, made after the
    # real name failed: unverified, it only asks whether the address answers TLS at all
    control: bool = False
    # verified against the service's pinned CA (TLSSettings.ca_file): the SHA-256 of that PEM
    # file's bytes; None: the system store (and [tls] ca_bundle)
    ca_sha256: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPObservation:
    layer: str = field(default="http", init=False)
    url: str
    t0: float
    t: float
    status: int | None = None
    redirects: tuple[str, ...] = ()
    http_version: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body_length: int | None = None
    body_sha256: str | None = None
    body_truncated: bool = False
    title: str | None = None
    address: str | None = None
    failure: str | None = None
    # the first BODY_SAMPLE_CAP (8 KiB) characters of the decoded body, so block-page
    # fingerprints can be matched, and matched again by a later analyzer, without the body
    body_sample: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class VPNObservation:
    """One VPN handshake attempt. ``result``: ``reachable`` (the server answered its protocol),
    ``no_reply``, ``reset``, ``icmp_unreachable``, ``refused``, ``unverifiable`` (the protocol
    cannot be tested without key material the config does not give), ``malformed`` (a reply
    that is not the protocol)."""

    layer: str = field(default="vpn", init=False)
    protocol: str
    address: str
    port: int
    transport: str
    t0: float
    t: float
    result: str
    details: tuple[tuple[str, str], ...] = ()
    failure: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RawObservation:
    """Raw-packet evidence for one address (probes/trace.py)."""

    layer: str = field(default="raw", init=False)
    address: str
    port: int
    mode: str                       # "syn", "tls" (payload: a ClientHello naming sni) or "http"
    sni: str | None
    t0: float
    t: float
    capture: bool                   # False: no CAP_NET_RAW, nothing below was observed
    synack: dict[str, Any] | None = None      # {"ttl", "ipid", "df", "window"}
    resets: tuple[dict[str, Any], ...] = ()   # each {"ttl", "ipid", "df", "window", "flags",
    #                                           "after": "syn"|"data", "t"}
    reply: str | None = None        # full-TTL attempt: "data", "rst", "timeout", "refused",
    #                                 "synack" (mode syn) ...
    hops: tuple[dict[str, Any], ...] = ()     # each {"ttl": n, "result": "time_exceeded"|
    #                                           "synack"|"data"|"rst"|"silent", "from": addr}
    failure: str | None = None
    # Facts only: which RST was forged and where interference begins are the analysis's
    # readings (blockwatch.analysis.trace.read). Rows of trace version 1 also stored those
    # readings (forged_rst, rst_fingerprint, interference_ttl, ...); they are ignored on load.


class ProbeObservation:
    """The base of an observation type that a probe declares in its own module (its registry
    line names it, ``Spec.observation``), so that a new probe adds no type here: a frozen
    dataclass with these attributes (``layer`` a field with ``init=False``), facts only."""

    __slots__ = ()
    layer: str
    t0: float
    t: float
    failure: str | None


Observation = (DNSObservation | TCPObservation | TLSObservation | HTTPObservation
               | VPNObservation | RawObservation | ProbeObservation)
_LAYERS: dict[str, type[Any]] = {
    "dns": DNSObservation,
    "tcp": TCPObservation,
    "tls": TLSObservation,
    "http": HTTPObservation,
    "vpn": VPNObservation,
    "raw": RawObservation,
}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data: dataclasses as dicts of their fields, tuples as lists.
    What ``dataclasses.asdict`` gives, at a fraction of its cost (a sweep stores thousands of
    observations a second)."""
    kind = type(value)
    if value is None or kind in (str, int, float, bool):
        return value
    if kind is tuple or kind is list:
        return [plain(v) for v in value]
    if kind is dict:
        return {k: plain(v) for k, v in value.items()}
    names = _FIELD_NAMES.get(kind)
    if names is None:
        if not dataclasses.is_dataclass(value):
            return value
        names = _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(value))
    return {n: plain(getattr(value, n)) for n in names}


def observation_to_dict(obs: Observation) -> dict[str, Any]:
    out: dict[str, Any] = plain(obs)
    out["layer"] = obs.layer
    return out


_NAMES: dict[type, frozenset[str]] = {}


def _field_names(cls: type) -> frozenset[str]:
    found = _NAMES.get(cls)
    if found is None:
        found = _NAMES[cls] = frozenset(f.name for f in dataclasses.fields(cls))
    return found


def observation_from_dict(data: dict[str, Any]) -> Observation:
    """Rebuild an observation stored as JSON (tuples come back as lists)."""
    data = dict(data)
    layer = data.pop("layer", None)
    cls = _LAYERS.get(layer) if isinstance(layer, str) else None
    if cls is None and isinstance(layer, str):
        from blockwatch.probes.registry import observation_type

        cls = observation_type(layer)
    if cls is None:
        raise ValueError(f"an observation of unknown layer {layer!r}")
    if cls is DNSObservation:
        data["responses"] = tuple(
            DNSResponse(
                **{**r, "answers": tuple(DNSAnswer(**a) for a in r.get("answers", ()))}
            )
            for r in data.get("responses", ())
        )
    names = _field_names(cls)
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            continue
        if isinstance(v, list):
            v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        kwargs[k] = v
    obs: Observation = cls(**kwargs)
    return obs


# --- measurements and verdicts ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Measurement:
    """One probe of one target in one run."""

    id: str
    run_id: str
    vantage: str
    target: Target
    probe_version: str
    started_at: dt.datetime
    runtime_s: float
    observations: tuple[Observation, ...] = ()
    failure: str | None = None
    failed_operation: str | None = None
    # time spent waiting for our own limits (queries per resolver, connections per server,
    # sockets): part of runtime_s, never counted against a timeout
    queued_s: float = 0.0

    @property
    def service(self) -> str:
        return self.target.service

    @property
    def probe(self) -> str:
        return self.target.probe


# The verdicts: "ok", blocking at a layer ("dns_blocked", "tcp_blocked", "tls_blocked",
# "http_blocked", and "<layer>_blocked" for every layer the probe registry declares: "vpn_blocked",
# "stun_blocked", ...), and for a service "blocked", "partial", "down", "inconclusive",
# "network_unavailable", "error" (analysis.rules.BLOCKED is the set of blocking ones).


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """An opinion about a measurement (or a whole service), with the rule that produced it."""

    verdict: str
    rule_id: str
    analyzer_version: str
    service: str
    measurement_id: str | None = None
    layer: str | None = None
    evidence: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunInputs:
    """What a run's verdicts depended on besides its own measurements, recorded with the run
    so that a re-analysis judges it on the same facts: the resolvers and vantages whose
    measurements are controls, the local networks (real servers at bogon addresses, e.g. a lab
    or a LAN), and the window of *other runs'* measurements (of ``control_vantages``) that
    were read as controls; ``controls_until`` None: none were read (every control, if any, is
    in the run itself, as in an OONI import). ``controls_since`` None with ``controls_until``
    set: not recorded (a run from before schema 0004), the configured
    ``[analysis] control_max_age_h`` before the start."""

    control_resolvers: tuple[str, ...] = ()
    control_vantages: tuple[str, ...] = ()
    local_networks: tuple[str, ...] = ()
    controls_since: dt.datetime | None = None
    controls_until: dt.datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """One sweep from one vantage. ``status``: running, complete, interrupted, failed,
    network_unavailable. The vantage's public IP is never part of a run.

    ``inputs``: what its verdicts were judged on (None: a run stored before blockwatch
    recorded them). ``control_for``: this run is the control path of that run (its
    measurements are controls, never judged themselves)."""

    id: str
    vantage: str
    started_at: dt.datetime
    country: str | None = None
    asn: int | None = None
    finished_at: dt.datetime | None = None
    status: str = "running"
    software_version: str = ""
    config_hash: str = ""
    group: str | None = None
    baseline: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    inputs: RunInputs | None = None
    control_for: str | None = None
