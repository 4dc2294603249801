"""The trace probe's packets: raw sockets that capture a flow's SYN-ACK, RSTs and ICMP errors,
the defensive parsing of what they read, and the kernel sockets and payloads a trace sends with.

``probes.trace`` watches a flow (``Capture.watch``) while it connects or sends crafted SYNs
(``Capture.send``), and reads what the flow collected (``Flow``).

Guarantees:

- One set of raw sockets per event loop is shared by every trace running on it (``acquire``
  opens it for the first user, ``release`` closes it after the last); opening it without
  CAP_NET_RAW raises ``OSError`` (usually ``PermissionError``) and sends nothing.
- A kernel BPF filter passes only SYN/RST segments, ICMP is limited to time-exceeded and
  unreachable; packets are read by the event loop (no threads, at most ``_READS_PER_WAKEUP``
  a wake-up), only those of a watched flow are parsed, and parsing is defensive (a malformed
  or truncated packet is ignored, never raised). At most ``MAX_PACKETS`` of each kind are kept
  per flow.
- A crafted packet is scope-checked again as it is sent (``Capture.send``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import ipaddress
import socket
import ssl
import struct
import termios
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from blockwatch.probes import failures as F
from blockwatch.probes.context import ProbeContext
from blockwatch.probes.dial import Clock

MAX_PACKETS = 16  # RSTs, and ICMP messages, kept per flow
SNAPLEN = 256  # bytes of each captured packet: the IP and TCP headers with options
ALPN = ("h2", "http/1.1")

_SOL_RAW, _ICMP_FILTER = 255, 1  # linux/icmp.h
_SO_ATTACH_FILTER = 26
_READS_PER_WAKEUP = 256  # a flood cannot starve the event loop


# --- parsing: malformed or truncated packets give None, never an exception -------------------


@dataclass(frozen=True, slots=True)
class Segment:
    """The facts of one captured TCP segment."""

    src: str
    dst: str
    sport: int
    dport: int
    ttl: int
    ipid: int
    df: bool
    window: int
    flags: str  # scapy's letters: "SA", "R", "RA", ...
    seq: int
    ack: int

    def facts(self) -> dict[str, Any]:
        return {"ttl": self.ttl, "ipid": self.ipid, "df": self.df, "window": self.window}


@dataclass(frozen=True, slots=True)
class Icmp:
    """An ICMP error about a TCP segment: who sent it and the flow its quoted header names."""

    src: str
    type: int  # 11 time exceeded, 3 destination unreachable
    code: int
    qdst: str
    qsport: int
    qdport: int
    qid: int


def _ipv4_header(raw: bytes, proto: int, need: int) -> int | None:
    """The IP header length if ``raw`` starts like an unfragmented IPv4 packet of ``proto``
    with at least ``need`` bytes after the header, else None."""
    if len(raw) < 20 or raw[0] >> 4 != 4 or raw[9] != proto:
        return None
    ihl = (raw[0] & 0x0F) * 4
    if ihl < 20 or len(raw) < ihl + need:
        return None
    if struct.unpack_from("!H", raw, 6)[0] & 0x1FFF:  # a later fragment: no header inside
        return None
    return ihl


def _tcp_key(raw: bytes) -> FlowKey | None:
    """The flow a captured TCP packet belongs to, read cheaply: (source, sport, dport)."""
    ihl = _ipv4_header(raw, socket.IPPROTO_TCP, 4)
    if ihl is None:
        return None
    sport, dport = struct.unpack_from("!HH", raw, ihl)
    return (socket.inet_ntoa(raw[12:16]), sport, dport)


def parse_tcp(raw: bytes) -> Segment | None:
    """A captured IPv4 TCP packet, or None if it is not one or is cut short."""
    if _ipv4_header(raw, socket.IPPROTO_TCP, 20) is None:
        return None
    try:
        from scapy.layers.inet import IP, TCP

        pkt = IP(raw)
        if TCP not in pkt:
            return None
        ip, tcp = pkt[IP], pkt[TCP]
        return Segment(src=str(ip.src), dst=str(ip.dst), sport=int(tcp.sport),
                       dport=int(tcp.dport), ttl=int(ip.ttl), ipid=int(ip.id),
                       df=bool(ip.flags.DF), window=int(tcp.window), flags=str(tcp.flags),
                       seq=int(tcp.seq), ack=int(tcp.ack))
    except Exception:  # hostile input: whatever scapy makes of it, it is not evidence
        return None


def parse_icmp(raw: bytes) -> Icmp | None:
    """A captured ICMP time-exceeded or unreachable quoting a TCP header, or None."""
    ihl = _ipv4_header(raw, socket.IPPROTO_ICMP, 8 + 20 + 8)
    if ihl is None or raw[ihl] not in (3, 11):
        return None
    try:
        from scapy.layers.inet import ICMP, IP, IPerror, TCPerror

        pkt = IP(raw)
        if ICMP not in pkt or IPerror not in pkt or TCPerror not in pkt:
            return None
        quoted, qtcp = pkt[IPerror], pkt[TCPerror]
        if int(quoted.proto) != socket.IPPROTO_TCP or qtcp.dport is None:
            return None
        return Icmp(src=str(pkt[IP].src), type=int(pkt[ICMP].type), code=int(pkt[ICMP].code),
                    qdst=str(quoted.dst), qsport=int(qtcp.sport), qdport=int(qtcp.dport),
                    qid=int(quoted.id))
    except Exception:  # hostile input
        return None


# --- capture: raw sockets shared by every trace on one event loop ----------------------------


def _syn_rst_filter() -> list[tuple[int, int, int, int]]:
    """Classic BPF over an IPv4 packet: accept TCP segments with SYN or RST, drop the rest."""
    return [
        (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf): the IP header length
        (0x50, 0, 0, 13),  # ldb [x+13]: the TCP flags
        (0x45, 0, 1, 0x06),  # jset #SYN|RST
        (0x06, 0, 0, SNAPLEN),  # ret #SNAPLEN
        (0x06, 0, 0, 0),  # ret #0
    ]


def _attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)


FlowKey = tuple[str, int, int]  # remote address, remote port, our port


@dataclass(eq=False)
class Flow:
    """What the capture saw of one connection (or one crafted SYN) with the remote side."""

    remote: str
    rport: int
    lport: int
    clock: Clock
    phase: str = "syn"  # "data" once our payload is about to leave
    synack: Segment | None = None
    resets: list[tuple[Segment, str, float]] = field(default_factory=list)
    icmp: list[Icmp] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def key(self) -> FlowKey:
        return (self.remote, self.rport, self.lport)

    def add_segment(self, seg: Segment) -> None:
        if "R" in seg.flags:
            if len(self.resets) < MAX_PACKETS:
                self.resets.append((seg, self.phase, self.clock()))
        elif "S" in seg.flags and "A" in seg.flags and self.synack is None:
            self.synack = seg
        else:
            return
        self.changed.set()

    def add_icmp(self, msg: Icmp) -> None:
        if len(self.icmp) < MAX_PACKETS:
            self.icmp.append(msg)
            self.changed.set()


class Capture:
    """Raw sockets (TCP and ICMP in, IP out) read by the event loop, demultiplexed by flow."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.users = 0
        self.flows: dict[FlowKey, Flow] = {}
        self._tcp: socket.socket | None = None
        self._icmp: socket.socket | None = None
        self._out: socket.socket | None = None

    def open(self) -> None:
        """Open the sockets; raises PermissionError (or OSError) without CAP_NET_RAW."""
        opened: list[socket.socket] = []
        try:
            tcp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
            opened.append(tcp)
            icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            opened.append(icmp)
            out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            opened.append(out)
            _attach_filter(tcp, _syn_rst_filter())
            wanted = (1 << 3) | (1 << 11)  # ICMP_FILTER drops the types whose bit is set
            icmp.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("I", ~wanted & 0xFFFFFFFF))
            for s in opened:
                s.setblocking(False)
        except BaseException:
            for s in opened:
                s.close()
            raise
        self._tcp, self._icmp, self._out = tcp, icmp, out
        self.loop.add_reader(tcp.fileno(), self._read_tcp)
        self.loop.add_reader(icmp.fileno(), self._read_icmp)

    def close(self) -> None:
        for s in (self._tcp, self._icmp):
            if s is not None:
                self.loop.remove_reader(s.fileno())
        for s in (self._tcp, self._icmp, self._out):
            if s is not None:
                s.close()
        self._tcp = self._icmp = self._out = None
        self.flows.clear()

    def _reads(self, sock: socket.socket | None) -> Iterator[bytes]:
        if sock is None:
            return
        for _ in range(_READS_PER_WAKEUP):
            try:
                yield sock.recv(SNAPLEN)
            except OSError:  # nothing queued (EAGAIN), or ENOBUFS after an overflow: next time
                return

    def _read_tcp(self) -> None:
        for raw in self._reads(self._tcp):
            if _tcp_key(raw) not in self.flows:  # other connections are never parsed
                continue
            seg = parse_tcp(raw)
            if seg is not None:
                flow = self.flows.get((seg.src, seg.sport, seg.dport))
                if flow is not None:
                    flow.add_segment(seg)

    def _read_icmp(self) -> None:
        for raw in self._reads(self._icmp):
            msg = parse_icmp(raw)
            if msg is not None:
                flow = self.flows.get((msg.qdst, msg.qdport, msg.qsport))
                if flow is not None:
                    flow.add_icmp(msg)

    def drain(self) -> None:
        """Read what is queued now: the raw copy of a packet is queued before TCP handles it,
        so after a socket call returns, its cause is here."""
        self._read_tcp()
        self._read_icmp()

    def watch(self, remote: str, rport: int, lport: int, clock: Clock) -> Flow:
        flow = Flow(remote, rport, lport, clock)
        self.flows[flow.key] = flow
        return flow

    def unwatch(self, flow: Flow) -> None:
        if self.flows.get(flow.key) is flow:
            del self.flows[flow.key]

    async def send(self, packet: bytes, dst: str, scope_check: Callable[[str], None]) -> None:
        scope_check(dst)
        assert self._out is not None
        await self.loop.sock_sendto(self._out, packet, (dst, 0))


