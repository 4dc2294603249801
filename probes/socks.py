"""A small SOCKS5 CONNECT client (RFC 1928, with RFC 1929 username/password authentication).

Guarantees:

- Names are sent to the proxy as names (address type 3), so DNS happens at the proxy and no
  lookup leaves this machine; IP literals are sent as addresses.
- The protocol is spoken over any byte stream (``negotiate`` takes a send and an exact-read
  callable), so the TCP/TLS probes (asyncio streams) and the HTTP probe (httpcore streams) share
  one implementation.
- A failure reported by the proxy is a ``SocksReplyError``: an ``OSError`` whose errno says what
  happened to the target (refused, unreachable, timed out), so ``probes.failures.classify`` maps
  it like the same error met on a direct connection. A proxy that misbehaves or rejects our
  credentials is a ``SocksError`` (the problem is on our side of the proxy, not the target's).
- Callers check the proxy's address against the scope before connecting (``open_connection``
  does it itself).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from blockwatch.probes.scope import Scope

VERSION = 5
_NO_AUTH = 0x00
_USER_PASS = 0x02
_NO_ACCEPTABLE = 0xFF
_CONNECT = 0x01
_ATYP_IPV4 = 0x01
_ATYP_DOMAIN = 0x03
_ATYP_IPV6 = 0x04

# Reply codes (RFC 1928 section 6) -> the errno a direct connection would have met.
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

RecvExactly = Callable[[int], Awaitable[bytes]]
Send = Callable[[bytes], Awaitable[None]]


class SocksError(OSError):
    """The proxy broke the protocol, refused our authentication, or closed on us."""


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


@dataclass(frozen=True, slots=True)
class SocksProxy:
    host: str
    port: int
    username: str | None = None
    password: str | None = None


def parse_proxy(url: str) -> SocksProxy:
    """Parse ``socks5://[user:pass@]host:port`` (``socks5h`` is accepted: DNS is always remote)."""
    parts = urlsplit(url)
    if parts.scheme not in ("socks5", "socks5h"):
        raise ValueError(f"only socks5:// proxies are supported, not {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError(f"proxy URL {url!r} has no host")
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return SocksProxy(parts.hostname, parts.port or 1080, user, password)


def _domain_field(host: str) -> bytes:
    name = host.encode("idna")
    if not 0 < len(name) < 256:
        raise ValueError(f"host name of {len(name)} bytes cannot be sent to a SOCKS5 proxy")
    return bytes((_ATYP_DOMAIN, len(name))) + name


def _address_field(host: str) -> bytes:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return _domain_field(host)
    if ip.version == 4:
        return bytes((_ATYP_IPV4,)) + ip.packed
    return bytes((_ATYP_IPV6,)) + ip.packed


async def _authenticate(recv: RecvExactly, send: Send, proxy: SocksProxy) -> None:
    methods = [_NO_AUTH] if proxy.username is None else [_USER_PASS, _NO_AUTH]
    await send(bytes((VERSION, len(methods), *methods)))
    version, method = await recv(2)
    if version != VERSION:
        raise SocksError(f"not a SOCKS5 proxy (version byte {version})")
    if method == _NO_AUTH:
        return
    if method == _USER_PASS and proxy.username is not None:
        user = proxy.username.encode()
        password = (proxy.password or "").encode()
        await send(bytes((1, len(user))) + user + bytes((len(password),)) + password)
        _, status = await recv(2)
        if status != 0:
            raise SocksError("SOCKS5 proxy rejected the username or password")
        return
    if method == _NO_ACCEPTABLE:
        raise SocksError("SOCKS5 proxy accepts none of our authentication methods")
    raise SocksError(f"SOCKS5 proxy chose a method we did not offer ({method:#04x})")


async def _read_bound_address(recv: RecvExactly, atyp: int) -> None:
    if atyp == _ATYP_IPV4:
        await recv(4 + 2)
    elif atyp == _ATYP_IPV6:
        await recv(16 + 2)
    elif atyp == _ATYP_DOMAIN:
        (length,) = await recv(1)
        await recv(length + 2)
    else:
        raise SocksError(f"SOCKS5 proxy replied with unknown address type {atyp}")


async def negotiate(recv: RecvExactly, send: Send, proxy: SocksProxy, host: str, port: int) -> None:
    """Ask the proxy to connect to ``host:port``; return once the tunnel is open."""
    await _authenticate(recv, send, proxy)
    await send(bytes((VERSION, _CONNECT, 0)) + _address_field(host) + struct.pack("!H", port))
    version, reply, _, atyp = await recv(4)
    if version != VERSION:
        raise SocksError(f"SOCKS5 proxy replied with version byte {version}")
    if reply != 0:
        raise SocksReplyError(reply)
    await _read_bound_address(recv, atyp)


def stream_io(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[RecvExactly, Send]:
    """Adapt asyncio streams to ``negotiate``; a proxy closing mid-reply is a ``SocksError``."""

    async def recv(n: int) -> bytes:
        try:
            return await reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            raise SocksError("SOCKS5 proxy closed the connection during negotiation") from exc

    async def send(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    return recv, send


async def open_connection(
    proxy: SocksProxy,
    proxy_address: str,
    host: str,
    port: int,
    *,
    scope: Scope,
    local_addr: tuple[str, int] | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``host:port`` through the proxy at ``proxy_address`` (an IP, scope-checked).

    Raises what ``asyncio.open_connection`` raises if the proxy is unreachable, ``SocksError``
    if it misbehaves and ``SocksReplyError`` if it cannot reach the target.
    """
    scope.check(proxy_address)
    reader, writer = await asyncio.open_connection(proxy_address, proxy.port, local_addr=local_addr)
    try:
        await negotiate(*stream_io(reader, writer), proxy, host, port)
    except BaseException:
        writer.close()
        raise
    return reader, writer
