"""The quic probe's review (after #17): hostile and truncated answers, our own residual blocking,
our own limits, sockets closed on every path."""

from __future__ import annotations

import asyncio
import os

from test_quic import peer

from blockwatch.probes import failures as F
from blockwatch.probes import quic_ping as ping


def vn(dcid: bytes, scid: bytes, versions: tuple[int, ...] = (1,)) -> bytes:
    """A Version Negotiation answering a ping sent with ``dcid``/``scid``."""
    return (b"\x80\0\0\0\0" + bytes([len(scid)]) + scid + bytes([len(dcid)]) + dcid
            + b"".join(v.to_bytes(4, "big") for v in versions))


def test_every_cut_of_a_version_negotiation_is_no_answer_never_an_exception() -> None:
    dcid, scid = os.urandom(8), os.urandom(8)
    whole = vn(dcid, scid, (1, 0x6B3343CF))
    assert ping.parse_version_negotiation(whole, dcid, scid) == (1, 0x6B3343CF)
    for n in range(len(whole)):  # e.g. 7 bytes: the SCID length says 1 and nothing follows
        got = ping.parse_version_negotiation(whole[:n], dcid, scid)
        assert got == ((1,) if n == len(whole) - 4 else None), n  # a whole shorter list
    # the same cut with the id lengths a hostile peer likes (0 and 255)
    for first in (b"\x00", b"\xff", b"\x01x"):
        assert ping.parse_version_negotiation(b"\x80\0\0\0\0" + first, dcid, scid) is None


def test_a_list_naming_the_version_we_sent_is_discarded() -> None:
    dcid, scid = os.urandom(8), os.urandom(8)
    answer = vn(dcid, scid, (1, ping.PING_VERSION))
    assert ping.parse_version_negotiation(answer, dcid, scid) is None


async def test_a_peer_answering_truncated_negotiations_ends_the_ping_in_a_failure() -> None:
    """Each ping is answered by every cut of a Version Negotiation naming its ids: the ping
    ignores them all and ends by its limit (it raised IndexError on the 7-byte one)."""

    def cuts(data: bytes) -> list[bytes]:
        dcid, scid = data[6:14], data[15:23]
        whole = vn(dcid, scid)
        return [whole[:n] for n in range(7, len(whole))]

    async for _server, port in peer(cuts):
        got = await ping.quicping("127.0.0.1", port, 0.5, None)
    assert got.failure == F.GENERIC_TIMEOUT and not got.versions and got.ignored > 0


async def test_the_ping_still_takes_a_good_answer_after_bad_ones() -> None:
    def answer(data: bytes) -> list[bytes]:
        dcid, scid = data[6:14], data[15:23]
        return [vn(dcid, scid)[:7], vn(dcid, scid, (1,))]

    async for _server, port in peer(answer):
        got = await asyncio.wait_for(ping.quicping("127.0.0.1", port, 2.0, None), 5)
    assert got.failure is None and got.versions == ("1",) and got.ignored == 1
