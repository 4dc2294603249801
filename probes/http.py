"""The HTTP(S) fetch probe: what a URL answers, following redirects, with bounded reads.

Guarantees:

- Every connection goes through ``ScopedBackend``: the host is resolved with ``ctx.lookup``
  (the sweep's resolver and cache, never the system's) and the dialer (``probes.dial``)
  connects to the IPs, each scope-checked before a socket is opened (httpcore still sends the
  name in SNI and Host). With ``ctx.proxy`` the connection goes to the scope-checked proxy,
  which resolves names.
- The addresses are raced as browsers do (Happy Eyeballs, RFC 8305: ``Dialer.race``): the
  families interleaved, starting with the resolver's first address; the next one starts when
  the previous fails or has not connected within 0.25 s; the first to connect is used
  (``address``), and if none does, the first address's error is the failure.
- At most 10 redirects are followed, each recorded; the 11th is ``http_too_many_redirects``.
- At most 512 KiB of the (decoded) body is read, decoded with bounded output at every layer
  of stacked codings (``probes.decoding``: a compression bomb of any ratio stops at the
  cap); its SHA-256 and length describe what was read,
  and ``body_truncated`` says more was sent. Its first 8 KiB are kept as text
  (``body_sample``) for block-page fingerprints.
- Timeouts per layer (connect: ``tcp``, handshake: ``tls``, read/write/pool: ``http``) under an
  overall deadline of their sum. The failed operation is the layer in progress when the fetch
  failed (``resolve``, ``connect``, ``tls_handshake``, ``http_round_trip``, or ``proxy_connect``
  when the proxy itself failed).
- A fetch that timed out once connected (at ``tls_handshake`` or ``http_round_trip``) is made
  once more, on new connections: one segment lost and retransmitted late is not a censor. Both
  ``HTTPObservation`` are recorded, in order; the second decides the measurement.

Size: the scope-checked network backend (``ScopedBackend``, ``ScopedStream``) and the requests
sent over it exist only for this probe's fetches (the other probes dial with ``probes.dial``
directly), and each guarantee above spans both them and the probe; the probe itself is the last
third.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import re
import socket
import ssl
import typing
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

import anyio.abc
import httpcore
import httpx
from httpcore._backends.anyio import AnyIOStream  # what httpcore.AnyIOBackend returns

from blockwatch.probes import pacing
from blockwatch.probes.context import ProbeContext, ProbeResult
from blockwatch.probes.decoding import read_decoded
from blockwatch.probes.dial import Clock, Dialer
from blockwatch.probes.errors import KnownFailure, ProbeError, ProxyConnectError
from blockwatch.probes.failures import (
    DNS_NO_ANSWER,
    GENERIC_TIMEOUT,
    TOO_MANY_REDIRECTS,
    classify,
)
from blockwatch.probes.model import DNSObservation, HTTPObservation, Service, Target
from blockwatch.probes.pacing import NO_SLOT, Slot
from blockwatch.probes.targets import PlanContext, url_endpoint

MAX_REDIRECTS = 10
BODY_CAP = 512 * 1024
# Block pages are small (often one injected TCP segment) and say who they are near the top;
# 8 KiB per fetch keeps them matchable by fingerprints, now and on re-analysis, without
# storing whole pages.
BODY_SAMPLE_CAP = 8 * 1024
TITLE_CAP = 200
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)


@dataclass
class Progress:
    """What the backend saw: the layer in progress and the DNS facts, for the probe to report."""

    stage: str = "http_round_trip"  # until a connection is being made
    dns: dict[str, tuple[DNSObservation, ...]] = field(default_factory=dict)


# --- the network backend: every connection is resolved by us and scope-checked ----------------


class ScopedStream(httpcore.AsyncNetworkStream):
    """A connection that reports the handshake as its own layer, under its own timeout, and
    gives back its share of our limits (``slot``) when it closes."""

    def __init__(
        self, inner: httpcore.AsyncNetworkStream, ctx: ProbeContext, progress: Progress,
        server_addr: tuple[str, int], slot: Slot = NO_SLOT,
    ) -> None:
        self._inner, self._ctx, self._progress = inner, ctx, progress
        self._server_addr = server_addr
        self._slot = slot

    # httpcore's stream and backend interfaces take ``timeout`` arguments (hence the noqa)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._slot.release()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (ours comes from ctx.timeouts.tls)
    ) -> httpcore.AsyncNetworkStream:
        self._progress.stage = "tls_handshake"
        inner = await self._inner.start_tls(ssl_context, server_hostname, self._ctx.timeouts.tls)
        self._progress.stage = "http_round_trip"
        slot, self._slot = self._slot, NO_SLOT  # the TLS stream owns the connection now
        return ScopedStream(inner, self._ctx, self._progress, self._server_addr, slot)

    def get_extra_info(self, info: str) -> typing.Any:
        # through a proxy, the server is the name we asked for, not the proxy's address
        if info == "server_addr":
            return self._server_addr
        return self._inner.get_extra_info(info)


def _httpcore_error(exc: OSError) -> Exception:
    """A dialer's error as httpcore's own, as a network backend must raise it."""
    if isinstance(exc, TimeoutError):
        return httpcore.ConnectTimeout(str(exc))
    return httpcore.ConnectError(str(exc))


class ScopedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend: names resolved by ``ctx.lookup``, connections made by the
    dialer (``probes.dial``: scope, our limits, source address, RFC 8305, SOCKS5), and the
    dialer's errors handed to httpcore as httpcore's own."""

    def __init__(self, ctx: ProbeContext, progress: Progress) -> None:
        self._ctx, self._progress = ctx, progress
        self._dialer = Dialer.of(ctx)

    async def _resolve(self, host: str, operation: str) -> tuple[str, ...]:
        self._progress.stage = operation
        found = await self._ctx.lookup(host, every_address=False)
        if operation == "resolve":
            self._progress.dns.setdefault(host, found.observations)
        if found.failure or not found.addresses:
            raise KnownFailure(found.failure or DNS_NO_ANSWER, operation)
        return found.addresses

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None, socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if self._dialer.proxy is not None:
            proxy_address = (await self._resolve(self._dialer.proxy.host, "proxy_connect"))[0]
            try:
                conn = await self._dialer.tunnel(proxy_address, host, port, timeout)
            except ProxyConnectError as exc:  # our own proxy: the stage stays proxy_connect
                raise httpcore.ConnectError(str(exc)) from exc
            except OSError as exc:  # the proxy could not reach the target, or never said
                self._progress.stage = "connect"
                raise _httpcore_error(exc) from exc
        else:
            addresses = await self._resolve(host, "resolve")
            self._progress.stage = "connect"
            try:
                conn = await self._dialer.race(addresses, port, timeout)
            except OSError as exc:  # an address outside the scope is raised as it is
                raise _httpcore_error(exc) from exc
        self._progress.stage = "http_round_trip"
        try:
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            inner = AnyIOStream(await anyio.abc.SocketStream.from_socket(conn.sock))
        except BaseException:
            conn.close()
            raise
        # through a proxy, the server is the name asked for
        return ScopedStream(inner, self._ctx, self._progress, (conn.address, port), conn.slot)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("blockwatch probes do not use Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


# --- requests over httpcore connections of our own ----------------------------------------------

# httpx 0.28 has no public way to hand its transport a network backend, so requests go to an
# httpcore connection we build, as httpx.AsyncHTTPTransport would: httpcore errors become httpx
# errors.
_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


def _reraise_mapped(exc: Exception) -> typing.NoReturn:
    for source, target in _EXCEPTIONS:  # most specific first
        if isinstance(exc, source):
            raise target(str(exc)) from exc
    raise exc


class _Body(httpx.AsyncByteStream):
    """A response body whose end closes its connection (one connection per request)."""

    def __init__(self, stream: typing.AsyncIterable[bytes],
                 connection: httpcore.AsyncHTTPConnection) -> None:
        self._stream, self._connection = stream, connection

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except Exception as exc:
            _reraise_mapped(exc)

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._stream, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            await self._connection.aclose()


# the headers httpx's client sends by default, so that requests look as they always have
_HEADERS = (("Accept", "*/*"), ("Accept-Encoding", "gzip, deflate"),
            ("Connection", "keep-alive"))


async def send(ctx: ProbeContext, progress: Progress, request: httpx.Request) -> httpx.Response:
    """One request on a connection of its own, through ``ScopedBackend`` (no client and no
    pool: a sweep sends thousands of requests, each measured from its own connection)."""
    url = request.url
    if url.scheme not in ("http", "https"):
        raise httpx.UnsupportedProtocol(f"Request URL has an unsupported protocol "
                                        f"'{url.scheme}://'." if url.scheme else
                                        "Request URL is missing an 'http://' or 'https://' "
                                        "protocol.")
    port = url.port or (443 if url.scheme == "https" else 80)
    connection = httpcore.AsyncHTTPConnection(
        origin=httpcore.Origin(url.raw_scheme, url.raw_host, port),
        # plain HTTP needs no TLS context (building the first one loads the CA store)
        ssl_context=ctx.ssl_context(verify=True) if url.scheme == "https" else None,
        network_backend=ScopedBackend(ctx, progress),
    )
    assert isinstance(request.stream, httpx.AsyncByteStream)
    core = httpcore.Request(
        method=request.method,
        url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port,
                         target=url.raw_path),
        headers=request.headers.raw, content=request.stream, extensions=request.extensions)
    try:
        resp = await connection.handle_async_request(core)
    except BaseException as exc:
        await connection.aclose()
        if isinstance(exc, Exception):
            _reraise_mapped(exc)
        raise
    assert isinstance(resp.stream, typing.AsyncIterable)
    return httpx.Response(status_code=resp.status, headers=resp.headers,
                          stream=_Body(resp.stream, connection), extensions=resp.extensions,
                          request=request)


