"""What ooni/spec requires of a measurement, as strict typed models: the check of what
``blockwatch export --format ooni`` writes.

``blockwatch.ooni.models`` reads OONI's data leniently (real records miss fields and hold old
forms); these models are the other side, the spec as a writer must follow it (github.com/ooni/
spec ``data-formats/`` df-000 base, df-001 HTTP, df-002 DNS, df-005 TCP connect, df-006 TLS
handshake, ``nettests/`` ts-017 web_connectivity): every key the spec lists is present (null
where it allows), times have the spec's form (``YYYY-MM-DD HH:MM:SS``; a primitive's ``t0``
and ``t`` are seconds since the measurement began, not epoch times), endpoints are
``host:port`` with IPv6 bracketed, resolver addresses carry no scheme (DoH's URL aside), cipher
suites have IANA names, and the annotations OONI's clients always add are there. Extra keys are
allowed (df-000: extensions are ``x_`` keys). ``conform(record)`` returns the record as the
model of its test (``OONIError`` naming the field otherwise).
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from blockwatch.ooni.models import MaybeBinary, OONIError

OONI_TIME = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$"
Relative = Annotated[float, Field(ge=-86400.0, le=86400.0)]  # seconds since the start
Port = Annotated[int, Field(ge=0, le=65535)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True, allow_inf_nan=False)


def _endpoint(value: str) -> str:
    """``host:port``: an IPv6 host bracketed, the port a number."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError("not host:port")
    if host.startswith("["):
        ipaddress.IPv6Address(host.strip("[]"))
    elif ":" in host:
        raise ValueError("an IPv6 host must be bracketed")
    return value


class DNSAnswer(_Strict):
    answer_type: str
    ttl: int | None


class DNSQuery(_Strict):
    hostname: str
    query_type: str
    engine: Literal["system", "getaddrinfo", "udp", "tcp", "dot", "doh"]
    resolver_address: str
    resolver_hostname: str | None
    resolver_port: str | None
    failure: str | None
    answers: list[DNSAnswer] | None
    rcode: int | None
    transaction_id: int | None
    t0: Relative | None
    t: Relative | None

    @field_validator("resolver_address")
    @classmethod
    def _address(cls, value: str) -> str:
        if value and not value.startswith("https://"):
            if "://" in value:
                raise ValueError("a resolver address carries no scheme")
            _endpoint(value)
        return value


class TCPStatus(_Strict):
    success: bool
    failure: str | None


class TCPConnect(_Strict):
    ip: str
    port: Port
    status: TCPStatus
    t: Relative

    x_proxied: bool = False  # blockwatch: a name, connected to through a SOCKS5 proxy

    @model_validator(mode="after")
    def _ip(self) -> TCPConnect:
        if not self.x_proxied:
            ipaddress.ip_address(self.ip)
        return self


class Certificate(_Strict):
    """df-006: a peer certificate, base64 DER."""

    format: Literal["base64"]
    data: Annotated[str, Field(min_length=1)]

    @field_validator("data")
    @classmethod
    def _der(cls, value: str) -> str:
        der = base64.b64decode(value, validate=True)
        if der[:1] != b"\x30":  # a DER certificate is a SEQUENCE
            raise ValueError("not a DER certificate")
        return value


class TLSHandshake(_Strict):
    network: str
    address: str
    server_name: str | None
    failure: str | None
    tls_version: str | None
    cipher_suite: Annotated[str, Field(pattern=r"^TLS_[A-Za-z0-9_]+$")] | None
    negotiated_protocol: str | None
    no_tls_verify: bool
    peer_certificates: list[Certificate] | None
    t0: Relative | None
    t: Relative

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _endpoint(value)


class HTTPRequest(_Strict):
    url: str
    method: str
    headers_list: list[list[MaybeBinary]]
    headers: dict[str, MaybeBinary]
    body: MaybeBinary | None
    body_is_truncated: bool


