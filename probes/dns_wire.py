"""The DNS message: a query's wire bytes, and the reading of a response to it. No I/O.

Guarantees:

- A response never raises: bytes that do not parse are recorded with ``malformed=<reason>``
  (``_response``), with whatever of the header could be read.
- A response is read as an answer to our query only if it echoes our id and question
  (``Query.is_response``); the commonest response is read directly (``_plain_answer``), giving
  what dnspython gives for the same bytes.
"""

from __future__ import annotations

import functools
import secrets
import socket
import struct
from dataclasses import dataclass, replace

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from blockwatch.probes import failures
from blockwatch.probes.model import DNSAnswer, DNSResponse

EDNS_PAYLOAD = 1232  # the DNS flag day size: fits any path MTU, so answers are not fragmented
MAX_MESSAGE = 65535  # a DNS message never exceeds this (TCP length prefix is 16 bits)

_Responses = tuple[DNSResponse, ...]


# --- the query ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16384)
def _question(qname: str, qtype: str) -> tuple[bytes, dns.name.Name, int]:
    """A question's wire form, its name and type (parsed once per name: sweeps ask thousands)."""
    name = dns.name.from_text(qname)
    rdtype = dns.rdatatype.from_text(qtype)
    wire = name.to_wire() or b""  # bytes whenever no file is given
    return wire + struct.pack("!HH", rdtype, dns.rdataclass.IN), name, rdtype


# an EDNS0 OPT record: root name, type 41, our payload size, no extended flags, no options
_OPT = b"\x00" + struct.pack("!HHIH", dns.rdatatype.OPT, EDNS_PAYLOAD, 0, 0)


@dataclass(frozen=True, slots=True)
class Query:
    """One query's wire bytes (RD set, EDNS0) and what a response to it must echo. Built by
    hand: ``dns.message.make_query`` costs fifty microseconds, and a sweep sends thousands."""

    id: int
    wire: bytes
    name: dns.name.Name
    rdtype: int

    @classmethod
    def make(cls, qname: str, qtype: str) -> Query:
        question, name, rdtype = _question(qname, qtype)
        qid = secrets.randbits(16)
        header = struct.pack("!HHHHHH", qid, dns.flags.RD, 1, 0, 0, 1)
        return cls(qid, header + question + _OPT, name, rdtype)

    def is_response(self, msg: dns.message.Message) -> bool:
        """As ``dns.message.Message.is_response``: our id, QR set, a query opcode, our
        question (or none, with an error rcode)."""
        if msg.id != self.id or not msg.flags & dns.flags.QR or \
                dns.opcode.from_flags(msg.flags) != dns.opcode.QUERY:
            return False
        if not msg.question and msg.rcode() in _QUESTIONLESS:
            return True
        return len(msg.question) == 1 and msg.question[0].rdtype == self.rdtype and \
            msg.question[0].rdclass == dns.rdataclass.IN and msg.question[0].name == self.name


_QUESTIONLESS = frozenset({dns.rcode.FORMERR, dns.rcode.SERVFAIL, dns.rcode.NOTIMP,
                           dns.rcode.REFUSED})


# --- reading responses --------------------------------------------------------------------------