def redirect(request: httpx.Request, response: httpx.Response) -> httpx.Request | None:
    """The GET a redirect leads to (as httpx's client builds it), or None."""
    if not response.has_redirect_location:
        return None
    try:
        url = httpx.URL(response.headers["Location"])
    except httpx.InvalidURL as exc:
        raise httpx.RemoteProtocolError(f"Invalid URL in location header: {exc}.",
                                        request=request) from None
    if url.scheme and not url.host:  # "http:///path": the same host
        url = url.copy_with(host=request.url.host)
    if url.is_relative_url:
        url = request.url.join(url)
    if request.url.fragment and not url.fragment:
        url = url.copy_with(fragment=request.url.fragment)
    headers = [(k, v) for k, v in request.headers.multi_items()
               if k.lower() not in ("host", "cookie")]
    return httpx.Request("GET", url, headers=headers, extensions=request.extensions)


# --- the probe --------------------------------------------------------------------------------


async def read_capped(response: httpx.Response, cap: int = BODY_CAP) -> tuple[bytes, bool]:
    """At most ``cap`` bytes of the decoded body, and whether the server sent more; decoded
    with bounded output (``probes.decoding``: a compression bomb stops at the cap)."""
    return await read_decoded(response.aiter_raw(), response.headers.get("content-encoding"),
                              cap)


