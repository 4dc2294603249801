"""The censor's ECH filter: ``python -m blockwatch.lab.echblock QUEUE``.

Russia's way with Encrypted Client Hello since 2024-11-05 (net4people/bbs#417): a ClientHello
that carries the ECH extension (type 0xfe0d) gets a reset, whatever name it shows; the same
hello without it passes. iptables hands this helper the client's TCP segments to an
``ech_block`` service's port 443 that contain the bytes fe 0d (a cheap pre-filter:
``censor.iptables_rules``); the helper reads each with scapy (IP or IPv6, TCP, a TLS record
with a ClientHello) and, when the ClientHello's extensions include 0xfe0d, marks the packet
``ECH_MARK`` and hands it back to the start of the hook (``repeat``), where the rule before
the queue rejects marked packets with a TCP reset; every other packet is accepted untouched.
A packet scapy cannot read is accepted: the censor only acts on what it understands.
Runs as root in the censor namespace; started and stopped by the lab, which tracks its PID.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from blockwatch.lab.nfq import serve

ECH_EXTENSION = 0xFE0D
ECH_MARK = 0xEC


def carries_ech(packet: bytes) -> bool:
    """Whether ``packet`` (an IPv4 or IPv6 packet) holds a TLS ClientHello with the ECH
    extension."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.tls.handshake import TLSClientHello
    from scapy.layers.tls.record import TLS

    try:
        pkt: Any = IPv6(packet) if packet[:1] and packet[0] >> 4 == 6 else IP(packet)
        if TCP not in pkt:
            return False
        payload = bytes(pkt[TCP].payload)
        if not payload or payload[0] != 22:
            return False
        record: Any = TLS(payload)  # type: ignore[no-untyped-call]
        hellos = [m for m in getattr(record, "msg", []) if isinstance(m, TLSClientHello)]
        return any(int(e.type) == ECH_EXTENSION for h in hellos for e in (h.ext or []))
    except Exception:  # hostile or cut-short bytes: not ours to judge
        return False


def main(argv: list[str]) -> int:
    queue = int(argv[0])

    def handle(pkt: Any) -> None:
        if carries_ech(pkt.get_payload()):
            pkt.set_mark(ECH_MARK)
            pkt.repeat()
        else:
            pkt.accept()

    # import scapy's TLS layers before binding: the first hello is not kept waiting
    carries_ech(b"")
    return serve("echblock", queue, Path("-"), handle)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