def _response(
    data: bytes,
    q: Query,
    source: str,
    t: float,
    ip_ttl: int | None = None,
    malformed: str | None = None,
) -> DNSResponse:
    """Record one response; bytes that do not parse become ``malformed`` instead of raising."""
    flags = int.from_bytes(data[2:4], "big") if len(data) >= 4 else -1
    header = DNSResponse(
        t=round(t, 6),
        source=source,
        id=int.from_bytes(data[:2], "big") if len(data) >= 2 else -1,
        flags=flags,
        rcode=dns.rcode.to_text(dns.rcode.from_flags(flags, 0)) if flags >= 0 else "",
        ip_ttl=ip_ttl,
        malformed=malformed,
    )
    if malformed is not None:
        return header
    plain = _plain_answer(data, q)
    if plain is not None:
        return replace(header, answers=plain)
    try:
        msg = dns.message.from_wire(data)
    except Exception as exc:  # hostile bytes can raise from any corner of the parser
        return replace(header, malformed=failures.scrub(f"{type(exc).__name__}: {exc}")[:200])
    if not q.is_response(msg):
        return replace(header, malformed="not a response to this query")
    answers = tuple(
        DNSAnswer(rtype=dns.rdatatype.to_text(rrset.rdtype), value=rd.to_text(), ttl=rrset.ttl)
        for rrset in msg.answer
        for rd in rrset
    )
    return replace(header, rcode=dns.rcode.to_text(msg.rcode()), answers=answers)


_ADDRESS: dict[int, tuple[int, int, str]] = {
    dns.rdatatype.A: (socket.AF_INET, 4, "A"), dns.rdatatype.AAAA: (socket.AF_INET6, 16, "AAAA")}


def _plain_answer(data: bytes, q: Query) -> tuple[DNSAnswer, ...] | None:
    """The answers of the commonest response, read directly: our id and question (echoed as
    sent), no flags but QR/AA/TC/RD/RA/AD/CD, only addresses of the asked type for the asked
    name, nothing in authority, at most an EDNS OPT record, nothing after. Anything else is
    None, and dnspython reads it (a CNAME chain, a referral, garbage, an injected oddity).
    The answers are what dnspython gives for the same bytes: its text form of each address,
    duplicates dropped, the lowest TTL for all (one RRset); tests/test_dns.py compares the two
    on thousands of generated and mangled messages. A sweep reads two responses a name: this
    costs a tenth of dnspython's full parse."""
    kind = _ADDRESS.get(q.rdtype)
    if kind is None or len(data) < 12:
        return None
    qid, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", data)
    if (qid != q.id or not flags & 0x8000 or flags & 0x7800 or qd != 1 or ns or ar > 1
            or flags & 0x40):  # opcode QUERY only, the Z bit clear
        return None
    question = q.wire[12:len(q.wire) - len(_OPT)]  # the name (case-blind), type and class
    end = 12 + len(question)
    if data[12:end - 4].lower() != question[:-4].lower() or data[end - 4:end] != question[-4:]:
        return None
    family, size, rtype = kind
    values: dict[str, None] = {}
    ttl = None
    at = end
    for _ in range(an):
        if data[at:at + 2] == b"\xc0\x0c":  # the owner: a pointer to the question's name
            at += 2
        else:
            return None
        if len(data) < at + 10:
            return None
        rdtype, rdclass, rr_ttl, length = struct.unpack_from("!HHIH", data, at)
        at += 10
        if rdtype != q.rdtype or rdclass != dns.rdataclass.IN or length != size or \
                len(data) < at + size or rr_ttl > 0x7FFFFFFF:
            return None
        values[socket.inet_ntop(family, data[at:at + size])] = None
        ttl = rr_ttl if ttl is None else min(ttl, rr_ttl)
        at += size
    if ar:  # an OPT record: the root name, type 41, no extended rcode, options skipped whole
        if len(data) < at + 11 or data[at] != 0 or data[at + 5] != 0 or \
                struct.unpack_from("!H", data, at + 1)[0] != dns.rdatatype.OPT:
            return None
        at += 11 + struct.unpack_from("!H", data, at + 9)[0]
    if at != len(data) or (flags & 0x0F) not in _PLAIN_RCODES:
        return None
    return tuple(DNSAnswer(rtype=rtype, value=v, ttl=ttl or 0) for v in values)


# rcodes whose text does not need EDNS's extended bits: NOERROR, FORMERR, SERVFAIL, NXDOMAIN,
# NOTIMP, REFUSED (an OPT record may extend the rcode: dnspython then reads it)
_PLAIN_RCODES = frozenset(range(6))
