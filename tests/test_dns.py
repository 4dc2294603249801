"""The DNS probe against a real DNS server on loopback (tests/dns_server.py).

Each test picks the server's behaviour for a name and checks the failure string and the
responses the probe recorded. Timeouts are 0.25 s, so a normal UDP query (which listens until
the timeout or the injection window ends) costs a quarter of a second.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.rcode
import dns.rdatatype
import pytest
import trustme
from dns_server import Behaviour, DNSServer

from blockwatch.analysis.bogons import decided, is_bogon
from blockwatch.probes import dns_transport
from blockwatch.probes import failures as F
from blockwatch.probes.context import ProbeContext, ProbeResult, Timeouts
from blockwatch.probes.dns import (
    INJECTION_WINDOW_S,
    DNSProbe,
    lookup,
    query,
    retransmissions,
)
from blockwatch.probes.model import DNSObservation, Measurement, Target
from blockwatch.probes.pacing import Limits
from blockwatch.probes.resolvers import ResolverSpec, parse_resolver
from blockwatch.probes.runner import run_probe
from blockwatch.probes.scope import Scope

TIMEOUT = 0.25
LINUX = sys.platform.startswith("linux")

NAMES = {
    "ok.test": Behaviour(addresses=("127.0.0.2", "::1")),
    "v4only.test": Behaviour(addresses=("127.0.0.2",)),
    "nx.test": Behaviour(rcode="NXDOMAIN"),
    "servfail.test": Behaviour(rcode="SERVFAIL"),
    "refused.test": Behaviour(rcode="REFUSED"),
    "empty.test": Behaviour(),
    "silent.test": Behaviour(silent=True),
    "lost.test": Behaviour(addresses=("127.0.0.2",), drop_first=1),
    "injected.test": Behaviour(
        addresses=("127.0.0.2",), forged=("10.10.34.35",), forged_ip_ttl=33, delay=0.05
    ),
    "spoofed.test": Behaviour(addresses=("127.0.0.2",), forged=("31.13.64.1",),
                              forged_other_port=True, delay=0.05),
    "doh.test": Behaviour(addresses=("127.0.0.1",)),
    "uncertified-doh.test": Behaviour(addresses=("127.0.0.1",)),
    "doh-elsewhere.test": Behaviour(addresses=("127.0.0.2",)),
    "blockpage.test": Behaviour(addresses=("127.0.0.2",), http_status=403),
}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server(ca: trustme.CA) -> Iterator[DNSServer]:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("dns.test", "doh.test", "127.0.0.1").configure_cert(tls)
    with DNSServer(dict(NAMES), tls=tls) as srv:
        yield srv


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def context(scope: Scope | None = None, timeout: float = TIMEOUT, **kw: object) -> ProbeContext:
    return ProbeContext(
        scope=scope or Scope.loopback(), timeouts=Timeouts(dns=timeout), **kw  # type: ignore[arg-type]
    )


async def probe(host: str, resolver: str | None, ctx: ProbeContext | None = None) -> ProbeResult:
    target = Target(service="test", probe="dns", host=host, resolver=resolver)
    return await DNSProbe().observe(target, ctx or context())


def a_and_aaaa(result: ProbeResult | Measurement) -> tuple[DNSObservation, DNSObservation]:
    """The final A and AAAA observations (a query's confirmation, if it was asked again)."""
    found = [o for o in result.observations if isinstance(o, DNSObservation)]
    assert len(found) == len(result.observations)
    a = [o for o in found if o.qtype == "A"]
    aaaa = [o for o in found if o.qtype == "AAAA"]
    assert found == [*a, *aaaa] and a and aaaa
    return a[-1], aaaa[-1]


# --- bogons ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ip",
    ["0.0.0.0", "10.1.2.3", "100.64.0.1", "127.0.0.1", "169.254.1.1", "172.16.5.4",
     "192.168.1.1", "198.18.0.1", "203.0.113.7", "224.0.0.1", "240.0.0.1", "255.255.255.255",
     "::", "::1", "fe80::1", "fc00::1", "2001:db8::1", "ff02::1", "::ffff:10.0.0.1"],
)
def test_bogons(ip: str) -> None:
    assert is_bogon(ip)


@pytest.mark.parametrize(
    "ip", ["8.8.8.8", "31.13.64.1", "157.240.1.35", "2a03:2880:f10c::1", "::ffff:8.8.8.8"]
)
def test_public_addresses_are_not_bogons(ip: str) -> None:
    assert not is_bogon(ip)


