"""A real DNS server on loopback for tests, whose behaviour is chosen per name.

It listens on UDP and TCP (the same random port on 127.0.0.1, or on ``host``, which may be ::1)
and, when given a TLS context, for DNS over TLS and DNS over HTTPS. It runs its own asyncio loop
in a thread, so it serves sync and async tests alike and its timing does not depend on the
test's event loop. Every query it receives is counted, so a test can prove a retry happened or
that nothing was sent at all.

    with DNSServer({"ok.test": Behaviour(addresses=("127.0.0.2",))}) as server:
        ...  # query server.udp / server.tcp; then check server.count("ok.test")
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


@dataclass(frozen=True)
class Behaviour:
    """How the server answers queries for one name.

    ``addresses`` answer A (IPv4 ones) and AAAA (IPv6 ones). ``forged`` makes the server act like
    an on-path injector: a forged answer with these addresses goes out first (from
    ``forged_port``'s socket if set, else with the IP TTL ``forged_ip_ttl``), then the real one
    after ``delay`` seconds, with the same id.
    """

    addresses: tuple[str, ...] = ()
    rcode: str = "NOERROR"
    ttl: int = 300
    silent: bool = False  # never answer
    silent_types: tuple[str, ...] = ()  # never answer these query types (e.g. ("AAAA",))
    drop_first: int = 0  # ignore the first N queries of each type: a lost packet
    garbage: bytes | None = None  # send these bytes instead of an answer
    truncate: bool = False  # send the first half of the answer only
    forged: tuple[str, ...] = ()
    forged_ip_ttl: int | None = None
    forged_other_port: bool = False  # the forged answer comes from another port of 127.0.0.1
    delay: float = 0.0  # seconds before the (real) answer
    http_status: int = 200  # DoH only
    flood: int = 0  # UDP: send the reply this many extra times (a resolver answering a flood)
    # other records, (type, text): e.g. ("HTTPS", '1 . alpn="h2" ech=...') answers HTTPS
    records: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Query:
    transport: str
    qname: str
    qtype: str
    id: int
    at: float  # time.monotonic() on arrival


NOT_FOUND = Behaviour(rcode="NXDOMAIN")
_StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def answer_wire(
    query: dns.message.Message, behaviour: Behaviour, addresses: tuple[str, ...]
) -> bytes:
    """The response to ``query``: the behaviour's rcode, and the addresses of the asked type."""
    resp = dns.message.make_response(query)
    resp.set_rcode(dns.rcode.from_text(behaviour.rcode))
    question = query.question[0]
    version = {dns.rdatatype.A: 4, dns.rdatatype.AAAA: 6}.get(question.rdtype)
    values = [a for a in addresses if ipaddress.ip_address(a).version == version]
    if version is None:
        values = [text for rdtype, text in behaviour.records
                  if dns.rdatatype.from_text(rdtype) == question.rdtype]
    if values and behaviour.rcode == "NOERROR":
        rdtype = dns.rdatatype.to_text(question.rdtype)
        resp.answer.append(
            dns.rrset.from_text_list(question.name, behaviour.ttl, "IN", rdtype, values)
        )
    return resp.to_wire()


@dataclass
class DNSServer:
    """The server; use it as a context manager. ``names`` may be changed while it runs."""

    names: dict[str, Behaviour] = field(default_factory=dict)
    tls: ssl.SSLContext | None = None  # serve DNS over TLS and DNS over HTTPS with this
    host: str = "127.0.0.1"
    queries: list[Query] = field(default_factory=list)
    port: int = 0
    tls_port: int = 0
    https_port: int = 0
    ip_ttl: int = 0  # the IP TTL of the server's normal answers
    keepalive: bool = False  # TCP/DoT/DoH: answer further queries on a connection, not close
    connections: dict[str, int] = field(default_factory=dict)  # accepted, by transport
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _udp: asyncio.DatagramTransport | None = None
    _udp_sock: socket.socket | None = None
    _other: socket.socket | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- addresses and counters for tests --------------------------------------------------

    @property
    def udp(self) -> str:
        return f"udp://{self._url_host}:{self.port}"

    @property
    def tcp(self) -> str:
        return f"tcp://{self._url_host}:{self.port}"

    def dot(self, name: str) -> str:
        return f"tls://{self._url_host}:{self.tls_port}#{name}"

    def doh(self, host: str | None = None) -> str:
        return f"https://{host or self._url_host}:{self.https_port}/dns-query"

    @property
    def endpoint(self) -> str:
        """``host:port`` as the probe records a response's source."""
        return f"{self._url_host}:{self.port}"

    @property
    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def _family(self) -> int:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    @property
    def _ttl_option(self) -> tuple[int, int]:
        if self._family == socket.AF_INET6:
            return socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS
        return socket.IPPROTO_IP, socket.IP_TTL

    def count(self, qname: str | None = None, qtype: str | None = None,
              transport: str | None = None) -> int:
        with self._lock:
            return sum(
                1
                for q in self.queries
                if qname in (None, q.qname)
                and qtype in (None, q.qtype)
                and transport in (None, q.transport)
            )

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> DNSServer:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("DNS test server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self, ready: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        servers = self._loop.run_until_complete(self._start())
        ready.set()
        try:
            self._loop.run_forever()
        finally:
            for srv in servers:
                srv.close()
            if self._udp is not None:
                self._udp.close()
            if self._other is not None:
                self._other.close()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.close()

    async def _start(self) -> list[asyncio.Server]:
        tcp = await self._bind_udp_and_tcp()
        servers = [tcp]
        if self.tls is not None:
            dot = await asyncio.start_server(self._serve_tcp("tls"), self.host, 0, ssl=self.tls)
            doh = await asyncio.start_server(self._serve_doh, self.host, 0, ssl=self.tls)
            self.tls_port = dot.sockets[0].getsockname()[1]
            self.https_port = doh.sockets[0].getsockname()[1]
            servers += [dot, doh]
        self._other = socket.socket(self._family, socket.SOCK_DGRAM)
        self._other.bind((self.host, 0))
        self._other.setblocking(False)
        return servers

    async def _bind_udp_and_tcp(self) -> asyncio.Server:
        """UDP on a random port, then TCP on the same one (retried if that port is taken)."""
        loop = asyncio.get_running_loop()
        for _ in range(20):
            sock = socket.socket(self._family, socket.SOCK_DGRAM)
            sock.bind((self.host, 0))
            port = sock.getsockname()[1]
            try:
                tcp = await asyncio.start_server(self._serve_tcp("tcp"), self.host, port)
            except OSError:
                sock.close()
                continue
            self._udp, _proto = await loop.create_datagram_endpoint(lambda: _UDP(self), sock=sock)
            self._udp_sock, self.port = sock, port
            self.ip_ttl = sock.getsockopt(*self._ttl_option)
            return tcp
        raise RuntimeError("no free port for UDP and TCP")

    # --- answering ------------------------------------------------------------------------

    def _receive(self, transport: str, wire: bytes) -> tuple[dns.message.Message, Behaviour] | None:
        """Parse and count a query; None if it is not one (the server ignores it)."""
        try:
            query = dns.message.from_wire(wire)
            question = query.question[0]
        except Exception:
            return None
        qname = question.name.to_text(omit_final_dot=True).lower()
        qtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            seen = sum(1 for q in self.queries if (q.qname, q.qtype) == (qname, qtype))
            self.queries.append(Query(transport, qname, qtype, query.id, time.monotonic()))
        behaviour = self.names.get(qname, NOT_FOUND)
        if behaviour.silent or qtype in behaviour.silent_types or seen < behaviour.drop_first:
            return None
        return query, behaviour

    @staticmethod
    def reply(query: dns.message.Message, behaviour: Behaviour) -> bytes:
        """The real reply's bytes (garbage or truncated if the behaviour says so)."""
        if behaviour.garbage is not None:
            return behaviour.garbage
        wire = answer_wire(query, behaviour, behaviour.addresses)
        return wire[: len(wire) // 2] if behaviour.truncate else wire

    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        received = self._receive("udp", data)
        if received is None:
            return
        query, behaviour = received
        if behaviour.forged:
            self._send_forged(answer_wire(query, behaviour, behaviour.forged), addr, behaviour)
        assert self._loop is not None and self._udp_sock is not None
        reply = self.reply(query, behaviour)
        # the raw socket, because asyncio's transport silently drops an empty datagram
        self._loop.call_later(behaviour.delay, self._udp_sock.sendto, reply, addr)
        for _ in range(behaviour.flood):
            with contextlib.suppress(OSError):  # the client's buffer full: that is the point
                self._udp_sock.sendto(reply, addr)

    def _send_forged(self, wire: bytes, addr: tuple[str, int], behaviour: Behaviour) -> None:
        assert self._udp_sock is not None and self._other is not None
        if behaviour.forged_other_port:
            self._other.sendto(wire, addr)
            return
        sock = self._udp_sock
        if behaviour.forged_ip_ttl is not None:
            sock.setsockopt(*self._ttl_option, behaviour.forged_ip_ttl)
        try:
            sock.sendto(wire, addr)  # synchronously, so the TTL applies to this datagram only
        finally:
            sock.setsockopt(*self._ttl_option, self.ip_ttl)

    def _accepted(self, transport: str) -> None:
        with self._lock:
            self.connections[transport] = self.connections.get(transport, 0) + 1

    def _serve_tcp(self, transport: str) -> _StreamHandler:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._accepted(transport)
            with contextlib.suppress(OSError, EOFError, ssl.SSLError):
                while True:
                    length = int.from_bytes(await reader.readexactly(2), "big")
                    received = self._receive(transport, await reader.readexactly(length))
                    if received is None:
                        await reader.read()  # silent: hold the connection until the client leaves
                        return
                    query, behaviour = received
                    await asyncio.sleep(behaviour.delay)
                    reply = self.reply(query, behaviour)
                    writer.write(len(reply).to_bytes(2, "big") + reply)
                    await writer.drain()
                    if not self.keepalive:
                        break
            writer.close()

        return serve

    async def _serve_doh(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A minimal HTTP/1.1 DoH endpoint: POST /dns-query with an application/dns-message."""
        self._accepted("https")
        with contextlib.suppress(OSError, EOFError, ssl.SSLError, ValueError):
            while await self._doh_request(reader, writer):
                pass
        writer.close()

    async def _doh_request(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> bool:
        """Answer one request; True if the connection stays open for another."""
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        headers = dict(
            line.split(":", 1) for line in head.split("\r\n")[1:] if ":" in line
        )
        lengths = [v for k, v in headers.items() if k.strip().lower() == "content-length"]
        body = await reader.readexactly(int(lengths[0]))
        received = self._receive("https", body)
        if received is None:
            await reader.read()
            return False
        query, behaviour = received
        await asyncio.sleep(behaviour.delay)
        reply = self.reply(query, behaviour) if behaviour.http_status == 200 else b"blocked"
        close = "keep-alive" if self.keepalive else "close"
        writer.write(
            f"HTTP/1.1 {behaviour.http_status} X\r\ncontent-type: application/dns-message\r\n"
            f"content-length: {len(reply)}\r\nconnection: {close}\r\n\r\n".encode()
            + reply
        )
        await writer.drain()
        return self.keepalive


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, server: DNSServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.on_datagram(data, addr)
