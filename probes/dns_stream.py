"""DNS over connections: TCP and TLS (DoT), length-prefixed, and HTTPS (DoH), kept per sweep.

Guarantees:

- A query is sent only to the scope-checked address ``probes.dns_transport._destination``
  gave; a DoH URL is rewritten to it, the Host header and the TLS server name keeping the
  original name.
- A resolver gets at most ``STREAM_CONNECTIONS`` connections from a sweep, reused query after
  query (one query on each at a time); a query waiting for one waits in our queue, not against
  its timeout. ``close_connections`` ends them with the sweep.
- Bytes that are not a DNS message are recorded, never raised (``malformed``): a garbage reply,
  an HTTP error status (a block page), a body cut at ``MAX_MESSAGE``.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from blockwatch.probes import pacing
from blockwatch.probes.context import ProbeContext
from blockwatch.probes.decoding import read_decoded
from blockwatch.probes.dns_transport import _endpoint, _Exchange, _Where
from blockwatch.probes.dns_wire import MAX_MESSAGE, Query, _response
from blockwatch.probes.scope import is_ip

# --- TCP and TLS --------------------------------------------------------------------------------


async def _stream(where: _Where, q: Query, ctx: ProbeContext, got: _Exchange,
                  silent: bool) -> None:
    """One query over TCP or TLS (DoT), length-prefixed (RFC 1035 4.2.2, RFC 7858).

    asyncio streams rather than ``dns.asyncquery.tcp``/``tls`` so that the raw bytes reach the
    same parser as UDP: a garbage reply is recorded with its header instead of raising.
    Connections are kept and reused for the next query to the same resolver (as RFC 7858 asks
    of clients: a sweep of a thousand names would otherwise make two thousand TLS handshakes
    with each control resolver); a kept connection the server has closed meanwhile is replaced
    once, at no cost to the query's timeout. TCP retransmits a lost segment itself; a query
    that timed out is confirmed by ``SharedQuery`` (a reset or a refusal is an answer).
    """
    pool = _pool(ctx, where)
    async with ctx.limits.resolver(where.key).hold(), pool.slots.hold():
        got.transmissions = 1
        async with asyncio.timeout(ctx.timeouts.dns):
            data, t = await pool.exchange(q.wire)
    got.add(_response(data, q, _endpoint(where.address, where.port), t))


# Connections kept open to one TCP/TLS/HTTPS resolver: a handful serve a sweep, and a small
# server (dnsmasq serves 20 TCP connections at once) is not crowded out by idle ones
STREAM_CONNECTIONS = 8


@dataclass(slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    slot: pacing.Slot


class _StreamPool:
    """Idle DNS-over-TCP/TLS connections to one resolver, one query on each at a time."""

    def __init__(self, where: _Where, ctx: ProbeContext) -> None:
        self._where, self._ctx = where, ctx
        self._idle: collections.deque[_Connection] = collections.deque()
        # one query per connection at a time: waiting for one is our queue, not the timeout's
        self.slots = pacing.Limiter(STREAM_CONNECTIONS)

    async def _open(self) -> _Connection:
        where, ctx = self._where, self._ctx
        tls = where.transport == "tls"
        slot = await ctx.limits.socket().acquire()
        try:
            reader, writer = await asyncio.open_connection(
                where.address, where.port,
                ssl=ctx.ssl_context() if tls else None,
                server_hostname=(where.spec.server_name or where.address) if tls else None,
                local_addr=(ctx.source_address, 0) if ctx.source_address else None)
        except BaseException:
            slot.release()
            raise
        return _Connection(reader, writer, slot)

    async def exchange(self, wire: bytes) -> tuple[bytes, float]:
        """Send one query and read one response: (its bytes, seconds after sending)."""
        while self._idle:
            kept = self._idle.popleft()
            try:
                return await self._ask(kept, wire)
            except (OSError, EOFError, asyncio.IncompleteReadError):
                continue  # closed by the server while idle: try another, or a new one
        return await self._ask(await self._open(), wire)

    async def _ask(self, conn: _Connection, wire: bytes) -> tuple[bytes, float]:
        """The next message on the connection. One that does not carry our id is recorded as
        it is (garbage, or a server out of step) and its connection is never reused."""
        loop = asyncio.get_running_loop()
        try:
            conn.writer.write(len(wire).to_bytes(2, "big") + wire)
            await conn.writer.drain()
            sent = loop.time()
            length = int.from_bytes(await conn.reader.readexactly(2), "big")
            data = await conn.reader.readexactly(length)
        except BaseException:
            _close(conn)
            raise
        if data[:2] == wire[:2]:
            self._idle.append(conn)
        else:
            _close(conn)
        return data, loop.time() - sent

    def close(self) -> None:
        while self._idle:
            _close(self._idle.popleft())


def _close(conn: _Connection) -> None:
    conn.writer.close()
    conn.slot.release()


def _pool(ctx: ProbeContext, where: _Where) -> _StreamPool:
    pools: dict[str, _StreamPool] = ctx.cache.setdefault("dns_streams", {})
    key = f"{where.key}#{where.spec.server_name or ''}"
    found = pools.get(key)
    if found is None:
        found = pools[key] = _StreamPool(where, ctx)
    return found


def close_connections(ctx: ProbeContext) -> list[Awaitable[None]]:
    """End the kept resolver connections of a sweep; the DoH clients' closings to await."""
    for pool in ctx.cache.pop("dns_streams", {}).values():
        pool.close()
    return [client.aclose() for client, _ in ctx.cache.pop("doh_clients", {}).values()]