# --- answers and rcodes over UDP ------------------------------------------------------------


async def test_udp_answer_is_recorded_in_full(server: DNSServer) -> None:
    result = await probe("ok.test", server.udp)
    a, aaaa = a_and_aaaa(result)
    assert (result.failure, a.failure, aaaa.failure) == (None, None, None)
    assert (a.resolver, a.transport, a.qname) == (server.udp, "udp", "ok.test")
    [resp] = a.responses
    sent_ids = {q.id for q in server.queries if q.qtype == "A"}
    assert resp.id in sent_ids
    assert resp.source == server.endpoint == f"127.0.0.1:{server.port}"
    assert resp.rcode == "NOERROR" and resp.flags & 0x8000  # QR: a response
    assert [(x.rtype, x.value, x.ttl) for x in resp.answers] == [("A", "127.0.0.2", 300)]
    assert 0 < resp.t < TIMEOUT and resp.malformed is None
    assert aaaa.addresses == ("::1",)
    if LINUX:
        assert resp.ip_ttl == server.ip_ttl


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_ipv6_resolver() -> None:
    with DNSServer({"ok.test": NAMES["ok.test"]}, host="::1") as server:
        result = await probe("ok.test", server.udp)
    a, _ = a_and_aaaa(result)
    assert result.failure is None and a.resolver == server.udp
    [resp] = a.responses
    assert resp.source == server.endpoint == f"[::1]:{server.port}"
    if LINUX:
        assert resp.ip_ttl == server.ip_ttl  # the IPv6 hop limit


@pytest.mark.parametrize(
    ("name", "failure"),
    [("nx.test", F.DNS_NXDOMAIN), ("servfail.test", F.DNS_SERVFAIL),
     ("refused.test", F.DNS_REFUSED)],
)
async def test_error_rcodes(server: DNSServer, name: str, failure: str) -> None:
    result = await probe(name, server.udp)
    a, aaaa = a_and_aaaa(result)
    assert (result.failure, result.operation) == (failure, "resolve")
    assert a.failure == aaaa.failure == failure
    assert len(a.responses) == 1 and a.responses[0].answers == ()


async def test_empty_answer_fails_a_but_not_aaaa(server: DNSServer) -> None:
    result = await probe("empty.test", server.udp)
    a, aaaa = a_and_aaaa(result)
    assert (a.failure, aaaa.failure) == (F.DNS_NO_ANSWER, None)
    assert result.failure == F.DNS_NO_ANSWER


async def test_name_without_ipv6_is_ok(server: DNSServer) -> None:
    result = await probe("v4only.test", server.udp)
    a, aaaa = a_and_aaaa(result)
    assert (result.failure, a.failure, aaaa.failure) == (None, None, None)
    assert a.addresses == ("127.0.0.2",) and aaaa.addresses == ()


@pytest.mark.parametrize(
    ("addresses", "failure"),
    [
        (("10.1.2.3",), F.DNS_BOGON),
        (("10.1.2.3", "192.168.0.1", "fe80::1"), F.DNS_BOGON),
        (("10.1.2.3", "8.8.8.8"), None),  # one public address: not a sinkhole answer
        (("127.0.0.9",), None),  # a bogon, but inside the scope: a real address here
        (("10.1.2.3", "127.0.0.9"), None),
    ],
)
async def test_bogon_answers(
    server: DNSServer, addresses: tuple[str, ...], failure: str | None
) -> None:
    """The probe records the addresses; the analysis's one bogon decision (with the scope's
    explicit networks, here loopback, as the local ones) fails the sinkhole answers."""
    server.names["bogon.test"] = Behaviour(addresses=addresses)
    result = await probe("bogon.test", server.udp)
    a, aaaa = a_and_aaaa(result)
    assert (result.failure, a.failure, aaaa.failure) == (None, None, None)  # facts only
    m = decided(as_measurement(result), [ipaddress.ip_network("127.0.0.0/8")])
    a, aaaa = a_and_aaaa(m)
    assert a.failure == failure
    assert m.failure == failure and m.failed_operation == ("resolve" if failure else None)
    if "fe80::1" in addresses:
        assert aaaa.failure == F.DNS_BOGON


def as_measurement(result: ProbeResult) -> Measurement:
    return Measurement(id="m", run_id="r", vantage="v", probe_version="3",
                       started_at=dt.datetime(2026, 12, 6, tzinfo=dt.UTC), runtime_s=0.1,
                       target=Target(service="s", probe="dns", host="bogon.test"),
                       observations=result.observations, failure=result.failure,
                       failed_operation=result.operation)


