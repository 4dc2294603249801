"""The quic probe's machinery: one QUIC handshake (+ an HTTP/3 GET) over its own UDP socket,
driven by aioquic without its asyncio helpers (the ping: ``probes.quic_ping``).

Guarantees:

- One UDP socket per exchange, bound to the configured source address (when of the
  destination's family), *connected* to the server and with ``IP_RECVERR``, so that an ICMP
  error (port, host or network unreachable) ends the exchange at once as
  ``connection_refused`` / ``host_unreachable`` / ``network_unreachable`` instead of a silent
  wait (without ``IP_RECVERR`` Linux reports port unreachable alone to a UDP socket).
- Bounded: every exchange ends by its ``limit`` (seconds); aioquic's flow control is set to
  ``RECEIVE_WINDOW`` bytes per connection and stream, the HTTP/3 exchange stops at the
  response's headers, and what a peer sends beyond that is dropped by aioquic, never queued
  here. A flood of datagrams costs CPU until the limit, never memory (a datagram is handled
  and dropped as it comes; at most ``MAX_DATAGRAMS`` are read per exchange).
- The certificate is verified after the handshake, by aioquic's own ``verify_certificate``
  against the CA the caller names (the vantage's, or a service's pinned one), so one handshake
  gives both the facts of an untrusted certificate and the verdict on it; the GET is sent only
  over a verified connection.
- Facts only: what came back (or the failure string), never a judgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

from blockwatch.probes.failures import (
    GENERIC_TIMEOUT,
    SSL_FAILED_HANDSHAKE,
    SSL_INVALID_CERTIFICATE,
    SSL_INVALID_HOSTNAME,
    SSL_UNKNOWN_AUTHORITY,
    classify,
    unknown,
)

RECEIVE_WINDOW = 65536  # bytes a peer may send per connection and per stream (flow control)
MAX_DATAGRAMS = 4096  # datagrams read per exchange; beyond: a flood, the exchange ends
# project-local: closed with an error that is no TLS alert (by the peer, or by aioquic refusing
# a malformed answer, e.g. an HTTP/3 response without a three-digit status)
QUIC_CLOSED = "quic_connection_closed"
QUIC_INCOMPATIBLE_VERSION = "quic_incompatible_version"  # OONI's: no common QUIC version
QUIC_FLOOD = "quic_datagram_flood"  # project-local: more than MAX_DATAGRAMS came back
VERSIONS = {0x00000001: "1", 0x6B3343CF: "2"}
NO_COMMON_VERSION = "Could not find a common protocol version"  # aioquic's reason phrase
# Linux's (the socket module names them from Python 3.12 on only)
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)


def version_name(v: int | None) -> str | None:
    return None if v is None else VERSIONS.get(v, f"{v:#010x}")


def udp_socket(address: str, port: int, source: str | None) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        # without RECVERR Linux tells a UDP socket of port unreachable only: a router's host
        # or network unreachable would pass for silence (TCP hears of them)
        with contextlib.suppress(OSError):  # not Linux: silence it is
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        if source and (":" in source) == (":" in address):
            sock.bind((source, 0))
        sock.connect((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


# --- one handshake and an HTTP/3 GET ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trust:
    """Whom a handshake's certificate is verified against: a pinned CA file alone, or the
    system store plus the vantage's extra bundle."""

    cafile: str | None = None
    capath: str | None = None
    cadata: bytes | None = None


def system_trust(extra_bundle: str | None) -> Trust:
    paths = ssl.get_default_verify_paths()
    cafile = paths.cafile if paths.cafile and os.path.exists(paths.cafile) else None
    capath = paths.capath if paths.capath and os.path.isdir(paths.capath) else None
    cadata = None
    if extra_bundle:
        with open(extra_bundle, "rb") as fh:
            cadata = fh.read()
    return Trust(cafile, capath, cadata)


@dataclass(slots=True)
class Outcome:
    """What one handshake saw."""

    failure: str | None = None
    operation: str = "quic_handshake"
    version: str | None = None
    alpn: str | None = None
    chain: list[bytes] = field(default_factory=list)  # DER, leaf first
    verified: bool | None = None
    verify_error: str | None = None
    status: int | None = None
    answered: bool = False  # any datagram came back from the server
    close_reason: str | None = None  # the CONNECTION_CLOSE reason phrase (ours too), cut short


def _verify_failure(exc: Exception) -> str:
    from aioquic.tls import AlertCertificateExpired

    text = str(exc).lower()
    if isinstance(exc, AlertCertificateExpired):
        return SSL_INVALID_CERTIFICATE
    if "doesn't match" in text or "hostname" in text:
        return SSL_INVALID_HOSTNAME
    if "issuer" in text or "self-signed" in text or "self signed" in text:
        return SSL_UNKNOWN_AUTHORITY
    return SSL_INVALID_CERTIFICATE