def extract_title(body: bytes, encoding: str | None = None) -> str | None:
    """The page's <title>: entities decoded, whitespace collapsed, at most 200 characters."""
    match = _TITLE.search(body)
    if match is None:
        return None
    try:
        text = match.group(1).decode(encoding or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        text = match.group(1).decode("utf-8", errors="replace")
    return " ".join(html.unescape(text).split())[:TITLE_CAP]


def body_sample(body: bytes, encoding: str | None = None) -> str:
    """The first ``BODY_SAMPLE_CAP`` bytes of the body as text (undecodable bytes replaced)."""
    head = body[:BODY_SAMPLE_CAP]
    try:
        return head.decode(encoding or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return head.decode("utf-8", errors="replace")


@dataclass
class Fetch:
    """The last response seen and the redirects followed to it."""

    redirects: list[str] = field(default_factory=list)
    response: httpx.Response | None = None
    body: bytes | None = None
    truncated: bool = False
    failure: str | None = None


async def fetch(ctx: ProbeContext, progress: Progress, url: str, into: Fetch) -> None:
    """Follow up to ``MAX_REDIRECTS`` redirects and read the final body, filling ``into``.
    Cookies set on the way are sent on (some sites redirect to themselves with one), and are
    forgotten with the fetch."""
    t = ctx.timeouts
    request: httpx.Request | None = httpx.Request(
        "GET", url, headers=[*_HEADERS, ("User-Agent", ctx.user_agent)],
        extensions={"timeout": {"connect": t.tcp, "read": t.http, "write": t.http,
                                "pool": t.http}})
    cookies = httpx.Cookies()
    while request is not None:
        if cookies:
            cookies.set_cookie_header(request)
        response = await send(ctx, progress, request)
        into.response = response
        try:
            if "set-cookie" in response.headers:
                cookies.extract_cookies(response)
            following = redirect(request, response)
            if following is None:
                into.body, into.truncated = await read_capped(response)
                return
            if len(into.redirects) == MAX_REDIRECTS:
                into.failure = TOO_MANY_REDIRECTS
                return
            request = following
            into.redirects.append(str(request.url))
        finally:
            await response.aclose()


def _server_address(response: httpx.Response | None) -> str | None:
    stream = response.extensions.get("network_stream") if response is not None else None
    addr = stream.get_extra_info("server_addr") if stream is not None else None
    return str(addr[0]) if addr else None


def observation(url: str, got: Fetch, t0: float, t: float, failure: str | None) -> HTTPObservation:
    response, body = got.response, got.body
    return HTTPObservation(
        url=url,
        t0=t0,
        t=t,
        status=response.status_code if response is not None else None,
        redirects=tuple(got.redirects),
        http_version=response.http_version if response is not None else None,
        headers=tuple((k.decode("latin-1"), v.decode("latin-1"))
                      for k, v in (response.headers.raw if response is not None else ())),
        body_length=len(body) if body is not None else None,
        body_sha256=hashlib.sha256(body).hexdigest() if body is not None else None,
        body_truncated=got.truncated,
        title=extract_title(body, response.charset_encoding) if body and response else None,
        address=_server_address(response),
        failure=failure,
        body_sample=body_sample(body, response.charset_encoding) if body and response else None,
    )


_EXPECTED = (httpx.HTTPError, OSError, ProbeError)  # TimeoutError is an OSError


class HTTPProbe:
    """What does the URL answer, and where do its redirects lead?"""

    name = "http"
    version = "5"  # 2: body_sample; 3: addresses raced (Happy Eyeballs); 4: families
    # interleaved (RFC 8305), through the one dialer; 5: a timeout once connected is fetched again

    async def observe(self, target: Target, ctx: ProbeContext) -> ProbeResult:
        url = target.url or f"https://{target.host}/"
        clock, progress = Clock(), Progress()
        t = ctx.timeouts
        first = await _attempt(ctx, progress, url, clock, t.tcp + t.tls + t.http)
        tries = [first]
        if first.failure == GENERIC_TIMEOUT and first.operation in _AFTER_CONNECT \
                and first.left > RETRY_MIN_S:  # the two share the fetch's overall deadline
            tries.append(await _attempt(ctx, Progress(dns=progress.dns), url, clock,
                                        first.left))
        last = tries[-1]
        dns = tuple(o for observations in progress.dns.values() for o in observations)
        if last.failure is not None and last.operation == "resolve" and last.got.response is None:
            return ProbeResult(dns, last.failure, last.operation)
        return ProbeResult((*dns, *(a.observation for a in tries)), last.failure, last.operation)


# a timeout once connected may be one segment retransmitted too late (3 s, then 6 s after a
# retransmitted SYN): the fetch is made once more, and the second one counts (both recorded),
# within what is left of the overall deadline (a body trickled until the deadline is not
# fetched twice)
_AFTER_CONNECT = frozenset({"tls_handshake", "http_round_trip"})
RETRY_MIN_S = 1.0


@dataclass(slots=True)
class _Try:
    got: Fetch
    observation: HTTPObservation
    failure: str | None
    operation: str | None
    left: float  # seconds of the deadline left when it ended (0: the deadline ended it)


async def _attempt(ctx: ProbeContext, progress: Progress, url: str, clock: Clock,
                   budget: float) -> _Try:
    got, failure, operation = Fetch(), None, None
    t0 = clock()
    loop = asyncio.get_running_loop()
    timer: asyncio.Timeout | None = None
    try:
        async with pacing.deadline(budget) as timer:
            await fetch(ctx, progress, url, got)
    except KnownFailure as exc:
        failure, operation = exc.failure, exc.operation
    except _EXPECTED as exc:
        failure, operation = classify(exc), progress.stage
    if got.failure is not None:
        failure, operation = got.failure, "http_round_trip"
    when = timer.when() if timer is not None else None
    left = max(0.0, when - loop.time()) if when is not None else 0.0
    return _Try(got, observation(url, got, t0, clock(), failure), failure, operation, left)


def plan_targets(service: Service, pc: PlanContext) -> list[Target]:
    """Every URL of the service."""
    return [Target(service=service.name, probe="http", host=url_endpoint(u)[0], url=u)
            for u in dict.fromkeys(service.urls)]