# --- lost packets and silence ---------------------------------------------------------------


def test_retransmissions_back_off_within_the_timeout() -> None:
    assert retransmissions(4.0, 2) == (1.0, 3.0)
    assert retransmissions(4.0, 5) == (1.0, 3.0)  # the next (7 s) would be past the timeout
    assert retransmissions(2.0, 2) == (0.5, 1.5)
    assert retransmissions(4.0, 0) == ()


async def test_silence_is_retransmitted_then_confirmed_then_times_out(server: DNSServer) -> None:
    start = time.monotonic()
    result = await probe("silent.test", server.udp)
    elapsed = time.monotonic() - start
    first_a = result.observations[0]
    assert [o.attempt for o in result.observations] == [1, 2, 1, 2]  # type: ignore[union-attr]
    assert [o.transmissions for o in result.observations] == [3] * 4  # type: ignore[union-attr]
    a, aaaa = a_and_aaaa(result)
    assert (result.failure, a.failure, aaaa.failure) == (F.GENERIC_TIMEOUT,) * 3
    assert a.responses == () and first_a.responses == ()  # type: ignore[union-attr]
    # each attempt: sent at 0, T/4 and 3T/4 (default 2 retransmissions)
    assert server.count("silent.test", "A") == 6 and server.count("silent.test", "AAAA") == 6
    ids = {q.id for q in server.queries if q.qtype == "A"}
    assert len(ids) == 2  # a retransmission keeps its id; the confirmation is a new query
    assert elapsed >= 2 * TIMEOUT * 0.9


async def test_no_retry_when_retries_and_confirmation_are_off(server: DNSServer) -> None:
    result = await probe("silent.test", server.udp, context(dns_retries=0, dns_confirm=False))
    assert result.failure == F.GENERIC_TIMEOUT
    assert server.count("silent.test", "A") == 1
    assert len(result.observations) == 2


async def test_lost_query_is_answered_on_retransmission(server: DNSServer) -> None:
    result = await probe("lost.test", server.udp)
    a, _ = a_and_aaaa(result)
    assert result.failure is None and a.addresses == ("127.0.0.2",)
    assert (a.attempt, a.transmissions) == (1, 2)
    assert server.count("lost.test", "A") == 2
    assert len({q.id for q in server.queries if q.qtype == "A"}) == 1
    [resp] = a.responses
    # measured from the first send: the answer is to the retransmission, sent at T/4
    assert resp.t >= TIMEOUT / 4


# --- injection ------------------------------------------------------------------------------


async def test_injected_and_real_answers_are_both_recorded(server: DNSServer) -> None:
    result = await probe("injected.test", server.udp)
    a, _ = a_and_aaaa(result)
    forged, real = a.responses
    assert forged.id == real.id
    assert forged.answers[0].value == "10.10.34.35" and real.answers[0].value == "127.0.0.2"
    assert forged.t < real.t
    # the stub's view is the first answer: a bogon outside the scope, as the analysis decides
    assert a.addresses == ("10.10.34.35",) and a.failure is None
    m = decided(as_measurement(result), [ipaddress.ip_network("127.0.0.0/8")])
    assert m.failure == F.DNS_BOGON
    if LINUX:
        assert (forged.ip_ttl, real.ip_ttl) == (33, server.ip_ttl)


async def test_answer_from_another_source_is_recorded(server: DNSServer) -> None:
    result = await probe("spoofed.test", server.udp)
    a, _ = a_and_aaaa(result)
    first, second = a.responses
    assert first.answers[0].value == "31.13.64.1" and second.answers[0].value == "127.0.0.2"
    assert first.source != server.endpoint and first.source.startswith("127.0.0.1:")
    assert second.source == server.endpoint


async def test_listening_ends_one_window_after_the_first_answer(server: DNSServer) -> None:
    # a real answer 0.3 s after the forged one is inside the window, and the query then ends
    # well before its 5 s timeout
    server.names["slow.test"] = Behaviour(addresses=("127.0.0.2",), forged=("31.13.64.1",),
                                          delay=0.3)
    ctx = context(timeout=5.0)
    start = time.monotonic()
    a = await query(parse_resolver(server.udp), "slow.test", "A", ctx)
    elapsed = time.monotonic() - start
    assert [r.answers[0].value for r in a.responses] == ["31.13.64.1", "127.0.0.2"]
    assert INJECTION_WINDOW_S * 0.9 <= elapsed < INJECTION_WINDOW_S + 1.0


