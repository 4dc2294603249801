"""Issue #15: compression bombs from a hostile server on loopback (one gzip layer, stacked
``gzip, gzip``, deflate with and without its zlib header, and through DoH's reader too): the
probe keeps at most the body cap, marks the body truncated, and its Python allocations stay
within a few MiB whatever the ratio (``tracemalloc``: every decoded byte is a Python object).
A coding the probe did not offer is recorded as sent; a corrupt stream is a failure."""

from __future__ import annotations

import asyncio
import gzip
import tracemalloc
import zlib

import pytest
from servers import LoopbackServer, read_request, response
from test_tcp_tls_http import HOST, context, http_probe

from blockwatch.probes.decoding import INTERMEDIATE_CAP, read_decoded
from blockwatch.probes.http import BODY_CAP

ZEROS = 64 * 2**20  # what each bomb decodes to at its innermost layer


def _deflate(data_size: int, wbits: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, wbits)
    chunk = bytes(2**20)
    return b"".join(c.compress(chunk) for _ in range(data_size // len(chunk))) + c.flush()


def bombs() -> dict[str, tuple[str, bytes]]:
    single = _deflate(ZEROS, 16 + zlib.MAX_WBITS)  # gzip of 64 MiB of zeros: ~64 KiB
    return {
        "gzip": ("gzip", single),
        "gzip_gzip": ("gzip, gzip", gzip.compress(single)),
        "deflate_zlib": ("deflate", _deflate(ZEROS, zlib.MAX_WBITS)),
        "deflate_raw": ("deflate", _deflate(ZEROS, -zlib.MAX_WBITS)),
        "x-gzip_identity": ("identity, x-gzip", single),
    }


BOMBS = bombs()


def serving(encoding: str, body: bytes):  # type: ignore[no-untyped-def]
    async def handler(_s: LoopbackServer, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        if await read_request(reader) is None:
            return
        writer.write(response(200, body, {"Content-Encoding": encoding}))
        await writer.drain()

    return handler


@pytest.mark.parametrize("name", sorted(BOMBS))
async def test_a_compression_bomb_stops_at_the_cap(name: str) -> None:
    encoding, body = BOMBS[name]
    async with LoopbackServer(serving(encoding, body)) as server:
        tracemalloc.start()
        try:
            obs, result = await http_probe(f"http://{HOST}:{server.port}/", context("127.0.0.1"))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result.failure is None  # type: ignore[attr-defined]
    assert obs is not None and obs.status == 200
    assert (obs.body_length, obs.body_truncated) == (BODY_CAP, True)
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MiB allocated for a {len(body)}-byte body"


async def test_a_coding_not_offered_is_kept_as_sent_and_a_corrupt_one_fails() -> None:
    page = b"<title>x</title>" * 10
    async with LoopbackServer(serving("br", page)) as server:
        obs, result = await http_probe(f"http://{HOST}:{server.port}/", context("127.0.0.1"))
    assert result.failure is None and obs is not None  # type: ignore[attr-defined]
    assert (obs.body_length, obs.title) == (len(page), "x")
    async with LoopbackServer(serving("gzip", b"\x1f\x8b\x08garbage")) as server:
        obs, result = await http_probe(f"http://{HOST}:{server.port}/", context("127.0.0.1"))
    failure, operation = result.failure, result.operation  # type: ignore[attr-defined]
    assert "while decompressing data" in failure and operation == "http_round_trip"


async def test_an_ordinary_gzip_body_decodes_whole() -> None:
    page = b"<title>hello</title>" + bytes(range(256)) * 300
    async with LoopbackServer(serving("gzip", gzip.compress(page))) as server:
        obs, result = await http_probe(f"http://{HOST}:{server.port}/", context("127.0.0.1"))
    assert result.failure is None and obs is not None  # type: ignore[attr-defined]
    assert (obs.body_length, obs.body_truncated, obs.title) == (len(page), False, "hello")


async def test_a_layer_that_decodes_into_nothing_is_bounded_too() -> None:
    """Empty stored deflate blocks: megabytes of input that decode to no output at all, inside
    a gzip bomb. Decoding stops once a layer has produced INTERMEDIATE_CAP bytes."""
    empty_blocks = b"\x00\x00\x00\xff\xff" * (INTERMEDIATE_CAP // 5 + 1000)  # raw deflate
    outer = gzip.compress(b"\x78\x01" + empty_blocks)  # zlib header, then the empty blocks

    async def raw():  # type: ignore[no-untyped-def]
        yield outer

    tracemalloc.start()
    try:
        body, more = await read_decoded(raw(), "deflate, gzip", BODY_CAP)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (body, more) == (b"", True)
    assert peak < 8 * 2**20


async def test_a_trickled_body_ends_at_the_deadline_and_is_not_fetched_again() -> None:
    """A body sent a byte at a time never trips the read timeout; the fetch's overall deadline
    (tcp + tls + http) ends it, and no second fetch follows (it shares that deadline)."""
    import time

    async def drip(_s: LoopbackServer, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
        if await read_request(reader) is None:
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        while True:
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.3)

    ctx = context("127.0.0.1")
    total = ctx.timeouts.tcp + ctx.timeouts.tls + ctx.timeouts.http
    async with LoopbackServer(drip) as server:
        started = time.monotonic()
        _, result = await http_probe(f"http://{HOST}:{server.port}/", ctx)
        took = time.monotonic() - started
    assert result.failure == "generic_timeout_error"  # type: ignore[attr-defined]
    assert server.accepted == 1 and took < total + 1.0