class HTTPResponse(_Strict):
    code: int | None
    headers_list: list[list[MaybeBinary]]
    headers: dict[str, MaybeBinary]
    body: MaybeBinary | None
    body_is_truncated: bool


class HTTPTransaction(_Strict):
    request: HTTPRequest
    response: HTTPResponse | None
    failure: str | None
    t: Relative | None


class CommonKeys(_Strict):
    queries: list[DNSQuery]
    tcp_connect: list[TCPConnect]
    tls_handshakes: list[TLSHandshake]
    requests: list[HTTPTransaction]


class WebConnectivityKeys(CommonKeys):
    """ts-017: the keys OONI's pipeline reads (``control`` null: no test helper was asked, and
    then ``control_failure`` says so, as probe-cli writes it)."""

    agent: str
    client_resolver: str | None
    control: dict[str, Any] | None
    control_failure: str | None
    dns_experiment_failure: str | None
    http_experiment_failure: str | None
    dns_consistency: str | None
    body_length_match: bool | None
    body_proportion: float | None
    status_code_match: bool | None
    headers_match: bool | None
    title_match: bool | None
    accessible: bool | None
    blocking: Literal["dns", "tcp_ip", "http-failure", "http-diff", False] | None

    @model_validator(mode="after")
    def _control(self) -> WebConnectivityKeys:
        if self.control is None and not self.control_failure:
            raise ValueError("no control without a control_failure saying why")
        return self


class Annotations(_Strict):
    """df-000: what a client always adds; ``architecture`` and ``platform`` from the names the
    spec lists (and Go's other GOARCH names), "unknown" for a run that did not record them."""

    architecture: Literal["arm", "arm64", "386", "amd64", "riscv64", "ppc64le", "ppc64",
                          "s390x", "mips", "mipsle", "mips64", "loong64", "unknown"]
    engine_name: str
    engine_version: str
    platform: Literal["android", "freebsd", "ios", "lepidopter", "linux", "macos", "openbsd",
                      "windows", "unknown"]


class Measurement(_Strict):
    """df-000."""

    annotations: Annotations
    data_format_version: Literal["0.2.0"]
    extensions: dict[str, int]
    input: str | None
    measurement_start_time: Annotated[str, Field(pattern=OONI_TIME)]
    probe_asn: Annotated[str, Field(pattern=r"^AS\d+$")]
    probe_cc: Annotated[str, Field(pattern=r"^[A-Z]{2}$")]
    probe_ip: str
    probe_network_name: str  # "" when not looked up (probe-cli's DefaultProbeNetworkName)
    report_id: str
    resolver_asn: Annotated[str, Field(pattern=r"^AS\d+$")]
    resolver_ip: str
    resolver_network_name: str
    software_name: Annotated[str, Field(min_length=1)]
    software_version: Annotated[str, Field(min_length=1)]
    test_helpers: dict[str, Any]
    test_name: str
    test_runtime: float
    test_start_time: Annotated[str, Field(pattern=OONI_TIME)]
    test_version: str
    test_keys: CommonKeys


class WebConnectivity(Measurement):
    test_name: Literal["web_connectivity"]
    test_keys: WebConnectivityKeys


_NAME = re.compile(r"^blockwatch_[a-z0-9_]+$")


def conform(record: Mapping[str, Any]) -> Measurement:
    """``record`` checked against the spec (web_connectivity's keys for that test, df-000 and
    the primitives for a ``blockwatch_*`` one); ``OONIError`` with the first field that
    does not fit."""
    name = record.get("test_name")
    model: type[Measurement] = WebConnectivity if name == "web_connectivity" else Measurement
    if model is Measurement and not (isinstance(name, str) and _NAME.match(name)):
        raise OONIError(f"test_name {name!r} is neither web_connectivity nor blockwatch_*")
    try:
        return model.model_validate(record)
    except ValidationError as exc:
        e = exc.errors()[0]
        where = ".".join(str(p) for p in e["loc"])
        raise OONIError(f"{where}: {e['msg']}") from None