_CAPTURES: dict[asyncio.AbstractEventLoop, Capture] = {}


def acquire() -> Capture:
    """The running event loop's capture, opened by its first user; raises OSError (usually
    PermissionError) when raw sockets are not allowed."""
    loop = asyncio.get_running_loop()
    cap = _CAPTURES.get(loop)
    if cap is None:
        cap = Capture(loop)
        cap.open()
        _CAPTURES[loop] = cap
    cap.users += 1
    return cap


def release(cap: Capture) -> None:
    """Closed by its last user."""
    cap.users -= 1
    if cap.users == 0:
        if _CAPTURES.get(cap.loop) is cap:
            del _CAPTURES[cap.loop]
        cap.close()


# --- sockets and payloads ---------------------------------------------------------------------


def client_hello(ctx: ProbeContext, sni: str | None) -> bytes:
    """The bytes of a real ClientHello naming ``sni``, as Python's TLS would send them."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.ssl_context(verify=False, alpn=ALPN).wrap_bio(incoming, outgoing,
                                                            server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def http_request(ctx: ProbeContext, host: str, port: int) -> bytes:
    shown = f"[{host}]" if ":" in host else host
    authority = shown if port == 80 else f"{shown}:{port}"
    return (f"GET / HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {ctx.user_agent}\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n").encode("ascii", "replace")


def _source(ctx: ProbeContext, address: str) -> str:
    """Our address towards ``address``: the configured IPv4 source, else the kernel's route
    (a connected UDP socket sends nothing)."""
    if ctx.source_address and ipaddress.ip_address(ctx.source_address).version == 4:
        return ctx.source_address
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((address, 9))
        return str(s.getsockname()[0])


def _stream_socket(ctx: ProbeContext, address: str) -> socket.socket:
    """A non-blocking TCP socket already bound, so its port is known before the SYN leaves."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        source = ctx.source_address
        if source and ipaddress.ip_address(source).version != 4:
            source = None
        sock.bind((source or "", 0))
    except BaseException:
        sock.close()
        raise
    return sock


def _abort(sock: socket.socket) -> None:
    """Close at once: full TTL again, then a RST (our half-finished flows leave no state)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, -1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _unacked(sock: socket.socket) -> int | None:
    """Bytes we sent that the peer has not acknowledged (SIOCOUTQ), None if unknown."""
    try:
        out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    except OSError:
        return None
    return int(struct.unpack("i", out)[0])


_REPLY = {F.CONNECTION_REFUSED: "refused", F.CONNECTION_RESET: "rst",
          F.CONNECTION_ABORTED: "rst", F.GENERIC_TIMEOUT: "timeout",
          F.HOST_UNREACHABLE: "unreachable", F.NETWORK_UNREACHABLE: "unreachable",
          F.EOF_ERROR: "closed"}


def _reply_for(exc: BaseException) -> str:
    return _REPLY.get(F.classify(exc), "error")

