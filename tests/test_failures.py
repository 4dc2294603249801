"""The failure taxonomy against real errors from loopback sockets, TLS handshakes and httpx."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import httpx
import pytest
from servers import (
    PKI,
    LoopbackServer,
    blackhole_port,
    close_on_data,
    http,
    make_pki,
    refusing_port,
    reset_on_accept,
    reset_on_data,
)

from blockwatch.probes.failures import classify, scrub
from blockwatch.probes.scope import OutOfScopeError, Scope


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return make_pki(tmp_path)


async def _error_of(coro: object) -> BaseException:
    try:
        await coro  # type: ignore[misc]
    except BaseException as exc:  # the error is the point of the test
        return exc
    raise AssertionError("expected an error")


async def test_refused() -> None:
    with refusing_port() as port:
        exc = await _error_of(asyncio.open_connection("127.0.0.1", port))
    assert classify(exc) == "connection_refused"


async def test_refused_ipv6() -> None:
    with refusing_port("::1") as port:
        exc = await _error_of(asyncio.open_connection("::1", port))
    assert classify(exc) == "connection_refused"


async def _read_after_write(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"more")
        await writer.drain()
        await reader.read(100)
    finally:
        writer.close()


@pytest.mark.parametrize("handler", [reset_on_accept, reset_on_data])
async def test_reset(handler: object) -> None:
    async with LoopbackServer(handler) as server:  # type: ignore[arg-type]
        exc = await _error_of(_read_after_write(server.port))
    assert classify(exc) == "connection_reset"


async def test_connect_timeout() -> None:
    async def connect(port: int) -> None:
        async with asyncio.timeout(0.3):
            await asyncio.open_connection("127.0.0.1", port)

    with blackhole_port() as port:
        exc = await _error_of(connect(port))
    assert classify(exc) == "generic_timeout_error"


def test_blocking_socket_timeout() -> None:
    with blackhole_port() as port, socket.socket() as sock:
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError) as info:
            sock.connect(("127.0.0.1", port))
    assert classify(info.value) == "generic_timeout_error"


async def _handshake(pki: PKI, port: int, server_hostname: str) -> None:
    context = ssl.create_default_context(cafile=pki.ca_bundle)
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=server_hostname
    )
    writer.close()


@pytest.mark.parametrize(
    ("cert", "failure"),
    [
        ("wrong_host", "ssl_invalid_hostname"),
        ("unknown_ca", "ssl_unknown_authority"),
        ("expired", "ssl_invalid_certificate"),
    ],
)
async def test_certificate_errors(pki: PKI, cert: str, failure: str) -> None:
    tls = pki.server_context(getattr(pki, cert))
    async with LoopbackServer(http, tls=tls) as server:
        exc = await _error_of(_handshake(pki, server.port, "example.test"))
    assert isinstance(exc, ssl.SSLCertVerificationError)
    assert classify(exc) == failure


async def test_tls_to_a_plain_server_is_a_failed_handshake(pki: PKI) -> None:
    async def garbage(_s: object, _r: object, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n" * 10)
        await writer.drain()
        await asyncio.sleep(1)

    async with LoopbackServer(garbage) as server:
        exc = await _error_of(_handshake(pki, server.port, "example.test"))
    assert classify(exc) == "ssl_failed_handshake"


async def test_eof_during_handshake(pki: PKI) -> None:
    def blocking_handshake(port: int) -> BaseException:
        context = ssl.create_default_context(cafile=pki.ca_bundle)
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
            try:
                context.wrap_socket(raw, server_hostname="example.test")
            except ssl.SSLError as exc:
                return exc
        raise AssertionError("expected an error")

    async with LoopbackServer(close_on_data) as server:
        exc = await asyncio.to_thread(blocking_handshake, server.port)
    assert isinstance(exc, ssl.SSLEOFError)
    assert classify(exc) == "eof_error"


async def test_httpx_connect_error_is_classified_by_its_cause() -> None:
    with refusing_port() as port:
        async with httpx.AsyncClient(trust_env=False) as client:
            exc = await _error_of(client.get(f"http://127.0.0.1:{port}/"))
    assert isinstance(exc, httpx.ConnectError)
    assert classify(exc) == "connection_refused"


async def test_httpx_read_timeout() -> None:
    async with LoopbackServer(http) as server:
        server.slow_delay = 5
        async with httpx.AsyncClient(trust_env=False, timeout=0.3) as client:
            exc = await _error_of(client.get(f"http://127.0.0.1:{server.port}/slow"))
    assert isinstance(exc, httpx.ReadTimeout)
    assert classify(exc) == "generic_timeout_error"


async def test_httpx_server_closing_without_response_is_eof() -> None:
    async with LoopbackServer(http) as server, httpx.AsyncClient(trust_env=False) as client:
        exc = await _error_of(client.get(f"http://127.0.0.1:{server.port}/close"))
    assert classify(exc) == "eof_error"


def test_out_of_scope_wins_over_everything() -> None:
    with pytest.raises(ConnectionRefusedError) as info:
        try:
            Scope.loopback().check("10.1.2.3")
        except OutOfScopeError as inner:
            raise ConnectionRefusedError("wrapped") from inner
    assert classify(info.value) == "out_of_scope"


async def test_unknown_failure_scrubs_addresses() -> None:
    async with LoopbackServer(http) as server:
        for host in ("127.0.0.1", "::1"):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family) as busy:
                busy.bind((host, 0))
                busy.listen()
                local = (host, busy.getsockname()[1])
                exc = await _error_of(asyncio.open_connection(host, server.port, local_addr=local))
            failure = classify(exc)
            assert failure.startswith("unknown_failure: OSError: ")
            assert host not in failure
            assert "[scrubbed]" in failure


def test_scrub_keeps_other_text() -> None:
    assert scrub("from 192.0.2.7 to 2001:db8::1 at 12:30") == (
        "from [scrubbed] to [scrubbed] at 12:30"
    )


def test_library_errors_are_matched_by_their_classes_not_their_names() -> None:
    import anyio
    import httpcore

    class TimeoutException(Exception):  # a look-alike of httpx's name
        pass

    assert classify(TimeoutException("late")) == "unknown_failure: TimeoutException: late"
    assert classify(httpcore.ReadTimeout("late")) == "generic_timeout_error"
    assert classify(httpx.TooManyRedirects("again")) == "http_too_many_redirects"
    assert classify(httpcore.RemoteProtocolError(
        "Server disconnected without sending a response.")) == "eof_error"
    assert classify(anyio.EndOfStream()) == "eof_error"


def test_our_own_errors() -> None:
    from blockwatch.probes.errors import KnownFailure, ProxyConnectError, SocksReplyError

    assert classify(KnownFailure("dns_nxdomain_error")) == "dns_nxdomain_error"
    try:
        try:
            raise ConnectionRefusedError(111, "refused")
        except ConnectionRefusedError as exc:
            raise ProxyConnectError(str(exc)) from exc
    except ProxyConnectError as wrapped:
        assert classify(wrapped) == "connection_refused"  # a wrapper classifies as its cause
    assert classify(SocksReplyError(0x04)) == "host_unreachable"
    assert classify(SocksReplyError(0x01)) == (
        "unknown_failure: SocksReplyError: SOCKS5 proxy: general SOCKS server failure")
