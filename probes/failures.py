"""The failure taxonomy: every network failure becomes one stable string (OONI df-007 names).

This is the one place where errors become failure strings: those of the sockets and ``ssl``
(``OSError`` and its errno), of dnspython, of httpx/httpcore/h11/anyio, and blockwatch's own
(``probes.errors``), each matched by ``isinstance`` on its real class.

``classify(exc)`` walks the exception's ``__cause__``/``__context__`` chain and maps the most
specific cause first, because libraries wrap the real error (httpx folds refused, reset and DNS
errors into ``ConnectError``): first an address outside the scope anywhere in the chain, then the
first error of the network or the TLS layer, then the first library error that says what
happened (a timeout, too many redirects, a server that closed without answering), else
``unknown_failure: <innermost class>: <message>``. Messages kept in ``unknown_failure: ...`` have
IP addresses scrubbed, so a stored failure never leaks the vantage's address.

The libraries' classes are imported on the first classification, not with this module: the
analysis imports the taxonomy's strings and never meets an httpx error.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import re
import ssl
from typing import NamedTuple

from blockwatch.probes.errors import KnownFailure, OutOfScopeError

GENERIC_TIMEOUT = "generic_timeout_error"
DNS_NXDOMAIN = "dns_nxdomain_error"
DNS_SERVFAIL = "dns_servfail_error"
DNS_REFUSED = "dns_refused_error"
DNS_NO_ANSWER = "dns_no_answer"
DNS_BOGON = "dns_bogon_error"
DNS_MALFORMED = "dns_malformed_response"  # project-local: every response failed to parse
CONNECTION_REFUSED = "connection_refused"
CONNECTION_RESET = "connection_reset"
CONNECTION_ABORTED = "connection_aborted"
HOST_UNREACHABLE = "host_unreachable"
NETWORK_UNREACHABLE = "network_unreachable"
SSL_INVALID_HOSTNAME = "ssl_invalid_hostname"
SSL_UNKNOWN_AUTHORITY = "ssl_unknown_authority"
SSL_INVALID_CERTIFICATE = "ssl_invalid_certificate"
SSL_FAILED_HANDSHAKE = "ssl_failed_handshake"
EOF_ERROR = "eof_error"
OUT_OF_SCOPE = "out_of_scope"  # project-local: refused by the scope allow-list, nothing sent
TOO_MANY_REDIRECTS = "http_too_many_redirects"  # project-local
RAW_UNAVAILABLE = "raw_socket_unavailable"  # project-local: no CAP_NET_RAW, nothing sent
UNKNOWN_PREFIX = "unknown_failure: "

_ERRNO = {
    errno.ECONNREFUSED: CONNECTION_REFUSED,
    errno.ECONNRESET: CONNECTION_RESET,
    errno.ECONNABORTED: CONNECTION_ABORTED,
    errno.EHOSTUNREACH: HOST_UNREACHABLE,
    errno.ENETUNREACH: NETWORK_UNREACHABLE,
    errno.ETIMEDOUT: GENERIC_TIMEOUT,
    errno.EPIPE: CONNECTION_RESET,
}

# OpenSSL X509 verify codes (x509_vfy.h)
_VERIFY_CODES = {62: SSL_INVALID_HOSTNAME, 18: SSL_UNKNOWN_AUTHORITY, 19: SSL_UNKNOWN_AUTHORITY,
                 20: SSL_UNKNOWN_AUTHORITY, 21: SSL_UNKNOWN_AUTHORITY}

_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9a-fA-F]{0,4}:){2,7}[0-9a-fA-F]{0,4}(?![\w:])")


def scrub(message: str) -> str:
    """Remove IP addresses from a message (they may be the volunteer's own)."""
    return _IPV6.sub("[scrubbed]", _IPV4.sub("[scrubbed]", message))


def unknown(message: str) -> str:
    return UNKNOWN_PREFIX + scrub(message)[:300]


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen and len(seen) < 20:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


class _Library(NamedTuple):
    """The library classes ``classify`` matches, by what they mean."""

    nxdomain: tuple[type[BaseException], ...]
    no_answer: tuple[type[BaseException], ...]
    timeout: tuple[type[BaseException], ...]
    end_of_stream: tuple[type[BaseException], ...]
    http_timeout: tuple[type[BaseException], ...]
    too_many_redirects: tuple[type[BaseException], ...]
    protocol: tuple[type[BaseException], ...]


@functools.cache
def _library() -> _Library:
    """Imported once, on the first classification."""
    import anyio
    import dns.exception
    import dns.resolver
    import h11
    import httpcore
    import httpx

    return _Library(
        nxdomain=(dns.resolver.NXDOMAIN,),
        no_answer=(dns.resolver.NoAnswer,),
        timeout=(dns.exception.Timeout, TimeoutError, asyncio.TimeoutError),
        # the end of a stream: asyncio's, or anyio's (under httpcore: the peer closed during
        # the TLS handshake)
        end_of_stream=(asyncio.IncompleteReadError, anyio.EndOfStream),
        http_timeout=(httpx.TimeoutException, httpcore.TimeoutException),
        too_many_redirects=(httpx.TooManyRedirects,),
        protocol=(httpx.RemoteProtocolError, httpcore.RemoteProtocolError,
                  h11.RemoteProtocolError),
    )


def _network(exc: BaseException) -> str | None:
    """The failure of a socket, TLS or DNS error, or of a stream that ended."""
    lib = _library()
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", None)
        if code in _VERIFY_CODES:
            return _VERIFY_CODES[code]
        return SSL_INVALID_CERTIFICATE
    if isinstance(exc, ssl.SSLEOFError):
        return EOF_ERROR
    if isinstance(exc, ssl.SSLError):
        return SSL_FAILED_HANDSHAKE
    if isinstance(exc, lib.nxdomain):
        return DNS_NXDOMAIN
    if isinstance(exc, lib.no_answer):
        return DNS_NO_ANSWER
    if isinstance(exc, lib.timeout):
        return GENERIC_TIMEOUT
    if isinstance(exc, ConnectionRefusedError):
        return CONNECTION_REFUSED
    if isinstance(exc, ConnectionResetError):
        return CONNECTION_RESET
    if isinstance(exc, ConnectionAbortedError):
        return CONNECTION_ABORTED
    if isinstance(exc, lib.end_of_stream):
        return EOF_ERROR
    if isinstance(exc, OSError) and exc.errno in _ERRNO:
        return _ERRNO[exc.errno]
    return None


def _http(exc: BaseException) -> str | None:
    """The failure an HTTP library's own error states (when no cause of it said more)."""
    lib = _library()
    if isinstance(exc, lib.http_timeout):
        return GENERIC_TIMEOUT
    if isinstance(exc, lib.too_many_redirects):
        return TOO_MANY_REDIRECTS
    if isinstance(exc, lib.protocol) and "without sending" in str(exc).lower():
        return EOF_ERROR
    return None


def classify(exc: BaseException) -> str:
    """Map an exception to a failure string from the taxonomy."""
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, OutOfScopeError):
            return OUT_OF_SCOPE
    for e in chain:
        if isinstance(e, KnownFailure):
            return e.failure
    for e in chain:
        found = _network(e)
        if found is not None:
            return found
    for e in chain:
        found = _http(e)
        if found is not None:
            return found
    innermost = chain[-1]
    text = str(innermost) or type(innermost).__name__
    return unknown(f"{type(innermost).__name__}: {text}")
