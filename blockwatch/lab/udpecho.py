"""A stand-in for VPN servers' UDP ports: ``python -m blockwatch.lab.udpecho PORT...``.

Echoes every datagram back on each given port (all addresses, IPv4 and IPv6), so a UDP drop by
the censor is observable (no echo from the censored client, an echo from the control client)
until real VPN servers answer there. Started by the lab in the server namespace and tracked by PID.
"""

from __future__ import annotations

import selectors
import socket
import sys


def main(argv: list[str]) -> int:
    sel = selectors.DefaultSelector()
    for port in (int(p) for p in argv):
        for family, anywhere in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((anywhere, port))
            sel.register(sock, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            data, peer = ready.recvfrom(2048)
            ready.sendto(data, peer)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
