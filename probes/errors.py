"""Every exception the probes raise on purpose, in one tree.

::

    Exception
     └── ProbeError                    raised by blockwatch.probes on purpose
          ├── OutOfScopeError          an address the scope does not admit: nothing was sent
          ├── KnownFailure             an operation ended with a failure string already decided
          ├── ProxyConnectError        our own SOCKS5 proxy could not be reached or used
          ├── SocksError (OSError)     the proxy broke the protocol, refused us, or closed on us
          │    └── SocksReplyError     the proxy could not reach the target (errno says why)
          ├── MalformedReply (ValueError)   a peer's bytes are not the protocol we spoke
          └── CatalogueError (ValueError)   a service definition is wrong (bad config)

Guarantees:

- A network failure is data, not an exception (``probes.failures.classify`` turns any of these,
  and the errors of the libraries underneath, into one failure string). These classes exist so
  that a probe can stop early with what it knows; none escapes a probe's ``observe`` except as
  a bug, which the runner records as ``unknown_failure: ...``.
- Class names and messages are stable: ``unknown_failure: SocksError: ...`` and
  ``unknown_failure: SocksReplyError: ...`` are failure strings stored in databases.
- ``SocksError`` is an ``OSError`` (a proxy failing is a socket failing, for every caller that
  catches ``OSError``) and ``SocksReplyError`` carries the errno a direct connection would have
  met, so ``classify`` maps it like that error. ``MalformedReply`` and ``CatalogueError`` are
  ``ValueError``s: what they reject is a value.
- Wrappers (``ProxyConnectError``) keep the network's error as their ``__cause__``: classifying
  one classifies its cause.
"""

from __future__ import annotations

import errno


class ProbeError(Exception):
    """The root of every exception blockwatch's probes raise on purpose."""


class OutOfScopeError(ProbeError):
    """A probe was about to send a packet to an address the scope does not admit."""

    def __init__(self, address: str) -> None:
        super().__init__(f"address {address} is outside the configured scope")
        self.address = address


class KnownFailure(ProbeError):
    """An operation ended before any network error, with this failure string (a name that did
    not resolve, a resolver that cannot be asked); ``operation`` is the one that failed."""

    def __init__(self, failure: str, operation: str = "resolve") -> None:
        super().__init__(failure)
        self.failure = failure
        self.operation = operation


class ProxyConnectError(ProbeError):
    """Our SOCKS5 proxy could not be reached, refused our credentials or broke the protocol:
    our side of the proxy failed (operation ``proxy_connect``), not the target. The error met
    is the ``__cause__``."""


class SocksError(ProbeError, OSError):
    """The proxy broke the protocol, refused our authentication, or closed on us."""


# RFC 1928 reply codes -> the errno a direct connection would have met
_REPLY_ERRNO = {
    0x03: errno.ENETUNREACH,
    0x04: errno.EHOSTUNREACH,
    0x05: errno.ECONNREFUSED,
    0x06: errno.ETIMEDOUT,  # TTL expired: the proxy's own connect timed out
}
_REPLY_TEXT = {
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
}


class SocksReplyError(SocksError):
    """The proxy could not connect to the target; ``reply`` is the RFC 1928 reply code."""

    def __init__(self, reply: int) -> None:
        text = "SOCKS5 proxy: " + _REPLY_TEXT.get(reply, f"reply code {reply:#04x}")
        code = _REPLY_ERRNO.get(reply)
        if code is None:
            super().__init__(text)
        else:
            super().__init__(code, text)
        self.reply = reply


class MalformedReply(ProbeError, ValueError):
    """The bytes a peer sent are not the reply our protocol expects (each probe records it
    under its own failure string, e.g. ``vpn_malformed_reply``)."""


class CatalogueError(ProbeError, ValueError):
    """A service definition is wrong; the message names the service and key."""
