"""A SOCKS5 CONNECT client (RFC 1928, with RFC 1929 username/password), spoken with socksio.

Guarantees:

- Names are sent to the proxy as names (address type 3, IDNA), so DNS happens at the proxy and
  no lookup leaves this machine; IP literals are sent as addresses.
- socksio (sans-I/O) builds every request and parses every reply; this module reads exactly one
  reply at a time from any byte stream (``negotiate`` takes an exact-read and a send callable;
  ``socket_io`` adapts the dialer's sockets), checks what socksio leaves unchecked (the version
  byte of the method reply), and says what went wrong in the words blockwatch has always stored.
- A failure reported by the proxy is a ``SocksReplyError``: an ``OSError`` whose errno says what
  happened to the target (refused, unreachable, timed out), so ``probes.failures.classify`` maps
  it like the same error met on a direct connection. A proxy that misbehaves, rejects our
  credentials or closes is a ``SocksError`` (the problem is on our side of the proxy).
- Nothing here opens a connection or checks the scope: ``probes.dial`` does both.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from socksio import ProtocolError, socks5

from blockwatch.probes.errors import SocksError as SocksError
from blockwatch.probes.errors import SocksReplyError as SocksReplyError

VERSION = 5
_AUTH = socks5.SOCKS5AuthMethod
_ATYP_LENGTH = {socks5.SOCKS5AType.IPV4_ADDRESS[0]: 4, socks5.SOCKS5AType.IPV6_ADDRESS[0]: 16}
_ATYP_DOMAIN = socks5.SOCKS5AType.DOMAIN_NAME[0]

_Reply = TypeVar("_Reply", socks5.SOCKS5AuthReply, socks5.SOCKS5UsernamePasswordReply,
                   socks5.SOCKS5Reply)
RecvExactly = Callable[[int], Awaitable[bytes]]
Send = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SocksProxy:
    host: str
    port: int
    username: str | None = None
    password: str | None = None


@functools.lru_cache(maxsize=64)
def parse_proxy(url: str) -> SocksProxy:
    """Parse ``socks5://[user:pass@]host:port`` (``socks5h`` is accepted: DNS is always remote).
    Credentials longer than RFC 1929's 255 bytes are refused here, before anything is sent."""
    parts = urlsplit(url)
    if parts.scheme not in ("socks5", "socks5h"):
        raise ValueError(f"only socks5:// proxies are supported, not {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError(f"proxy URL {url!r} has no host")
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    for what, value in (("username", user), ("password", password)):
        if value is not None and len(value.encode()) > 255:
            raise ValueError(f"proxy URL: a SOCKS5 {what} has at most 255 bytes")
    return SocksProxy(parts.hostname, parts.port or 1080, user, password)


def _connect_request(host: str, port: int) -> socks5.SOCKS5CommandRequest:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("idna")
        if not 0 < len(name) < 256:
            raise ValueError(
                f"host name of {len(name)} bytes cannot be sent to a SOCKS5 proxy") from None
        atype, addr = socks5.SOCKS5AType.DOMAIN_NAME, name
    else:
        atype = (socks5.SOCKS5AType.IPV4_ADDRESS if ip.version == 4
                 else socks5.SOCKS5AType.IPV6_ADDRESS)
        addr = ip.packed
    return socks5.SOCKS5CommandRequest(command=socks5.SOCKS5Command.CONNECT, atype=atype,
                                       addr=addr, port=port)


def _reply(conn: socks5.SOCKS5Connection, data: bytes, kind: type[_Reply]) -> _Reply:
    """socksio's parse of ``data``, of the kind the protocol's state calls for."""
    parsed = conn.receive_data(data)
    assert isinstance(parsed, kind)
    return parsed


async def _authenticate(recv: RecvExactly, send: Send, conn: socks5.SOCKS5Connection,
                        proxy: SocksProxy) -> None:
    offered = [_AUTH.NO_AUTH_REQUIRED] if proxy.username is None else [
        _AUTH.USERNAME_PASSWORD, _AUTH.NO_AUTH_REQUIRED]
    conn.send(socks5.SOCKS5AuthMethodsRequest(offered))
    await send(conn.data_to_send())
    data = await recv(2)
    if data[0] != VERSION:
        raise SocksError(f"not a SOCKS5 proxy (version byte {data[0]})")
    try:
        method: socks5.SOCKS5AuthMethod | None = _reply(conn, data, socks5.SOCKS5AuthReply).method
    except ProtocolError:  # a method code RFC 1928 does not define
        method = None
    if method == _AUTH.NO_AUTH_REQUIRED:
        return
    if method == _AUTH.USERNAME_PASSWORD and proxy.username is not None:
        conn.send(socks5.SOCKS5UsernamePasswordRequest(proxy.username.encode(),
                                                       (proxy.password or "").encode()))
        await send(conn.data_to_send())
        status = (await recv(2))[1]
        # RFC 1929's version byte is 1, yet some proxies send SOCKS's 5: the status decides
        if not _reply(conn, bytes((1, status)), socks5.SOCKS5UsernamePasswordReply).success:
            raise SocksError("SOCKS5 proxy rejected the username or password")
        return
    if method == _AUTH.NO_ACCEPTABLE_METHODS:
        raise SocksError("SOCKS5 proxy accepts none of our authentication methods")
    raise SocksError(f"SOCKS5 proxy chose a method we did not offer ({data[1]:#04x})")


async def negotiate(recv: RecvExactly, send: Send, proxy: SocksProxy, host: str, port: int) -> None:
    """Ask the proxy to connect to ``host:port``; return once the tunnel is open."""
    conn = socks5.SOCKS5Connection()
    await _authenticate(recv, send, conn, proxy)
    conn.send(_connect_request(host, port))
    await send(conn.data_to_send())
    head = await recv(4)
    version, reply, _, atyp = head
    if version != VERSION:
        raise SocksError(f"SOCKS5 proxy replied with version byte {version}")
    if reply != 0:
        raise SocksReplyError(reply)
    if atyp == _ATYP_DOMAIN:
        size = await recv(1)
        bound = size + await recv(size[0] + 2)
    elif atyp in _ATYP_LENGTH:
        bound = await recv(_ATYP_LENGTH[atyp] + 2)
    else:
        raise SocksError(f"SOCKS5 proxy replied with unknown address type {atyp}")
    with contextlib.suppress(ProtocolError):  # a bound name that is not UTF-8: never used,
        conn.receive_data(head + bound)  # and the tunnel is open


def socket_io(sock: socket.socket) -> tuple[RecvExactly, Send]:
    """Adapt a connected non-blocking socket to ``negotiate``; a proxy closing mid-reply is a
    ``SocksError`` from an ``asyncio.IncompleteReadError``, as asyncio's streams would say."""
    loop = asyncio.get_running_loop()

    async def recv(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = await loop.sock_recv(sock, n - len(data))
            if not chunk:  # the end of the stream mid-reply (classified as eof_error)
                raise SocksError("SOCKS5 proxy closed the connection during negotiation"
                                 ) from asyncio.IncompleteReadError(data, n)
            data += chunk
        return data

    async def send(data: bytes) -> None:
        await loop.sock_sendall(sock, data)

    return recv, send