# --- HTTPS (DoH) --------------------------------------------------------------------------------


async def _https(where: _Where, q: Query, ctx: ProbeContext, got: _Exchange,
                 silent: bool) -> None:
    """One query as a DoH POST (RFC 8484) to the scope-checked address.

    httpx directly: the installed dnspython (2.9) does DoH with ``httpx2``, which is not a
    dependency, and without a bootstrap address it would resolve the server's name itself,
    around the scope check. The URL is rewritten to the address, with the Host header and the
    TLS server name keeping the original name. One client per resolver and sweep keeps its
    connections (``STREAM_CONNECTIONS``) alive between queries.
    """
    url = urlsplit(where.spec.url or "")
    netloc = _endpoint(where.address, where.port)
    headers = {
        "accept": "application/dns-message",
        "content-type": "application/dns-message",
        "host": url.netloc.rsplit("@", 1)[-1],
    }
    extensions = {} if is_ip(where.spec.address) else {"sni_hostname": where.spec.address}
    loop = asyncio.get_running_loop()
    client, slots = _doh_client(ctx, where)
    async with ctx.limits.resolver(where.key).hold(), slots.hold():
        got.transmissions = 1
        async with asyncio.timeout(ctx.timeouts.dns):
            sent = loop.time()
            async with client.stream(
                "POST", urlunsplit(url._replace(netloc=netloc)), content=q.wire,
                headers=headers, extensions=extensions,
            ) as resp:
                data = await _read_capped(resp)
                t = loop.time() - sent
    if resp.status_code != 200:  # the body is a block page or an error, not a DNS message
        got.add(_response(b"", q, netloc, t, malformed=f"HTTP status {resp.status_code}"))
    else:
        got.add(_response(data, q, netloc, t))


def _doh_client(ctx: ProbeContext, where: _Where) -> tuple[httpx.AsyncClient, pacing.Limiter]:
    """The resolver's client, and the gate that admits as many requests as its pool has
    connections (so that no request waits in the pool, where the wait would count against
    its timeout)."""
    clients: dict[str, tuple[httpx.AsyncClient, pacing.Limiter]] = ctx.cache.setdefault(
        "doh_clients", {})
    key = f"{where.key}#{where.spec.address}"
    found = clients.get(key)
    if found is None:
        transport = httpx.AsyncHTTPTransport(
            verify=ctx.ssl_context(), local_address=ctx.source_address,
            limits=httpx.Limits(max_connections=STREAM_CONNECTIONS,
                                max_keepalive_connections=STREAM_CONNECTIONS))
        found = clients[key] = (httpx.AsyncClient(transport=transport, trust_env=False,
                                                  timeout=ctx.timeouts.dns),
                                pacing.Limiter(STREAM_CONNECTIONS))
    return found


async def _read_capped(resp: httpx.Response) -> bytes:
    """The body, up to one DNS message's maximum size: a hostile server may send gigabytes,
    or a compression bomb (decoded with bounded output, ``probes.decoding``)."""
    body, _ = await read_decoded(resp.aiter_raw(), resp.headers.get("content-encoding"),
                                 MAX_MESSAGE + 1)
    return body
