"""The failure taxonomy: every network failure becomes one stable string (OONI df-007 names).

``classify(exc)`` walks the exception's ``__cause__``/``__context__`` chain and maps the most
specific cause first, because libraries wrap the real error (httpx folds refused, reset and DNS
errors into ``ConnectError``). Messages kept in ``unknown_failure: ...`` have IP addresses
scrubbed, so a stored failure never leaks the vantage's address.
"""

from __future__ import annotations

import asyncio
import errno
import re
import ssl

import dns.exception
import dns.resolver

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


def _one(exc: BaseException) -> str | None:
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", None)
        if code in _VERIFY_CODES:
            return _VERIFY_CODES[code]
        return SSL_INVALID_CERTIFICATE
    if isinstance(exc, ssl.SSLEOFError):
        return EOF_ERROR
    if isinstance(exc, ssl.SSLError):
        return SSL_FAILED_HANDSHAKE
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return DNS_NXDOMAIN
    if isinstance(exc, dns.resolver.NoAnswer):
        return DNS_NO_ANSWER
    if isinstance(exc, dns.exception.Timeout | TimeoutError | asyncio.TimeoutError):
        return GENERIC_TIMEOUT
    if isinstance(exc, ConnectionRefusedError):
        return CONNECTION_REFUSED
    if isinstance(exc, ConnectionResetError):
        return CONNECTION_RESET
    if isinstance(exc, ConnectionAbortedError):
        return CONNECTION_ABORTED
    if isinstance(exc, asyncio.IncompleteReadError):
        return EOF_ERROR
    if isinstance(exc, OSError) and exc.errno in _ERRNO:
        return _ERRNO[exc.errno]
    return None


def _by_name(exc: BaseException) -> str | None:
    """Library exceptions matched by class name, so this module does not import httpx."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "TimeoutException" in names:
        return GENERIC_TIMEOUT
    if "TooManyRedirects" in names:
        return TOO_MANY_REDIRECTS
    if names & {"RemoteProtocolError"} and "without sending" in str(exc).lower():
        return EOF_ERROR
    return None


def classify(exc: BaseException) -> str:
    """Map an exception to a failure string from the taxonomy."""
    from blockwatch.probes.scope import OutOfScopeError

    chain = _chain(exc)
    for e in chain:
        if isinstance(e, OutOfScopeError):
            return OUT_OF_SCOPE
    for e in chain:
        found = _one(e)
        if found is not None:
            return found
    for e in chain:
        found = _by_name(e)
        if found is not None:
            return found
    innermost = chain[-1]
    text = str(innermost) or type(innermost).__name__
    return unknown(f"{type(innermost).__name__}: {text}")