# --- malformed responses --------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x01",
        b"\x12\x34 not dns at all",
        b"\xff\xff\x81\x80\x00\x05\x00\x00\x00\x00\x00\x00",  # 5 questions announced, none sent
        bytes(range(256)) * 3,
    ],
)
async def test_garbage_is_recorded_as_malformed(server: DNSServer, garbage: bytes) -> None:
    server.names["garbage.test"] = Behaviour(garbage=garbage)
    result = await probe("garbage.test", server.udp)
    a, aaaa = a_and_aaaa(result)
    assert (result.failure, a.failure, aaaa.failure) == (F.DNS_MALFORMED,) * 3
    [resp] = a.responses
    assert resp.malformed
    assert resp.id == (int.from_bytes(garbage[:2], "big") if len(garbage) >= 2 else -1)


async def test_truncated_answer_is_malformed_with_its_header(server: DNSServer) -> None:
    server.names["cut.test"] = Behaviour(addresses=("127.0.0.2",), truncate=True)
    result = await probe("cut.test", server.udp)
    a, _ = a_and_aaaa(result)
    assert a.failure == F.DNS_MALFORMED
    [resp] = a.responses
    assert resp.malformed and resp.id in {q.id for q in server.queries if q.qtype == "A"}
    assert resp.rcode == "NOERROR"


# --- TCP, TLS, HTTPS ------------------------------------------------------------------------


async def test_tcp_answer(server: DNSServer) -> None:
    result = await probe("ok.test", server.tcp)
    a, aaaa = a_and_aaaa(result)
    assert result.failure is None and a.transport == "tcp"
    assert (a.addresses, aaaa.addresses) == (("127.0.0.2",), ("::1",))
    assert server.count(transport="tcp") == 2 and server.count(transport="udp") == 0


@pytest.mark.parametrize(
    ("behaviour", "failure"),
    [
        (Behaviour(rcode="NXDOMAIN"), F.DNS_NXDOMAIN),
        (Behaviour(garbage=b"\x00\x01junk"), F.DNS_MALFORMED),
        (Behaviour(silent=True), F.GENERIC_TIMEOUT),
    ],
)
async def test_tcp_failures(server: DNSServer, behaviour: Behaviour, failure: str) -> None:
    server.names["t.test"] = behaviour
    result = await probe("t.test", server.tcp)
    assert result.failure == failure
    # an answer (even garbage) is final; a silent resolver is asked once more on a new
    # connection (ctx.dns_retries = 1), as a few lost segments can outlast the timeout
    assert server.count("t.test", "A") == (2 if behaviour.silent else 1)


async def test_tcp_connection_refused() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await probe("ok.test", f"tcp://127.0.0.1:{port}")
    assert result.failure == F.CONNECTION_REFUSED


async def test_dns_over_tls(server: DNSServer, ca_file: str) -> None:
    result = await probe("ok.test", server.dot("dns.test"), context(ca_bundle=ca_file))
    a, _ = a_and_aaaa(result)
    assert result.failure is None and a.transport == "tls" and a.addresses == ("127.0.0.2",)
    assert server.count(transport="tls") == 2


@pytest.mark.parametrize(
    ("name", "with_ca", "failure"),
    [("dns.test", False, F.SSL_UNKNOWN_AUTHORITY), ("other.test", True, F.SSL_INVALID_HOSTNAME)],
)
async def test_dns_over_tls_checks_the_certificate(
    server: DNSServer, ca_file: str, name: str, with_ca: bool, failure: str
) -> None:
    ctx = context(ca_bundle=ca_file if with_ca else None)
    result = await probe("ok.test", server.dot(name), ctx)
    assert result.failure == failure
    assert server.count(transport="tls") == 0


async def test_dns_over_https_by_address(server: DNSServer, ca_file: str) -> None:
    result = await probe("ok.test", server.doh(), context(ca_bundle=ca_file))
    a, _ = a_and_aaaa(result)
    assert result.failure is None and a.transport == "https"
    assert a.resolver == server.doh()
    assert a.responses[0].source == f"127.0.0.1:{server.https_port}"


async def test_dns_over_https_by_name_is_looked_up_first(server: DNSServer, ca_file: str) -> None:
    ctx = context(ca_bundle=ca_file, lookup_resolver=parse_resolver(server.udp))
    result = await probe("ok.test", server.doh("doh.test"), ctx)
    assert result.failure is None
    assert server.count("doh.test", transport="udp") == 2  # A and AAAA, once: the lookup cache
    assert server.count("ok.test", transport="https") == 2


