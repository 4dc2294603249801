"""OONI's data formats, as blockwatch reads them: typed models, and why a record does not fit.

From OONI's specification (github.com/ooni/spec, ``data-formats/`` and ``nettests/``):

- ``OONIMeasurement``: the df-000 envelope (start time, probe_cc/asn, report_id, test_name,
  test_runtime, input, software, ``test_keys``);
- ``CommonKeys``, the test keys any test may hold: df-002 DNS ``queries``, df-005
  ``tcp_connect``, df-006 ``tls_handshakes``, df-001 HTTP ``requests`` (bodies and header values
  in OONI's MaybeBinaryData form, a string or ``{"format": "base64", "data": ...}``);
- ``WebConnectivityKeys`` (ts-017): those plus the test helper's ``control``, the HTTP
  experiment's failure and OONI's own ``blocking``/``accessible``.

Only the fields blockwatch reads are typed; every other field is kept as an extra, unchecked,
so that what OONI adds over the years does not stop an import. Lenient where real OONI data is:
those fields may be missing or null, and so may header values and the test helper's entries; an
integer is accepted where a number is specified, and old probes' ``"failure": false`` in a
tcp_connect status (df-005). Strict where blockwatch would otherwise guess: a value of the wrong
type ("443" for a port, a number for a host name, a null element of a list) is not coerced, and
``parse`` raises ``OONIError`` naming the field (the import counts the record as skipped).
Bounded: non-finite numbers, times beyond ``MAX_SECONDS``, ports beyond 65535 and integers beyond
64 bits are refused, so that nothing computed or stored from them can overflow; a DNS answer's
``ipv4``/``ipv6`` must be an IP address, as the analysis compares it as one (the test helper's
``addrs`` may also hold the CNAMEs it followed: the transform keeps their addresses only).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails, PydanticCustomError

SCRUBBED_IP = "127.0.0.1"  # what OONI itself publishes as probe_ip (df-000)
MAX_SECONDS = 1e9  # a time or runtime in seconds; ~32 years, far beyond any measurement

Seconds = Annotated[float, Field(ge=-MAX_SECONDS, le=MAX_SECONDS)]
Port = Annotated[int, Field(ge=0, le=65535)]
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]


class OONIError(ValueError):
    """A record is not an OONI measurement blockwatch can read; the message says why."""


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True, allow_inf_nan=False)


class BinaryData(_Model):
    """df-001 BinaryData: bytes that are not UTF-8 (a body, a header value, a certificate)."""

    format: Literal["base64"]
    data: str


MaybeBinary = str | BinaryData  # df-001 MaybeBinaryData


# --- df-002 DNS ----------------------------------------------------------------------------------


class DNSAnswer(_Model):
    ipv4: str | None = None
    ipv6: str | None = None

    @field_validator("ipv4", "ipv6")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise PydanticCustomError("ip_address", "not an IP address") from None
        return value


class DNSQuery(_Model):
    hostname: str | None = None
    query_type: str | None = None
    engine: str | None = None
    resolver_address: str | None = None
    failure: str | None = None
    answers: list[DNSAnswer] | None = None
    transaction_id: Int64 | None = None
    t: Seconds | None = None


# --- df-005 TCP connect --------------------------------------------------------------------------


class TCPStatus(_Model):
    # df-005: "some older versions of OONI Probe set this to false instead of null"
    failure: str | Literal[False] | None = None


class TCPConnect(_Model):
    ip: str | None = None
    port: Port | None = None
    status: TCPStatus | None = None
    t: Seconds | None = None


# --- df-006 TLS handshakes -----------------------------------------------------------------------


class TLSHandshake(_Model):
    address: str | None = None  # "host:port", "[v6]:port"
    server_name: str | None = None
    failure: str | None = None
    tls_version: str | None = None
    cipher_suite: str | None = None
    negotiated_protocol: str | None = None
    no_tls_verify: bool | None = None
    peer_certificates: list[BinaryData] | None = None
    t: Seconds | None = None


# --- df-001 HTTP ---------------------------------------------------------------------------------


class HTTPRequest(_Model):
    url: str | None = None


class HTTPResponse(_Model):
    body: MaybeBinary | None = None
    body_is_truncated: bool | None = None
    code: Int64 | None = None
    headers: dict[str, MaybeBinary | None] | None = None  # legacy: each name's first value
    headers_list: list[list[MaybeBinary | None]] | None = None  # [name, value] pairs

    @property
    def present(self) -> bool:
        """Whether the response object said anything at all (``{}`` did not)."""
        return bool(self.model_fields_set)


class HTTPTransaction(_Model):
    request: HTTPRequest | None = None
    response: HTTPResponse | None = None
    failure: str | None = None
    address: str | None = None
    tags: list[str] | None = None  # web_connectivity: "depth=N", the redirect depth
    t: Seconds | None = None


# --- test keys -----------------------------------------------------------------------------------


class CommonKeys(_Model):
    """The test keys of OONI's network primitives, which any test may hold."""

    queries: list[DNSQuery] | None = None
    # openvpn (ts-040) holds one tcp_connect object, not df-005's list; it is not read
    tcp_connect: list[TCPConnect] | dict[str, Any] | None = None
    tls_handshakes: list[TLSHandshake] | None = None
    requests: list[HTTPTransaction] | None = None


class ControlDNS(_Model):
    failure: str | None = None
    addrs: list[str] | None = None


class ControlTCPConnect(_Model):
    status: bool | None = None
    failure: str | None = None


class ControlTLSHandshake(_Model):
    server_name: str | None = None
    status: bool | None = None
    failure: str | None = None


