"""A response body's content-codings undone with bounded output: a compression bomb costs a
probe what the cap allows, whatever its ratio and however many codings are stacked.

httpx's decoders have no output limit: a 668-byte body sent as ``Content-Encoding: gzip, gzip``
grew a probe to 599 MiB before the body cap, applied after decoding, could act (issue #15).
Here the raw bytes are decoded layer by layer, each step asked for at most ``STEP`` bytes of
output (``zlib``'s ``max_length``), and decoding stops as soon as the final output passes the
cap, or any layer has produced ``INTERMEDIATE_CAP`` bytes (a layer can decode into nearly
nothing: empty deflate blocks), so memory and CPU stay bounded by the caps, not by the ratio.

Guarantees:

- ``gzip``/``x-gzip`` and ``deflate`` (zlib-wrapped, or raw as some servers send it) are
  decoded; ``identity`` is skipped; stacked codings are undone in reverse order, at most
  ``MAX_CODINGS`` of them;
- a coding this probe did not offer (``br``, ``zstd``, anything else) or more than
  ``MAX_CODINGS`` leave the body as it was sent (the raw bytes, capped): what a censor sent is
  still recorded;
- a corrupt stream raises ``httpx.DecodingError``, as httpx's own decoders do.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterator

import httpx

STEP = 64 * 1024
INTERMEDIATE_CAP = 16 * 2**20
MAX_CODINGS = 3


class _Layer:
    def __init__(self, coding: str) -> None:
        self.coding = coding
        self.produced = 0
        self._raw_fallback = coding == "deflate"
        wbits = 16 + zlib.MAX_WBITS if coding in ("gzip", "x-gzip") else zlib.MAX_WBITS
        self._d = zlib.decompressobj(wbits)
        self._first = True
        self.full = False  # produced INTERMEDIATE_CAP bytes: decoding stops here

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Output for ``data`` (b"": what is still pending), in pieces of at most ``STEP``
        bytes, pulled one at a time; past ``INTERMEDIATE_CAP`` it stops and sets ``full``."""
        while not self._d.eof:
            try:
                piece = self._d.decompress(data, STEP)
            except zlib.error as exc:
                if self._first and self._raw_fallback:  # deflate sent without its zlib header
                    self._d, self._raw_fallback = zlib.decompressobj(-zlib.MAX_WBITS), False
                    continue
                raise httpx.DecodingError(f"{self.coding}: {exc}") from None
            self._first = False
            data = self._d.unconsumed_tail
            self.produced += len(piece)
            if self.produced > INTERMEDIATE_CAP:
                self.full = True
                return
            if not piece and not data:
                return  # everything given was used, and nothing is pending
            if piece:
                yield piece
        # bytes after the end of the stream are ignored, as httpx does


def codings(header: str | None) -> list[str] | None:
    """The codings to undo, outermost first; None when the body is to be kept as sent."""
    found = [c.strip().lower() for c in (header or "").split(",") if c.strip()]
    found = [c for c in found if c != "identity"]
    if len(found) > MAX_CODINGS or any(c not in ("gzip", "x-gzip", "deflate") for c in found):
        return None
    return list(reversed(found))


async def read_decoded(raw: AsyncIterator[bytes], header: str | None,
                       cap: int) -> tuple[bytes, bool]:
    """At most ``cap`` bytes of the body decoded, and whether there was more (the server sent
    more, or a layer passed ``INTERMEDIATE_CAP``)."""
    layers = [_Layer(c) for c in codings(header) or ()]
    body = bytearray()

    def push(data: bytes, depth: int) -> bool:
        """Through layers ``depth``...; True once the output is past the cap, or a layer is
        full."""
        if depth == len(layers):
            body.extend(data)
            return len(body) > cap
        layer = layers[depth]
        for piece in layer.feed(data):
            if push(piece, depth + 1):
                return True
        return layer.full

    async for chunk in raw:
        if push(chunk, 0):
            return bytes(body[:cap]), True
    for depth in range(len(layers)):  # what each layer still holds, outermost first
        if push(b"", depth):
            return bytes(body[:cap]), True
    return bytes(body), False