async def test_dns_over_https_checks_the_certificate(server: DNSServer, ca_file: str) -> None:
    result = await probe("ok.test", server.doh())  # the test CA is not trusted
    assert result.failure == F.SSL_UNKNOWN_AUTHORITY
    # the certificate names 127.0.0.1 but not this name: the name is checked, not the address
    ctx = context(ca_bundle=ca_file, lookup_resolver=parse_resolver(server.udp))
    result = await probe("ok.test", server.doh("uncertified-doh.test"), ctx)
    assert result.failure == F.SSL_INVALID_HOSTNAME
    assert server.count(transport="https") == 0


async def test_dns_over_https_block_page_is_malformed(server: DNSServer, ca_file: str) -> None:
    result = await probe("blockpage.test", server.doh(), context(ca_bundle=ca_file))
    a, _ = a_and_aaaa(result)
    assert a.failure == F.DNS_MALFORMED
    assert a.responses[0].malformed == "HTTP status 403"


# --- scope ----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_out_of_scope_resolver_gets_nothing(server: DNSServer, transport: str) -> None:
    resolver = server.udp if transport == "udp" else server.tcp
    result = await probe("ok.test", resolver, context(Scope.from_entries(["10.0.0.0/8"])))
    a, aaaa = a_and_aaaa(result)
    assert (result.failure, a.failure, aaaa.failure) == (F.OUT_OF_SCOPE,) * 3
    assert a.responses == () and result.operation == "resolve"
    await asyncio.sleep(0.05)  # anything sent would have reached the server by now
    assert server.count() == 0


async def test_out_of_scope_doh_address_gets_nothing(server: DNSServer, ca_file: str) -> None:
    # the lookup resolver (127.0.0.1) is in scope; the DoH name resolves to 127.0.0.2, which
    # is not: a connection there would fail with connection_refused, not out_of_scope
    ctx = context(Scope.from_entries(["127.0.0.1/32"]), ca_bundle=ca_file,
                  lookup_resolver=parse_resolver(server.udp))
    result = await probe("ok.test", server.doh("doh-elsewhere.test"), ctx)
    assert result.failure == F.OUT_OF_SCOPE
    assert server.count(transport="https") == 0