class ControlHTTPRequest(_Model):
    failure: str | None = None
    status_code: Int64 | None = None  # -1 when the test helper's fetch failed
    body_length: Int64 | None = None  # -1 likewise
    title: str | None = None
    headers: dict[str, MaybeBinary | None] | None = None


class Control(_Model):
    """ts-017: the web_connectivity test helper's answers (endpoints keyed "ip:port")."""

    dns: ControlDNS | None = None
    tcp_connect: dict[str, ControlTCPConnect | None] | None = None
    tls_handshake: dict[str, ControlTLSHandshake | None] | None = None
    http_request: ControlHTTPRequest | None = None


class WebConnectivityKeys(CommonKeys):
    control: Control | None = None
    http_experiment_failure: str | None = None
    blocking: str | bool | None = None  # OONI's verdict: "dns", "tcp_ip", ..., false
    accessible: bool | None = None


# --- df-000 envelope -----------------------------------------------------------------------------


class OONIMeasurement(_Model):
    """df-000: one OONI measurement; its ``test_keys`` as any test holds them."""

    test_keys: CommonKeys
    measurement_start_time: dt.datetime
    measurement_uid: str | None = None  # the OONI API's id of the measurement
    test_name: str | None = None
    input: str | None = None
    report_id: str | None = None
    probe_cc: str | None = None
    probe_asn: str | None = None  # "AS1234"
    probe_ip: str | None = None  # never kept: scrubbed from what is stored
    software_name: str | None = "ooniprobe"
    software_version: str | None = ""
    test_runtime: Seconds | None = None

    @field_validator("measurement_start_time", mode="before")
    @classmethod
    def _start(cls, value: Any) -> dt.datetime:
        if not isinstance(value, str):
            raise PydanticCustomError("no_start_time", "no measurement_start_time")
        try:
            start = dt.datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC)
        except ValueError:
            raise PydanticCustomError(
                "bad_start_time", "measurement_start_time {value} is not 'YYYY-MM-DD HH:MM:SS'",
                {"value": repr(value[:40])}) from None
        if start.year > 9000:  # the start plus any time of the record stays a datetime
            raise PydanticCustomError("bad_start_time", "measurement_start_time {value} is "
                                      "after the year 9000", {"value": repr(value[:40])})
        return start


class WebConnectivity(OONIMeasurement):
    """ts-017 web_connectivity."""

    test_keys: WebConnectivityKeys


M = TypeVar("M", bound=OONIMeasurement)


def parse(model: type[M], record: Mapping[str, Any]) -> M:
    """``record`` as ``model``; ``OONIError`` naming the first field that does not fit."""
    try:
        return model.model_validate(record)
    except ValidationError as exc:
        raise OONIError(_reason(exc.errors(), record)) from None


# --- why a record does not fit -------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXPECTED = {
    "string_type": "a string", "int_type": "an integer", "float_type": "a number",
    "bool_type": "true or false", "list_type": "a list", "dict_type": "an object",
    "model_type": "an object", "model_attributes_type": "an object",
    "finite_number": "a finite number", "ip_address": "an IP address",
}
_MISSING = object()


def _reason(errors: Sequence[ErrorDetails], record: Mapping[str, Any]) -> str:
    """One reason for a record that does not fit: the test keys and the start time first, with
    the reasons the import has always given; else the deepest field that does not fit, named
    generically first (what ``ImportReport`` counts by) and then exactly."""
    located = [(*_place(e, record), e) for e in errors]
    if any(path == ["test_keys"] for path, _, _ in located):
        return "no test_keys object"
    for path, _, e in located:
        if path == ["measurement_start_time"]:
            return e["msg"] if e["type"] == "bad_start_time" else "no measurement_start_time"
    path, value, _ = max(located, key=lambda x: len(x[0]))
    found = [e for p, _, e in located if p == path]
    if any(e["type"] == "missing" for e in found):
        problem = "is missing"
    else:
        problem = "should be " + " or ".join(dict.fromkeys(_expected(e) for e in found))
    return f"field {_generic(path)} {problem} ({_exact(path)} is {_show(value)})"


def _place(e: ErrorDetails, record: Mapping[str, Any]) -> tuple[list[str | int], Any]:
    """Where in the record an error is, and the value there. Pydantic's location also names
    the member of a union it tried ("str", "list[TCPConnect]"): those are not in the record."""
    path: list[str | int] = []
    data: Any = record
    for part in e["loc"]:
        in_map = isinstance(data, Mapping) and isinstance(part, str) and part in data
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if in_map or in_list:
            data = data[part]
            path.append(part)
    if e["type"] == "missing" and e["loc"]:
        path.append(e["loc"][-1])
        data = _MISSING
    return path, data


def _expected(e: ErrorDetails) -> str:
    ctx = e.get("ctx") or {}
    if e["type"] == "literal_error":
        return str(ctx.get("expected"))
    if e["type"] == "less_than_equal":
        return f"at most {ctx.get('le')}"
    if e["type"] == "greater_than_equal":
        return f"at least {ctx.get('ge')}"
    return _EXPECTED.get(e["type"], e["msg"].removeprefix("Input should be ").lower())


def _generic(path: Sequence[str | int]) -> str:
    """The field whatever the list index or map key: ``test_keys.control.tcp_connect{}.status``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += "[]"
        elif _NAME.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += "{}"
    return out


def _exact(path: Sequence[str | int]) -> str:
    """The place: ``test_keys.control.tcp_connect['1.2.3.4:443'].status``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _NAME.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part[:40]!r}]"
    return out


def _show(value: Any) -> str:
    """What was there, without echoing text of the record (it may hold the probe's IP)."""
    if value is _MISSING:
        return "missing"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) and abs(value) >= 10**18:
        return "a very large number"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"
