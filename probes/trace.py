"""The raw-packet evidence probe ``trace``: who really sent a reset, and where interference begins.

Per resolved IPv4 address of the endpoint:

1. A full-TTL attempt: the kernel connects, sends the mode's payload (``tls``: a real TLS
   ClientHello naming the SNI; ``http``: ``GET /`` with the Host; ``syn``: nothing) and waits for
   data, while raw sockets record the server side's SYN-ACK (IP TTL, IP-ID, DF, window) and every
   RST of the flow (the same, its flags, and whether it came after the SYN or after our data).
2. If that attempt met interference (a RST, no data, or no SYN-ACK) a TTL-limited search runs,
   one TTL at a time from 1: crafted SYNs when the handshake itself failed (or in mode ``syn``),
   else a full-TTL handshake followed by the payload sent with IP TTL n. Each step records ICMP
   time-exceeded (and from whom; the quoted header must name our flow), the server's answer,
   a RST, or silence; the search stops at the server, at the first reset, once silence has
   held for ``SILENT_CONFIRM`` more TTLs (a quiet router is not a drop), at ``MAX_HOPS``, or
   when the probe's time budget runs out (``decisive`` says when a search may stop; a search
   that ends neither decisively nor at ``MAX_HOPS`` was cut short by the budget).

The observation holds what was seen and nothing concluded from it: which RST was forged, the
injector's type and where interference begins are the analysis's readings of these facts
(``blockwatch.analysis.trace.read``), so a better reading corrects old measurements too.

Vocabulary: ``reply`` is ``data``, ``synack`` (mode syn), ``rst``, ``refused`` (RST to the
SYN), ``timeout`` (no SYN-ACK, or no data: ``synack`` says which), ``closed`` (FIN, no data),
``unreachable`` (ICMP) or ``error`` (our side). A hop's ``result`` is ``time_exceeded``,
``synack``/``data``/``acked`` (the server answered; ``acked``: it took the payload and said
nothing, so silence there is no drop), ``rst``, ``unreachable``, ``silent``, or, ending the
search without a claim, ``closed``, ``connect_failed``, ``send_failed``, ``error``.

Guarantees:

- The scope is checked before any packet leaves (every crafted packet is checked again when
  sent); an address outside it is recorded as ``out_of_scope``, nothing sent. Through a SOCKS
  proxy nothing is traced (raw packets would bypass it): ``trace_unsupported_with_proxy``.
- Without CAP_NET_RAW nothing at all is sent: each address gets an observation with
  ``capture=False`` and ``raw_socket_unavailable`` (operation ``raw_capture``), and a warning
  saying CAP_NET_RAW is needed is logged once; the other probes of a sweep run as usual.
- Interference is a finding, not a probe failure: the result fails only when nothing could be
  traced. IPv6 addresses are recorded as ``ipv6_not_supported``.
- Raw packets are captured and parsed by ``probes.capture``, which states how: one set of raw
  sockets per event loop shared by every trace, a kernel filter, the event loop reading (no
  threads), defensive parsing, at most ``MAX_PACKETS`` of each kind kept per flow. The kernel
  sockets and payloads a trace sends with are there too.
- Times are seconds since the probe started observing the target.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from blockwatch.probes import failures as F
from blockwatch.probes.capture import (
    Capture,
    Flow,
    _abort,
    _reply_for,
    _source,
    _stream_socket,
    _unacked,
    acquire,
    client_hello,
    http_request,
    release,
)
from blockwatch.probes.context import ProbeContext, ProbeResult
from blockwatch.probes.dial import Clock, plan
from blockwatch.probes.model import Observation, RawObservation, Service, Target
from blockwatch.probes.runner import deadline_for
from blockwatch.probes.targets import PlanContext, tcp_endpoints

log = logging.getLogger(__name__)

MODES = ("tls", "http", "syn")
MAX_HOPS = 30
SILENT_CONFIRM = 2  # further silent TTLs before silence counts as a drop
LINGER = 0.25  # after the full attempt: injectors send several RSTs in a burst
IPV6_UNSUPPORTED = "ipv6_not_supported"  # project-local
PROXY_UNSUPPORTED = "trace_unsupported_with_proxy"  # project-local: nothing sent
OPERATION = "raw_capture"
RAW_UNAVAILABLE_MESSAGE = (
    "the trace probe needs raw sockets (CAP_NET_RAW): run blockwatch as root or grant it "
    "`setcap cap_net_raw+ep` on the Python interpreter; no raw-packet evidence was collected, "
    "the other probes run as usual")

_warned: list[bool] = []  # the missing CAP_NET_RAW is logged once


# --- the full-TTL attempt ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FullAttempt:
    """What the kernel's own full-TTL connection met: the trace's reference."""

    mode: str
    connected: bool
    reply: str
    synack: dict[str, Any] | None
    resets: tuple[dict[str, Any], ...]

    @property
    def interfered(self) -> bool:
        """A RST, no SYN-ACK (mode syn), or no data (the payload modes); an error on our side
        ("error": not a network answer) is none of these."""
        if self.resets:
            return True
        return self.reply not in ("error", "synack" if self.mode == "syn" else "data")


async def full_attempt(cap: Capture, ctx: ProbeContext, address: str, port: int, mode: str,
                       payload: bytes, clock: Clock) -> FullAttempt:
    """Connect with the kernel at full TTL, send the payload, wait for data; capture meanwhile."""
    loop = asyncio.get_running_loop()
    try:
        sock = _stream_socket(ctx, address)
    except OSError:  # our side: e.g. the configured source address is gone
        return FullAttempt(mode, False, "error", None, ())
    flow = cap.watch(address, port, sock.getsockname()[1], clock)
    connected = False
    try:
        try:
            ctx.scope.check(address)
            async with asyncio.timeout(ctx.timeouts.tcp):
                await loop.sock_connect(sock, (address, port))
            connected = True
            if mode == "syn":
                reply = "synack"
            else:
                cap.drain()
                flow.phase = "data"
                wait = ctx.timeouts.tls if mode == "tls" else ctx.timeouts.http
                async with asyncio.timeout(wait):
                    await loop.sock_sendall(sock, payload)
                    data = await loop.sock_recv(sock, 4096)
                reply = "data" if data else "closed"
        except (OSError, TimeoutError) as exc:
            reply = _reply_for(exc)
        cap.drain()
        await asyncio.sleep(min(LINGER, ctx.timeouts.tcp))
        cap.drain()
    finally:
        cap.unwatch(flow)
        _abort(sock)
    synack = flow.synack.facts() if flow.synack else None
    resets = tuple({**seg.facts(), "flags": seg.flags, "after": after, "t": t}
                   for seg, after, t in flow.resets)
    return FullAttempt(mode, connected, reply, synack, resets)


# --- the TTL-limited search -------------------------------------------------------------------

REACHED = ("synack", "data", "acked")  # the server itself answered at this TTL


def _flow_result(flow: Flow, after: str) -> tuple[str, str | None] | None:
    """The decisive thing the capture saw for one step, if any (a reset first)."""
    for seg, phase, _t in flow.resets:
        if phase == after:
            return "rst", seg.src
    if after == "syn" and flow.synack is not None:
        return "synack", flow.synack.src
    for msg in flow.icmp:
        if msg.type == 11:
            return "time_exceeded", msg.src
    for msg in flow.icmp:
        if msg.type == 3:
            return "unreachable", msg.src
    return None


async def _wait_changed(flow: Flow, seconds: float) -> None:
    flow.changed.clear()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, seconds)):
            await flow.changed.wait()


async def syn_step(cap: Capture, ctx: ProbeContext, address: str, port: int, ttl: int,
                   wait: float, clock: Clock) -> tuple[str, str | None]:
    """One crafted SYN with IP TTL ``ttl`` from a port we hold (so the kernel answers the
    server's SYN-ACK with a RST and no other connection shares it)."""
    from scapy.layers.inet import IP, TCP

    loop = asyncio.get_running_loop()
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        try:
            source = _source(ctx, address)
            holder.bind((source, 0))
        except OSError:  # no route, or the source address is gone
            return "send_failed", None
        flow = cap.watch(address, port, holder.getsockname()[1], clock)
        try:
            packet = bytes(
                IP(src=source, dst=address, ttl=ttl, id=random.randint(1, 0xFFFF), flags="DF")
                / TCP(sport=flow.lport, dport=port, flags="S", seq=random.getrandbits(32),
                      window=64240, options=[("MSS", 1460), ("SAckOK", b""), ("WScale", 7)]))
            try:
                await cap.send(packet, address, ctx.scope.check)
            except OSError:  # e.g. EPERM from a local firewall
                return "send_failed", None
            end = loop.time() + wait
            while (found := _flow_result(flow, "syn")) is None and loop.time() < end:
                await _wait_changed(flow, end - loop.time())
                cap.drain()
            return found or ("silent", None)
        finally:
            cap.unwatch(flow)
    finally:
        holder.close()


async def payload_step(cap: Capture, ctx: ProbeContext, address: str, port: int, ttl: int,
                       payload: bytes, wait: float, clock: Clock) -> tuple[str, str | None]:
    """A full-TTL kernel handshake, then the payload sent with IP TTL ``ttl``."""
    loop = asyncio.get_running_loop()
    try:
        sock = _stream_socket(ctx, address)
    except OSError:
        return "connect_failed", None
    flow = cap.watch(address, port, sock.getsockname()[1], clock)
    reading = False
    try:
        try:
            ctx.scope.check(address)
            async with asyncio.timeout(ctx.timeouts.tcp):
                await loop.sock_connect(sock, (address, port))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            cap.drain()
            flow.phase = "data"
            await loop.sock_sendall(sock, payload)
        except (OSError, TimeoutError):
            return "connect_failed", None
        # the kernel socket wakes the same event as the capture: data, EOF or an error
        loop.add_reader(sock.fileno(), flow.changed.set)
        reading = True
        end = loop.time() + wait
        while True:
            cap.drain()
            found = _flow_result(flow, "data")
            if found is not None:
                return found
            try:
                data = sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                return ("rst" if _reply_for(exc) == "rst" else "error"), None
            else:
                return ("data" if data else "closed"), address
            if loop.time() >= end:
                break
            await _wait_changed(flow, end - loop.time())
        # the payload reached the server (it acknowledged every byte) but nothing came back
        return ("acked", address) if _unacked(sock) == 0 else ("silent", None)
    finally:
        if reading:
            loop.remove_reader(sock.fileno())
        cap.unwatch(flow)
        _abort(sock)


def decisive(hops: Sequence[dict[str, Any]]) -> bool:
    """True once the search can stop: the server, a reset, an unreachable, confirmed silence,
    or a step that could not be made."""
    last = hops[-1]["result"]
    if last in (*REACHED, "rst", "unreachable", "closed", "connect_failed", "send_failed",
                "error"):
        return True
    silent = 0
    for hop in reversed(hops):
        if hop["result"] != "silent":
            break
        silent += 1
    return silent > SILENT_CONFIRM


async def search(cap: Capture, ctx: ProbeContext, address: str, port: int, *, syn: bool,
                 payload: bytes, clock: Clock, deadline: float) -> tuple[dict[str, Any], ...]:
    """TTL 1, 2, ... until the server answers, interference begins, or time runs out."""
    loop = asyncio.get_running_loop()
    wait = min(1.0, ctx.timeouts.tcp)
    cost = wait if syn else wait + ctx.timeouts.tcp
    hops: list[dict[str, Any]] = []
    for ttl in range(1, MAX_HOPS + 1):
        if loop.time() + cost > deadline:
            break
        if syn:
            result, source = await syn_step(cap, ctx, address, port, ttl, wait, clock)
        else:
            result, source = await payload_step(cap, ctx, address, port, ttl, payload, wait,
                                                clock)
        hops.append({"ttl": ttl, "result": result, "from": source})
        if decisive(hops):
            break
    return tuple(hops)


# --- the probe --------------------------------------------------------------------------------


def _mode(target: Target) -> str:
    mode = dict(target.options).get("mode") or ("tls" if target.sni else "http")
    if mode not in MODES:
        raise ValueError(f"trace target {target.key}: mode must be one of {', '.join(MODES)}")
    return mode


def _raw_unavailable(exc: OSError) -> None:
    if not _warned:
        _warned.append(True)
        log.warning("%s (%s)", RAW_UNAVAILABLE_MESSAGE, exc.strerror or exc)


class TraceProbe:
    """Which RSTs are not the server's, and at which hop do drops or resets begin?"""

    name = "trace"
    version = "2"  # 2: facts only (the readings moved to the analysis)

    async def observe(self, target: Target, ctx: ProbeContext) -> ProbeResult:
        if target.port is None:
            raise ValueError(f"trace target {target.key} has no port")
        mode = _mode(target)
        sni = (target.sni or target.host) if mode == "tls" else None
        clock = Clock()
        deadline = asyncio.get_running_loop().time() + deadline_for(ctx) - 3.0
        if ctx.proxy:
            return ProbeResult((), PROXY_UNSUPPORTED, OPERATION)
        found = await plan(target.host, target.port, ctx)
        if not found.routes:
            return ProbeResult(found.dns, found.failure, found.operation)
        if mode == "tls":
            payload = client_hello(ctx, sni)
        elif mode == "http":
            payload = http_request(ctx, target.host, target.port)
        else:
            payload = b""
        traced = await asyncio.gather(*(
            self._address(ctx, r.address, target.port, mode, sni, payload, clock, deadline)
            for r in found.routes))
        failure, operation = None, None
        if not any(o.capture and o.failure is None for o in traced):
            failure = traced[0].failure
            operation = "connect" if failure == F.OUT_OF_SCOPE else OPERATION
        observations: tuple[Observation, ...] = (*found.dns, *traced)
        return ProbeResult(observations, failure, operation)

    async def _address(self, ctx: ProbeContext, address: str, port: int, mode: str,
                       sni: str | None, payload: bytes, clock: Clock,
                       deadline: float) -> RawObservation:
        t0 = clock()

        def nothing(failure: str) -> RawObservation:
            return RawObservation(address=address, port=port, mode=mode, sni=sni, t0=t0,
                                  t=clock(), capture=False, failure=failure)

        if not ctx.scope.allows(address):
            return nothing(F.OUT_OF_SCOPE)
        if ipaddress.ip_address(address.split("%")[0]).version != 4:
            return nothing(IPV6_UNSUPPORTED)
        try:
            cap = acquire()
        except OSError as exc:  # PermissionError without CAP_NET_RAW
            _raw_unavailable(exc)
            return nothing(F.RAW_UNAVAILABLE)
        try:
            attempt = await full_attempt(cap, ctx, address, port, mode, payload, clock)
            hops: tuple[dict[str, Any], ...] = ()
            if attempt.interfered:
                syn = mode == "syn" or not attempt.connected
                hops = await search(cap, ctx, address, port, syn=syn, payload=payload,
                                    clock=clock, deadline=deadline)
        finally:
            release(cap)
        return RawObservation(
            address=address, port=port, mode=mode, sni=sni, t0=t0, t=clock(), capture=True,
            synack=attempt.synack, resets=attempt.resets, reply=attempt.reply, hops=hops)


def plan_targets(service: Service, pc: PlanContext) -> list[Target]:
    """Every TLS endpoint (mode tls, its host as the SNI) and port-80 endpoint (mode http)."""
    return [Target(service=service.name, probe="trace", host=h, port=p,
                   sni=h if tls else None, options=(("mode", "tls" if tls else "http"),))
            for (h, p), tls in tcp_endpoints(service).items() if tls or p == 80]