async def test_system_resolver_is_used_for_no_resolver(
    server: DNSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the real system resolver must never be contacted: point "system" at the test server
    monkeypatch.setattr(
        dns_transport, "system_resolver", lambda: ResolverSpec("udp", "127.0.0.1", server.port)
    )
    result = await probe("ok.test", None)
    a, _ = a_and_aaaa(result)
    assert result.failure is None and (a.resolver, a.transport) == ("system", "udp")
    assert server.count("ok.test") == 2


async def test_resolv_conf_is_read_once_per_sweep(
    server: DNSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []

    def nameservers() -> tuple[str, ...]:
        reads.append(1)
        return ("127.0.0.1",)

    monkeypatch.setattr(dns_transport, "system_nameservers", nameservers)
    monkeypatch.setattr(dns_transport, "system_resolver",  # port 53 is not the test server's
                        lambda: ResolverSpec("udp", nameservers()[0], server.port))
    ctx = context()
    for name in ("ok.test", "other.test", "third.test"):  # six queries to the system resolver
        await probe(name, None, ctx)
    assert len(reads) == 1
    await probe("ok.test", None, ctx.for_sweep())  # the next sweep reads it again
    assert len(reads) == 2


async def test_system_resolver_outside_scope_gets_nothing(
    server: DNSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a loopback nameserver outside a 127.0.0.2/32 scope: even a broken scope check could only
    # send to loopback (port 53, where nothing listens)
    monkeypatch.setattr(dns_transport, "system_nameservers", lambda: ("127.0.0.1",))
    result = await probe("ok.test", "system", context(Scope.from_entries(["127.0.0.2/32"])))
    a, _ = a_and_aaaa(result)
    assert result.failure == F.OUT_OF_SCOPE and a.resolver == "system"


# --- lookups, limits, runner ----------------------------------------------------------------


async def test_lookup(server: DNSServer) -> None:
    ctx = context(lookup_resolver=parse_resolver(server.udp))
    found = await lookup("ok.test", ctx)
    assert found.addresses == ("127.0.0.2", "::1") and found.failure is None
    assert [o.qtype for o in found.observations] == ["A", "AAAA"]
    missing = await lookup("nx.test", ctx)
    assert (missing.addresses, missing.failure) == ((), F.DNS_NXDOMAIN)


async def test_one_resolution_per_name_per_sweep(server: DNSServer) -> None:
    # the DNS probe and every lookup of the same name at the same resolver share two queries
    ctx = context(lookup_resolver=parse_resolver(server.udp))
    first, second, measured = await asyncio.gather(
        ctx.lookup("ok.test"), ctx.lookup("ok.test"), probe("ok.test", server.udp, ctx))
    assert first.addresses == second.addresses == ("127.0.0.2", "::1")
    assert measured.failure is None
    assert server.count("ok.test") == 2
    # a new sweep asks again
    await ctx.for_sweep().lookup("ok.test")
    assert server.count("ok.test") == 4


async def test_a_lookup_does_not_wait_for_the_injection_window(server: DNSServer) -> None:
    # the connection may start at the first answer; the DNS measurement keeps listening
    ctx = context(timeout=5.0, lookup_resolver=parse_resolver(server.udp))
    start = time.monotonic()
    found = await ctx.lookup("ok.test")
    assert found.addresses and time.monotonic() - start < INJECTION_WINDOW_S / 2
    result = await probe("ok.test", server.udp, ctx)
    assert result.failure is None
    assert time.monotonic() - start >= INJECTION_WINDOW_S * 0.9  # the probe listened on


async def test_a_fetch_does_not_wait_for_a_missing_ipv6_answer(server: DNSServer) -> None:
    # A answers, AAAA never does: a fetch goes after RFC 8305's resolution delay (50 ms), a
    # probe of every address waits for the AAAA query to end
    server.names["v6lost.test"] = Behaviour(addresses=("127.0.0.2", "::1"),
                                            silent_types=("AAAA",))
    ctx = context(timeout=1.0, lookup_resolver=parse_resolver(server.udp))
    start = time.monotonic()
    found = await ctx.lookup("v6lost.test", every_address=False)
    assert found.addresses == ("127.0.0.2",) and time.monotonic() - start < 0.5
    every = await ctx.lookup("v6lost.test")
    assert every.addresses == ("127.0.0.2",) and time.monotonic() - start >= 2 * 0.9


@pytest.mark.parametrize(("limit", "serial"), [(1, True), (2, False)])
async def test_an_unanswered_query_holds_its_resolver_slot_until_presumed_lost(
    server: DNSServer, limit: int, serial: bool
) -> None:
    await probe("silent.test", server.udp,
                context(limits=Limits(per_resolver=limit), dns_confirm=False, dns_retries=1))
    first_a, first_aaaa = sorted(q.at for q in server.queries if q.at)[:2]
    # with one slot, the AAAA query waits until A is presumed lost (at its retransmission,
    # T/4), not for A's whole timeout
    waited = first_aaaa - first_a
    assert (waited >= TIMEOUT / 4 * 0.8) is serial
    assert waited < TIMEOUT * 0.8


async def test_an_answered_query_gives_its_slot_back_at_the_first_answer(
    server: DNSServer,
) -> None:
    # one slot, yet the AAAA query does not wait out A's injection window
    await probe("ok.test", server.udp, context(timeout=5.0, limits=Limits(per_resolver=1)))
    first, second = sorted(q.at for q in server.queries)
    assert second - first < INJECTION_WINDOW_S / 2


async def test_runner_reports_the_resolve_failure(server: DNSServer) -> None:
    target = Target(service="test", probe="dns", host="nx.test", resolver=server.udp)
    m = await run_probe(DNSProbe(), target, context(), run_id="r", vantage="v")
    assert (m.failure, m.failed_operation, m.probe_version) == (F.DNS_NXDOMAIN, "resolve", "3")
    assert len(m.observations) == 2


# --- silent addresses ([dns] silent) ------------------------------------------------------------


def _silent_target(host: str, resolver: str) -> Target:
    return Target(service="test", probe="dns", host=host, resolver=resolver,
                  options=(("silent", "yes"),))


def _judge_silent(m: object) -> tuple[str, str, str]:
    from judging import judge_run

    v = next(v for v in judge_run([m], {}, ()) if v.measurement_id is not None)  # type: ignore[list-item]
    return v.verdict, v.rule_id, v.evidence


async def test_silent_address_that_stays_silent_is_ok(server: DNSServer) -> None:
    # a server that answers nothing for this name stands for an address where nothing runs
    m = await run_probe(DNSProbe(), _silent_target("silent.test", server.udp),
                        context(dns_retries=3), run_id="r", vantage="v")
    (a,) = m.observations
    assert isinstance(a, DNSObservation) and a.qtype == "A" and a.responses == ()
    assert m.failure == F.GENERIC_TIMEOUT
    # asked once: retries would only repeat a query that must not be answered
    assert server.count("silent.test") == 1
    assert _judge_silent(m)[:2] == ("ok", "dns.silent.quiet")


async def test_silent_address_with_a_closed_port_is_ok() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    m = await run_probe(DNSProbe(), _silent_target("example.test", f"udp://127.0.0.1:{port}"),
                        context(timeout=8.0), run_id="r", vantage="v")
    waited = time.monotonic() - started
    # the ICMP port unreachable is the quiet answer (issue #13): the failure says so, and the
    # wait ends after the injection window, not at the 8 s timeout
    assert m.failure == F.CONNECTION_REFUSED
    assert waited < 8.0 / 2, waited
    assert _judge_silent(m)[:2] == ("ok", "dns.silent.quiet")


async def test_any_answer_from_a_silent_address_is_an_injection(server: DNSServer) -> None:
    m = await run_probe(DNSProbe(), _silent_target("injected.test", server.udp), context(),
                        run_id="r", vantage="v")
    verdict, rule, evidence = _judge_silent(m)
    assert (verdict, rule) == ("dns_blocked", "dns.injection.silent_address")
    assert "10.10.34.35" in evidence and "IP TTL 33" in evidence


async def test_injection_verdict_names_the_differing_ip_ttls(server: DNSServer) -> None:
    m = await run_probe(DNSProbe(), Target(service="test", probe="dns", host="injected.test",
                                           resolver=server.udp), context(), run_id="r",
                        vantage="v")
    verdict, rule, evidence = _judge_silent(m)  # any measurement: judged by its own rules
    assert (verdict, rule) == ("dns_blocked", "dns.injection.multiple_responses")
    assert "IP TTL 33/64" in evidence


# --- the plain-answer fast path agrees with dnspython -------------------------------------------


def _dnspython_view(data: bytes, q: object) -> object:
    """What the probe records of these bytes when dnspython reads them."""
    import dns.message as message

    try:
        msg = message.from_wire(data)
    except Exception:
        return "malformed"
    if not q.is_response(msg):  # type: ignore[attr-defined]
        return "not ours"
    return tuple((dns.rdatatype.to_text(rrset.rdtype), rd.to_text(), rrset.ttl)
                 for rrset in msg.answer for rd in rrset), dns.rcode.to_text(msg.rcode())


def test_the_plain_answer_fast_path_reads_what_dnspython_reads() -> None:
    import random

    import dns.message as message
    import dns.rrset

    from blockwatch.probes.dns_wire import Query, _plain_answer

    rng = random.Random(11)
    v6 = ["::", "::1", "::ffff:1.2.3.4", "::1.2.3.4", "1:0:0:1:0:0:0:1", "2001:db8::",
          "fe80::1:0:0:0", "1::", "0:0:1::", "2001:db8:0:1:1:1:1:1", "ffff::ffff:0:0"]
    checked = fast = 0
    for _ in range(4000):
        qtype = rng.choice(["A", "AAAA"])
        name = rng.choice(["a.example", "Mixed.Case.TEST", "x" * 63 + ".test"])
        q = Query.make(name, qtype)
        query = message.from_wire(q.wire)
        resp = message.make_response(query)
        resp.set_rcode(rng.choice([0, 0, 0, 2, 3, 5]))
        for _ in range(rng.randrange(0, 5)):
            if qtype == "A":
                value = ".".join(str(rng.randrange(256)) for _ in range(4))
            else:
                random_v6 = ":".join(f"{rng.choice([0, rng.randrange(65536)]):x}"
                                     for _ in range(8))
                value = rng.choice([*v6, random_v6])
            value = rng.choice([value, value])  # duplicates happen
            resp.answer.append(dns.rrset.from_text(name + ".", rng.choice([0, 60, 300, 300]),
                                                   "IN", qtype, value))
        if rng.random() < 0.1:
            resp.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "CNAME", "other.example."))
        wire = bytearray(resp.to_wire())
        for _ in range(rng.choice([0, 0, 1, 3])):  # mangle a byte, cut, or add junk
            choice = rng.random()
            if choice < 0.6 and wire:
                wire[rng.randrange(len(wire))] = rng.randrange(256)
            elif choice < 0.8 and wire:
                del wire[rng.randrange(len(wire)):]
            else:
                wire += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
        data = bytes(wire)
        got = _plain_answer(data, q)
        checked += 1
        if got is None:
            continue  # dnspython reads it: the slow path, already tested above
        fast += 1
        answers = tuple((a.rtype, a.value, a.ttl) for a in got)
        rcode = dns.rcode.to_text(dns.rcode.from_flags(int.from_bytes(data[2:4], "big"), 0))
        assert (answers, rcode) == _dnspython_view(data, q), data.hex()
    assert checked == 4000 and fast > 1500  # the common case takes the fast path


async def test_a_consumer_cancelled_does_not_cancel_the_shared_query(server: DNSServer) -> None:
    server.names["slow.test"] = Behaviour(addresses=("127.0.0.2",), delay=0.2)
    ctx = context(timeout=2.0, lookup_resolver=parse_resolver(server.udp))
    impatient = asyncio.create_task(ctx.lookup("slow.test"))
    patient = asyncio.create_task(ctx.lookup("slow.test"))
    await asyncio.sleep(0.05)
    impatient.cancel()  # e.g. its measurement's deadline
    found = await asyncio.wait_for(patient, 2.0)
    assert found.addresses == ("127.0.0.2",)
    assert server.count("slow.test", "A") == 1  # still one query, answered for the other


@pytest.mark.parametrize("transport", ["tcp", "dot", "doh"])
async def test_stream_resolvers_keep_their_connections(server: DNSServer, ca_file: str,
                                                       transport: str) -> None:
    # a sweep asks a control resolver for every name: one connection serves them in turn
    server.keepalive = True
    names = [f"n{i}.test" for i in range(12)]
    for n in names:
        server.names[n] = Behaviour(addresses=("127.0.0.2",))
    resolver = {"tcp": server.tcp, "dot": server.dot("dns.test"), "doh": server.doh()}[transport]
    ctx = context(ca_bundle=ca_file, limits=Limits(per_resolver=1))
    for n in names:
        result = await probe(n, resolver, ctx)
        assert result.failure is None
    key = {"tcp": "tcp", "dot": "tls", "doh": "https"}[transport]
    assert server.count(transport=key) == 2 * len(names)
    assert server.connections[key] == 1
    await ctx.aclose()


async def test_a_kept_connection_closed_by_the_server_is_replaced(server: DNSServer) -> None:
    # the test server closes each connection after one answer, as an impatient resolver may:
    # the next query finds its kept connection dead and opens a new one, nothing fails
    ctx = context(limits=Limits(per_resolver=1))
    for i in range(3):
        server.names[f"k{i}.test"] = Behaviour(addresses=("127.0.0.2",))
        result = await probe(f"k{i}.test", server.tcp, ctx)
        assert result.failure is None
    assert server.connections["tcp"] == 6 and server.count(transport="tcp") == 6
    await ctx.aclose()


async def test_a_stream_resolver_gets_a_handful_of_connections_however_many_queries(
        server: DNSServer) -> None:
    # dnsmasq serves 20 TCP connections at once: a sweep must not hold them all, idle
    from blockwatch.probes.dns_stream import STREAM_CONNECTIONS

    server.keepalive = True
    names = [f"m{i}.test" for i in range(40)]
    for n in names:
        server.names[n] = Behaviour(addresses=("127.0.0.2",), delay=0.02)
    ctx = context(timeout=2.0)
    results = await asyncio.gather(*(probe(n, server.tcp, ctx) for n in names))
    assert all(r.failure is None for r in results)
    assert server.connections["tcp"] <= STREAM_CONNECTIONS
    await ctx.aclose()


async def test_a_flood_of_responses_is_kept_bounded_and_counted() -> None:
    """Issue #15: a resolver answering one query 5,000 times: at most MAX_RESPONSES are kept
    (the rest counted in ``dropped``), the measurement stays small, and the exchange ends
    within its window, not after reading the flood."""
    from blockwatch.probes.dns_transport import MAX_RESPONSES
    from blockwatch.probes.model import observation_to_dict
    from blockwatch.storage.types import json_text

    with DNSServer({"flood.test": Behaviour(addresses=("192.0.2.1",), flood=5000)}) as server:
        started = time.monotonic()
        result = await probe("flood.test", server.udp)
        took = time.monotonic() - started
    a, _ = a_and_aaaa(result)
    assert len(a.responses) == MAX_RESPONSES and a.dropped > 0
    assert a.addresses == ("192.0.2.1",) and result.failure is None
    stored = sum(len(json_text(observation_to_dict(o))) for o in result.observations)
    assert stored < 64 * 1024, stored
    assert took < TIMEOUT + 1.0
