"""The connectivity baseline against real loopback sockets: fast when the network is up, asked
twice before it is called down."""

from __future__ import annotations

import asyncio
import socket
import time

from servers import LoopbackServer, blackhole_port, http

from blockwatch.probes.catalogue import parse_endpoint
from blockwatch.probes.scope import Scope
from blockwatch.scheduler.baseline import check_baseline


async def test_one_answering_endpoint_ends_the_check_at_once() -> None:
    async with LoopbackServer(http) as server:
        with blackhole_port() as hole:  # a dropped endpoint beside a working one
            started = time.monotonic()
            found = await check_baseline([parse_endpoint(f"127.0.0.1:{hole}"),
                                          parse_endpoint(f"127.0.0.1:{server.port}")],
                                         Scope.loopback(), limit=5.0)
    assert found.status == "up"
    assert time.monotonic() - started < 1.0  # not the dropped endpoint's 5 s


async def test_an_endpoint_silent_once_is_asked_again() -> None:
    # the first round meets a listener that drops SYNs; then a working one takes its port
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        filler.connect(("127.0.0.1", port))  # the only backlog slot: SYNs are dropped
        started = time.monotonic()
        checking = asyncio.create_task(
            check_baseline([parse_endpoint(f"127.0.0.1:{port}")], Scope.loopback(), limit=0.5))
        await asyncio.sleep(0.3)  # the first SYN is dropped; its retransmission would be at 1 s
        listener.close()
        filler.close()
        with socket.socket() as working:
            working.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            working.bind(("127.0.0.1", port))
            working.listen(8)
            found = await checking
    assert found.status == "up", found.checks
    assert [c["failure"] for c in found.checks] == ["generic_timeout_error", None]
    assert time.monotonic() - started < 1.5


async def test_a_dead_network_is_down_after_two_rounds() -> None:
    with blackhole_port() as hole:
        started = time.monotonic()
        found = await check_baseline([parse_endpoint(f"127.0.0.1:{hole}")], Scope.loopback(),
                                     limit=0.3)
    assert found.status == "down"
    assert len(found.checks) == 2 and time.monotonic() - started >= 0.55