def _closed_failure(error_code: int, frame_type: int | None, reason: str) -> str:
    # CRYPTO_ERROR (a TLS alert) is a transport close's code; an application close (no frame
    # type) uses 0x100-0x110 too, for HTTP/3's errors (RFC 9114 section 8.1: H3_MESSAGE_ERROR
    # when aioquic refuses a malformed response), which are no TLS alert
    if frame_type is not None and 0x100 <= error_code <= 0x1FF:
        return SSL_FAILED_HANDSHAKE
    # VERSION_NEGOTIATION_ERROR (RFC 9368), or aioquic's own close after a Version
    # Negotiation naming no version it speaks (its exact words: a peer's phrase that merely
    # says "version" is no negotiation)
    if error_code == 0x11 or (frame_type is not None and reason == NO_COMMON_VERSION):
        return QUIC_INCOMPATIBLE_VERSION
    return QUIC_CLOSED


class _Client(asyncio.DatagramProtocol):
    """Feeds datagrams to one aioquic connection and sends what it has to send."""

    def __init__(self, quic: Any, addr: tuple[str, int]) -> None:
        self.quic, self.addr = quic, addr
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.DatagramTransport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.h3: Any = None
        self.done: asyncio.Future[str | None] = self.loop.create_future()
        self.connected = self.loop.create_future()  # type: asyncio.Future[str | None]
        self.status: int | None = None
        self.datagrams = 0
        self.close_reason: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams += 1
        if self.datagrams > MAX_DATAGRAMS:
            self._end(QUIC_FLOOD)
            return
        try:
            self.quic.receive_datagram(data, self.addr, now=self.loop.time())
            self.pump()
        except Exception as exc:  # what nobody foresaw: this exchange's failure, at once
            self._broken(exc)

    def _broken(self, exc: Exception) -> None:
        """An exception out of aioquic or our handling of its events. Raised into the event
        loop it was only logged there, and the exchange waited for its limit: a timeout, what
        a censor gives."""
        self._end(unknown(f"{type(exc).__name__}: {exc}"))

    def error_received(self, exc: Exception) -> None:
        self._end(classify(exc))

    def _end(self, failure: str | None) -> None:
        for fut in (self.connected, self.done):
            if not fut.done():
                fut.set_result(failure)

    def pump(self) -> None:
        from aioquic.h3.events import HeadersReceived
        from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted

        while (event := self.quic.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                if not self.connected.done():
                    self.connected.set_result(None)
            elif isinstance(event, ConnectionTerminated):
                self.close_reason = (event.reason_phrase or "")[:120] or None
                self._end(_closed_failure(event.error_code, event.frame_type,
                                          event.reason_phrase or ""))
            elif self.h3 is not None:
                for h3_event in self.h3.handle_event(event):
                    if isinstance(h3_event, HeadersReceived) and self.status is None:
                        status = dict(h3_event.headers).get(b":status", b"")
                        self.status = int(status) if status.isdigit() else -1
                        if not self.done.done():
                            self.done.set_result(None)
        if self.transport is not None and not self.transport.is_closing():
            for data, _addr in self.quic.datagrams_to_send(now=self.loop.time()):
                self.transport.sendto(data)
        if self.timer is not None:
            self.timer.cancel()
        at = self.quic.get_timer()
        self.timer = self.loop.call_at(at, self._on_timer) if at is not None else None

    def _on_timer(self) -> None:
        self.timer = None
        try:
            self.quic.handle_timer(now=self.loop.time())
            self.pump()
        except Exception as exc:
            self._broken(exc)


def _facts(quic: Any, out: Outcome) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    tls = quic.tls
    leaf = getattr(tls, "_peer_certificate", None)
    chain = [leaf, *getattr(tls, "_peer_certificate_chain", [])] if leaf is not None else []
    out.chain = [c.public_bytes(Encoding.DER) for c in chain]
    out.alpn = getattr(tls, "alpn_negotiated", None)
    out.version = version_name(getattr(quic, "_version", None))


async def handshake(address: str, port: int, sni: str | None, *, alpn: tuple[str, ...],
                    trust: Trust | None, path: str, user_agent: str, limit: float,
                    source: str | None) -> Outcome:
    """A QUIC handshake naming ``sni``; with ``trust`` the certificate is verified and, if it
    is trusted, ``GET path`` is sent over HTTP/3 and the response's status awaited. Without
    ``trust`` (a control name) the handshake alone, unverified."""
    from aioquic.h3.connection import H3Connection
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    out = Outcome()
    config = QuicConfiguration(is_client=True, alpn_protocols=list(alpn), server_name=sni,
                               verify_mode=ssl.CERT_NONE, max_data=RECEIVE_WINDOW,
                               max_stream_data=RECEIVE_WINDOW,
                               idle_timeout=limit + 5.0)  # our own limit ends it first
    quic = QuicConnection(configuration=config)
    loop = asyncio.get_running_loop()
    try:
        sock = udp_socket(address, port, source)
    except OSError as exc:
        out.failure = classify(exc)
        return out
    addr = (address, port)
    try:
        transport, client = await loop.create_datagram_endpoint(lambda: _Client(quic, addr),
                                                                sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        async with asyncio.timeout(limit):
            quic.connect(addr, now=loop.time())
            client.pump()
            out.failure = await client.connected
            out.answered = client.datagrams > 0
            if out.failure is None:
                _facts(quic, out)
                if trust is not None:
                    _verify(quic, sni, trust, out)
            if out.failure is None and trust is not None:
                out.operation = "http3_round_trip"
                client.h3 = H3Connection(quic)
                stream = quic.get_next_available_stream_id()
                client.h3.send_headers(stream, [
                    (b":method", b"GET"), (b":scheme", b"https"),
                    (b":authority", _authority(sni or address, port)),
                    (b":path", path.encode()),
                    (b"user-agent", user_agent.encode())], end_stream=True)
                client.pump()
                out.failure = await client.done
                out.status = client.status
    except TimeoutError:
        out.failure = GENERIC_TIMEOUT
    finally:
        out.answered = client.datagrams > 0
        out.close_reason = client.close_reason
        if client.timer is not None:
            client.timer.cancel()
        with contextlib.suppress(Exception):  # politeness: tell the server we are gone
            quic.close()
            for data, _addr in quic.datagrams_to_send(now=loop.time()):
                transport.sendto(data)
        transport.close()
    return out


def _authority(host: str, port: int) -> bytes:
    """``host[:port]`` (the port when it is not 443; an IPv6 literal in brackets)."""
    name = f"[{host}]" if ":" in host else host
    return (name if port == 443 else f"{name}:{port}").encode()


@functools.lru_cache(maxsize=16)
def _store(trust: Trust) -> Any:
    """The CA store of ``trust``, built once (loading the system's CAs takes tens of ms: per
    handshake, that was most of a sweep's CPU)."""
    from aioquic.tls import load_pem_x509_certificates
    from OpenSSL import crypto

    store = crypto.X509Store()
    if trust.cadata is not None:
        for cert in load_pem_x509_certificates(trust.cadata):
            store.add_cert(crypto.X509.from_cryptography(cert))
    if trust.cafile is not None or trust.capath is not None:
        store.load_locations(trust.cafile, trust.capath)
    return store


def verify(leaf: Any, chain: list[Any], sni: str | None, trust: Trust) -> None:
    """What aioquic's ``verify_certificate`` checks (the chain by OpenSSL, the dates, the name
    by service_identity), in the order OpenSSL reports them to the TLS probe (the chain first),
    with the CA store built once per trust. Raises aioquic's ``Alert``s."""
    import datetime as dt
    import ipaddress

    import service_identity
    from aioquic.tls import AlertBadCertificate, AlertCertificateExpired
    from OpenSSL import crypto

    store_ctx = crypto.X509StoreContext(_store(trust), crypto.X509.from_cryptography(leaf),
                                        [crypto.X509.from_cryptography(c) for c in chain])
    try:
        store_ctx.verify_certificate()
    except crypto.X509StoreContextError as exc:
        raise AlertBadCertificate(str(exc.args[0])) from exc
    now = dt.datetime.now(dt.UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise AlertCertificateExpired("certificate not valid now")
    if sni is None:
        return
    try:
        try:
            ipaddress.ip_address(sni)
        except ValueError:
            service_identity.cryptography.verify_certificate_hostname(leaf, sni)
        else:
            service_identity.cryptography.verify_certificate_ip_address(leaf, sni)
    except (service_identity.CertificateError, service_identity.VerificationError) as exc:
        raise AlertBadCertificate(f"hostname {sni!r} doesn't match the certificate") from exc


def _verify(quic: Any, sni: str | None, trust: Trust, out: Outcome) -> None:
    from aioquic.tls import Alert
    from cryptography import x509

    tls = quic.tls
    leaf = getattr(tls, "_peer_certificate", None)
    if leaf is None:
        out.verified, out.verify_error = False, SSL_INVALID_CERTIFICATE
        out.failure = out.verify_error
        return
    chain: list[x509.Certificate] = list(getattr(tls, "_peer_certificate_chain", []))
    try:
        verify(leaf, chain, sni, trust)
    except (Alert, ValueError) as exc:
        out.verified, out.verify_error = False, _verify_failure(exc)
        out.failure = out.verify_error
    except Exception as exc:  # pyOpenSSL's store errors on a broken CA file: our side
        out.verified, out.verify_error = False, classify(exc)
        out.failure = out.verify_error
    else:
        out.verified = True
