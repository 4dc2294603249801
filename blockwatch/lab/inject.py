"""The censor's in-path DNS injector: ``python -m blockwatch.lab.inject QUEUE CONFIG``.

iptables hands every UDP DNS query from the censored client to NFQUEUE ``QUEUE``. For a query
of type A (or AAAA, when the file names an IPv6 ``answer6``) whose name (or a parent of it) is
listed in the JSON file CONFIG, the injector sends a forged answer first (from the queried
server's address and port, pointing at the configured address) and only then lets the query go
on, so the real answer always arrives second: the deterministic version of a racing on-path
injector. Every other packet is accepted untouched.
CONFIG is re-read whenever it changes, so a scenario switch needs no restart. Runs as root in
the censor namespace; started and stopped by the lab, which tracks its PID.
"""

from __future__ import annotations

import socket
import struct
import sys
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from blockwatch.lab.nfq import Reloading, serve


class Names:
    """The names to inject and the forged answer (from the injector's JSON file)."""

    def __init__(self, names: frozenset[str] = frozenset(), answer: str = "0.0.0.0",
                 answer6: str | None = None) -> None:
        self.names, self.answer, self.answer6 = names, answer, answer6

    @classmethod
    def parse(cls, raw: Any) -> Names:
        answer6 = raw.get("answer6")
        return cls(frozenset(n.lower().rstrip(".") for n in raw["names"]), str(raw["answer"]),
                   str(answer6) if answer6 else None)

    def match(self, qname: str) -> bool:
        labels = qname.lower().rstrip(".").split(".")
        return any(".".join(labels[i:]) in self.names for i in range(len(labels)))


def forged_reply(packet: bytes, names: Names) -> tuple[bytes, str] | None:
    """The forged IPv4/UDP answer to a DNS query in ``packet``, or None to leave it alone."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_UDP:
        return None
    ihl = (packet[0] & 0x0F) * 4
    src, dst = packet[12:16], packet[16:20]
    sport, dport = struct.unpack("!HH", packet[ihl:ihl + 4])
    try:
        query = dns.message.from_wire(packet[ihl + 8:])
    except Exception:  # a malformed query is not ours to judge: let it through
        return None
    if query.flags & dns.flags.QR or len(query.question) != 1:
        return None
    q = query.question[0]
    answers = {dns.rdatatype.A: names.answer, dns.rdatatype.AAAA: names.answer6}
    answer = answers.get(q.rdtype)
    if answer is None or not names.match(q.name.to_text()):
        return None
    reply = dns.message.make_response(query)
    reply.flags |= dns.flags.RA
    reply.answer.append(dns.rrset.from_text(q.name, 300, dns.rdataclass.IN, q.rdtype, answer))
    payload = reply.to_wire()
    udp = struct.pack("!HHHH", dport, sport, 8 + len(payload), 0) + payload  # no UDP checksum
    # the kernel fills in the IP checksum and total length of an IP_HDRINCL packet
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0x4000, 64, socket.IPPROTO_UDP, 0,
                     dst, src)
    return ip + udp, socket.inet_ntoa(src)


def main(argv: list[str]) -> int:
    queue, config = int(argv[0]), Path(argv[1])
    names = Reloading("inject", config, Names.parse, Names())
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def handle(pkt: Any) -> None:
        try:
            forged = forged_reply(pkt.get_payload(), names.current())
            if forged is not None:
                raw.sendto(forged[0], (forged[1], 0))
        finally:
            pkt.accept()

    return serve("inject", queue, config, handle)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
