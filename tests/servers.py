"""Real loopback servers for probe tests: each one behaves like a server, a censor or a proxy.

Everything listens on 127.0.0.1 (or ::1) only, on an ephemeral port, and is closed by its
``async with`` block: connection handlers are cancelled and their sockets closed, so tests run
cleanly with warnings as errors. Servers count accepted connections (``accepted``), so a test can
prove that nothing was sent. Certificates come from ``trustme``; the client trusts ``pki.ca`` via
``ProbeContext.ca_bundle``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import trustme

Handler = Callable[["LoopbackServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def abort_with_reset(writer: asyncio.StreamWriter) -> None:
    """Close at once with an RST (SO_LINGER 0), as a censor's injected reset looks to the client."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class LoopbackServer:
    """An asyncio TCP server on loopback running ``handler`` for each connection.

    ``tls``: a server context to wrap each connection in (after counting the accept), so TCP
    accepts are counted even when the TLS handshake then fails.
    """

    def __init__(
        self, handler: Handler, *, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None
    ) -> None:
        self.handler, self.host, self.tls = handler, host, tls
        self.port = 0
        self.accepted = 0
        self.peers: list[str] = []
        self.requests: list[Request] = []
        self.sni: list[str | None] = []
        self.slow_delay = 30.0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        if tls is not None:
            tls.sni_callback = self._record_sni

    def _record_sni(self, _obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.sni.append(name)

    async def __aenter__(self) -> LoopbackServer:
        self._server = await asyncio.start_server(self._on_client, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.accepted += 1
        self.peers.append(writer.get_extra_info("peername")[0])
        try:
            if self.tls is not None:
                await writer.start_tls(self.tls)
            await self.handler(self, reader, writer)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client (a probe) may leave in any state: that is what is being tested
        except asyncio.CancelledError:
            pass  # shutdown; asyncio's stream callback would log a cancelled handler as an error
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.transport.abort()


# --- handlers: what the server (or the censor on its path) does --------------------------------


async def reset_on_accept(_s: LoopbackServer, _r: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
    abort_with_reset(writer)


async def reset_on_data(_s: LoopbackServer, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
    """Let the handshake finish, reset when the first data arrives (a censor reading SNI/Host)."""
    await reader.read(1)
    abort_with_reset(writer)


async def close_on_data(_s: LoopbackServer, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
    """Read the first data, then close cleanly (FIN): the client sees an unexpected EOF."""
    await reader.read(1)
    writer.close()


def sni_filter(blocked: str, context: ssl.SSLContext) -> Handler:
    """A TLS server behind an SNI filter: a ClientHello naming ``blocked`` gets a RST, any
    other name a real handshake (served through memory BIOs from the bytes already read)."""

    async def handler(_s: LoopbackServer, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        first = await reader.read(16384)
        if blocked.encode() in first:
            abort_with_reset(writer)
            return
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_side=True)
        incoming.write(first)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                writer.write(outgoing.read())
                data = await reader.read(16384)
                if not data:
                    return
                incoming.write(data)
        writer.write(outgoing.read())
        await writer.drain()
        await reader.read(1)
        writer.close()

    return handler


async def silent(_s: LoopbackServer, reader: asyncio.StreamReader,
                 _w: asyncio.StreamWriter) -> None:
    """Accept and read, never answer (a censor dropping the server's packets)."""
    while await reader.read(65536):
        pass


def silent_once(context: ssl.SSLContext, then: Handler) -> Handler:
    """Packet loss, as a client sees it: the first connection hears nothing after its handshake
    (segments lost until the client gives up), every later one is served (TLS with ``context``,
    then ``then``)."""

    async def handler(server: LoopbackServer, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        if server.accepted == 1:
            await silent(server, reader, writer)
            return
        await writer.start_tls(context)
        await then(server, reader, writer)

    return handler


# --- HTTP ---------------------------------------------------------------------------------------

TITLE_PAGE = (b"<!doctype html><html><head><TITLE lang=en>\n  Hello,   blocked\tWorld &amp; co\n"
              b"</title></head><body>hi</body></html>")
LARGE_BODY = bytes(range(256)) * (600 * 4)  # 600 KiB, more than the 512 KiB cap
EXACT_BODY = b"x" * (512 * 1024)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    line = await reader.readline()
    if not line.strip():
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (line := await reader.readline()).strip():
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return Request(method, path, headers)


def response(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    reason = {200: "OK", 302: "Found", 404: "Not Found"}.get(status, "Status")
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}",
             "Content-Type: text/html; charset=utf-8", "Set-Cookie: seen=1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _route(server: LoopbackServer, req: Request, writer: asyncio.StreamWriter) -> bool:
    """Answer one request; return False when the connection must end."""
    path = req.path
    if path.startswith("/redirect/"):
        n = int(path.rsplit("/", 1)[1])
        where = f"/redirect/{n - 1}" if n > 1 else "/"  # exactly n redirects to /
        writer.write(response(302, headers={"Location": where}))
    elif path == "/warning":  # South Korea's block-page redirect (KCSC)
        writer.write(response(302, headers={"Location": "http://warning.or.kr/i3.html"}))
    elif path == "/loop":
        writer.write(response(302, headers={"Location": "/loop"}))
    elif path == "/large":
        writer.write(response(200, LARGE_BODY))
    elif path == "/exact":
        writer.write(response(200, EXACT_BODY))
    elif path == "/slow":
        await asyncio.sleep(server.slow_delay)
        writer.write(response(200, TITLE_PAGE))
    elif path == "/reset":
        abort_with_reset(writer)
        return False
    elif path == "/close":
        return False
    elif path == "/":
        writer.write(response(200, TITLE_PAGE))
    else:
        writer.write(response(404, b"<title>Not found</title>"))
    await writer.drain()
    return True


async def http(server: LoopbackServer, reader: asyncio.StreamReader,
               writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1 with keep-alive. Routes: / (a title), /redirect/N (N hops to /), /loop (forever),
    /large (600 KiB), /exact (512 KiB), /slow (``slow_delay`` s), /reset, /close (no answer)."""
    while (req := await read_request(reader)) is not None:
        server.requests.append(req)
        if not await _route(server, req, writer):
            return


# --- certificates -------------------------------------------------------------------------------


@dataclass
class PKI:
    """A trusted CA (written to ``ca_bundle``), an untrusted one, and the server certificates."""

    ca: trustme.CA
    ca_bundle: str
    valid: trustme.LeafCert
    wrong_host: trustme.LeafCert
    expired: trustme.LeafCert
    unknown_ca: trustme.LeafCert
    via_intermediate: trustme.LeafCert  # served with its intermediate CA: a chain of two

    def server_context(self, cert: trustme.LeafCert) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx


def make_pki(directory: Path) -> PKI:
    ca, stranger = trustme.CA(), trustme.CA()
    now = dt.datetime.now(dt.UTC)
    bundle = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return PKI(
        ca=ca,
        ca_bundle=str(bundle),
        valid=ca.issue_cert("example.test", "127.0.0.1", "::1", common_name="example.test"),
        wrong_host=ca.issue_cert("other.test"),
        expired=ca.issue_cert("example.test", "127.0.0.1", not_before=now - dt.timedelta(days=30),
                              not_after=now - dt.timedelta(days=1)),
        unknown_ca=stranger.issue_cert("example.test", "127.0.0.1"),
        via_intermediate=ca.create_child_ca().issue_cert("example.test"),
    )


# --- ports that refuse or drop --------------------------------------------------------------------


@contextlib.contextmanager
def refusing_port(host: str = "127.0.0.1", port: int = 0) -> Iterator[int]:
    """A port that is bound but not listening: the kernel answers a SYN with RST (refused).

    ``port``: hold that port (e.g. the IPv6 twin of an IPv4 server's port) so nothing else
    can listen there during the test.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, port))
        yield sock.getsockname()[1]


@contextlib.contextmanager
def blackhole_port() -> Iterator[int]:
    """A port whose SYNs are dropped: a listener with a full backlog (0) that never accepts."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler.connect(("127.0.0.1", port))  # takes the only backlog slot
        yield port


# --- a SOCKS5 proxy -------------------------------------------------------------------------------


@dataclass
class SocksBehaviour:
    """How the test proxy behaves: credentials it requires, a reply code to fail with, names."""

    username: str | None = None
    password: str | None = None
    reply: int = 0
    names: dict[str, str] = field(default_factory=dict)  # the proxy's own DNS
    asked: list[tuple[int, str, int]] = field(default_factory=list)  # (atyp, host, port)


async def _socks_auth(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      how: SocksBehaviour) -> bool:
    _, n = await reader.readexactly(2)
    methods = await reader.readexactly(n)
    wanted = 0x02 if how.username is not None else 0x00
    if wanted not in methods:
        writer.write(b"\x05\xff")
        return False
    writer.write(bytes((5, wanted)))
    if wanted == 0x00:
        return True
    _, ulen = await reader.readexactly(2)
    user = (await reader.readexactly(ulen)).decode()
    (plen,) = await reader.readexactly(1)
    password = (await reader.readexactly(plen)).decode()
    ok = (user, password) == (how.username, how.password)
    writer.write(b"\x01\x00" if ok else b"\x01\x01")
    return ok


async def _socks_target(reader: asyncio.StreamReader) -> tuple[int, str, int]:
    _, _, _, atyp = await reader.readexactly(4)
    if atyp == 0x03:
        (n,) = await reader.readexactly(1)
        host = (await reader.readexactly(n)).decode()
    else:
        raw = await reader.readexactly(4 if atyp == 0x01 else 16)
        host = socket.inet_ntop(socket.AF_INET if atyp == 0x01 else socket.AF_INET6, raw)
    (port,) = struct.unpack("!H", await reader.readexactly(2))
    return atyp, host, port


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def socks5(how: SocksBehaviour) -> Handler:
    """A SOCKS5 CONNECT proxy that resolves names with ``how.names`` (loopback targets only)."""

    async def handle(_s: LoopbackServer, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        if not await _socks_auth(reader, writer, how):
            return
        atyp, host, port = await _socks_target(reader)
        how.asked.append((atyp, host, port))
        reply = how.reply
        upstream = None
        address = how.names.get(host, host)
        if reply == 0 and not _is_loopback(address):
            reply = 0x04  # never resolve or reach anything real: unknown names are unreachable
        if reply == 0:
            try:
                upstream = await asyncio.open_connection(address, port)
            except ConnectionRefusedError:
                reply = 0x05
        writer.write(bytes((5, reply, 0, 1, 127, 0, 0, 1, 0, 0)))
        await writer.drain()
        if upstream is None:
            return
        up_reader, up_writer = upstream
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.transport.abort()

    return handle
