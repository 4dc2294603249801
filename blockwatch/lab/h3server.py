"""The lab's HTTP/3 server: ``python -m blockwatch.lab.h3server CERT KEY PORT ADDRESS...``.

aioquic's server, one UDP socket per address (a socket bound to the wildcard would answer from
whichever address the kernel picks, and a client's connected socket drops such answers), every
address in one process. Each GET is answered ``200`` with a small page naming the host, as the
lab's nginx answers over TCP; QUIC versions 1 and 2, ALPN ``h3``, the lab CA's certificate.
Unknown versions get a Version Negotiation packet (aioquic's server does that by itself), which
is what the quic probe's ping looks for. Runs as root in the server namespace; started and
stopped by the lab, which tracks its PID. Also used by the loopback tests (``serve``).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

PAGE = "<!doctype html><html><head><title>{host} (blockwatch lab, HTTP/3)</title></head>" \
       "<body>The lab's copy of {host}, over HTTP/3.</body></html>\n"


Answer = Callable[[dict[bytes, bytes]], tuple[list[tuple[bytes, bytes]], bytes]]


def page(headers: dict[bytes, bytes]) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The lab's answer: 200 and a small page naming the host."""
    host = headers.get(b":authority", b"").decode("ascii", "replace")[:200]
    body = PAGE.format(host=host).encode()
    return [(b":status", b"200"), (b"content-type", b"text/html"),
            (b"content-length", str(len(body)).encode())], body


def _protocol(answer: Answer = page) -> type[Any]:
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import HeadersReceived
    from aioquic.quic.events import ProtocolNegotiated

    class H3Site(QuicConnectionProtocol):
        """Answers every request's headers with ``answer(headers)``: headers and a body."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.h3: H3Connection | None = None

        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
                self.h3 = H3Connection(self._quic)
            if self.h3 is None:
                return
            for h3_event in self.h3.handle_event(event):
                if isinstance(h3_event, HeadersReceived):
                    headers, body = answer(dict(h3_event.headers))
                    self.h3.send_headers(h3_event.stream_id, headers, end_stream=not body)
                    if body:
                        self.h3.send_data(h3_event.stream_id, body, end_stream=True)
                    self.transmit()

    return H3Site


def configuration(cert: str, key: str, alpn: list[str] | None = None) -> Any:
    from aioquic.h3.connection import H3_ALPN
    from aioquic.quic.configuration import QuicConfiguration

    config = QuicConfiguration(is_client=False, alpn_protocols=alpn or list(H3_ALPN),
                               max_datagram_frame_size=65536)
    config.load_cert_chain(cert, key)
    return config


async def serve(addresses: list[str], port: int, cert: str, key: str,
                alpn: list[str] | None = None, answer: Answer = page) -> list[Any]:
    """Start serving on each address (the returned servers' ``close()`` stops them); the tests
    give their own ``answer``."""
    from aioquic.asyncio.server import serve as quic_serve

    config = configuration(cert, key, alpn)
    return [await quic_serve(a, port, configuration=config, create_protocol=_protocol(answer))
            for a in addresses]


async def _main(argv: list[str]) -> int:
    cert, key, port, addresses = argv[0], argv[1], int(argv[2]), argv[3:]
    await serve(addresses, port, cert, key)
    print(f"h3server: {len(addresses)} addresses, port {port}", flush=True)
    await asyncio.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(sys.argv[1:])))
