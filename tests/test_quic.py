"""The quic probe against real aioquic HTTP/3 servers on loopback (the lab's own server,
``blockwatch.lab.h3server``) and hostile UDP peers: handshakes, certificates, the
version-negotiation ping, silence, a closed port, a server that closes, garbage and floods."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable

import pytest
import trustme

from blockwatch.lab.h3server import serve
from blockwatch.probes import failures as F
from blockwatch.probes import quic_ping as ping
from blockwatch.probes import quic_wire as wire
from blockwatch.probes import registry
from blockwatch.probes.context import Lookup, ProbeContext
from blockwatch.probes.model import (
    Measurement,
    Service,
    Target,
    observation_from_dict,
    observation_to_dict,
)
from blockwatch.probes.quic import (
    CONTROL,
    HANDSHAKE,
    PING,
    PROXY_UNSUPPORTED,
    QUICObservation,
    QUICProbe,
    QUICSettings,
    plan_targets,
)
from blockwatch.probes.runner import run_probe
from blockwatch.probes.scope import Scope
from blockwatch.probes.targets import PlanContext

HOST = "quic.test"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("quic-pki")
    ca, other = trustme.CA(), trustme.CA()
    out = {}
    for name, authority, hosts in (("good", ca, (HOST,)), ("wrong_name", ca, ("other.test",)),
                                   ("unknown_ca", other, (HOST,))):
        path = d / f"{name}.pem"
        authority.issue_cert(*hosts).private_key_and_cert_chain_pem.write_to_path(str(path))
        out[name] = str(path)
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    out["ca"] = str(d / "ca.pem")
    return out


def context(pki: dict[str, str], address: str = "127.0.0.1", timeout: float = 2.0,
            **kw: object) -> ProbeContext:
    return ProbeContext(scope=Scope.loopback(), ca_bundle=pki["ca"],
                        static_lookups={HOST: Lookup((address,))},
                        settings={"quic": QUICSettings(timeout=timeout)}, **kw)  # type: ignore[arg-type]


async def measure(ctx: ProbeContext, port: int) -> Measurement:
    target = Target(service="s", probe="quic", host=HOST, port=port, sni=HOST, transport="udp")
    return await run_probe(QUICProbe(), target, ctx, run_id="r", vantage="v")


def by_kind(m: Measurement) -> dict[str, list[QUICObservation]]:
    out: dict[str, list[QUICObservation]] = {}
    for o in m.observations:
        assert isinstance(o, QUICObservation)
        out.setdefault(o.kind, []).append(o)
    return out


async def h3(address: str, cert: str, alpn: list[str] | None = None) -> tuple[list[object], int]:
    servers = await serve([address], 0, cert, cert, alpn)
    return servers, servers[0]._transport.get_extra_info("sockname")[1]  # type: ignore[attr-defined]


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
async def test_handshake_get_ping_and_control_sni_against_a_real_server(
        pki: dict[str, str], address: str) -> None:
    servers, port = await h3(address, pki["good"])
    try:
        m = await measure(context(pki, address), port)
    finally:
        for s in servers:
            s.close()  # type: ignore[attr-defined]
    assert (m.failure, m.failed_operation) == (None, None)
    kinds = by_kind(m)
    [ping], [control], [real] = kinds[PING], kinds[CONTROL], kinds[HANDSHAKE]
    assert ping.failure is None and "1" in ping.versions and ping.answered
    assert control.failure is None and control.sni == "example.com" and control.verified is None
    assert (real.version, real.alpn, real.verified, real.http_status) == ("1", "h3", True, 200)
    assert real.cert_sans == (HOST,) and len(real.peer_chain_sha256) >= 1
    assert real.t0 >= max(ping.t, control.t) - 0.01  # the real name goes last
    assert m.runtime_s < 2


@pytest.mark.parametrize(("cert", "failure"), [("wrong_name", F.SSL_INVALID_HOSTNAME),
                                                ("unknown_ca", F.SSL_UNKNOWN_AUTHORITY)])
async def test_an_untrusted_certificate_is_recorded_with_its_facts(
        pki: dict[str, str], cert: str, failure: str) -> None:
    servers, port = await h3("127.0.0.1", pki[cert])
    try:
        m = await measure(context(pki), port)
    finally:
        servers[0].close()  # type: ignore[attr-defined]
    assert (m.failure, m.failed_operation) == (failure, "quic_handshake")
    [real] = by_kind(m)[HANDSHAKE]  # not a timeout: made once
    assert (real.verified, real.verify_error, real.http_status) == (False, failure, None)
    assert real.peer_chain_sha256 and real.answered


async def test_a_server_that_closes_the_handshake(pki: dict[str, str]) -> None:
    """A server without h3 answers with CONNECTION_CLOSE (TLS alert no_application_protocol)."""
    servers, port = await h3("127.0.0.1", pki["good"], alpn=["hq-interop"])
    try:
        m = await measure(context(pki), port)
    finally:
        servers[0].close()  # type: ignore[attr-defined]
    assert (m.failure, m.failed_operation) == (F.SSL_FAILED_HANDSHAKE, "quic_handshake")
    assert by_kind(m)[HANDSHAKE][0].answered
    assert by_kind(m)[PING][0].failure is None  # the same server answers the ping


def free_udp_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
        return port


async def test_a_closed_port_is_refused_at_once(pki: dict[str, str]) -> None:
    """ICMP port unreachable (the kernel's, for a closed loopback port): connection_refused."""
    start = time.monotonic()
    m = await measure(context(pki, timeout=5.0), free_udp_port())
    assert (m.failure, m.failed_operation) == (F.CONNECTION_REFUSED, "quic_handshake")
    assert by_kind(m)[PING][0].failure == F.CONNECTION_REFUSED
    assert len(by_kind(m)[HANDSHAKE]) == 1  # refused is no timeout: not made again
    assert time.monotonic() - start < 2


class Peer(asyncio.DatagramProtocol):
    """A hostile UDP server: ``answer(data)`` gives the datagrams it sends back to each one."""

    def __init__(self, answer: Callable[[bytes], list[bytes]]) -> None:
        self.answer, self.received = answer, 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received += 1
        assert self.transport is not None
        for d in self.answer(data):
            self.transport.sendto(d, addr)


async def peer(answer: Callable[[bytes], list[bytes]]) -> AsyncIterator[tuple[Peer, int]]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(lambda: Peer(answer),
                                                           local_addr=("127.0.0.1", 0))
    try:
        yield proto, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


def _initial_flood(data: bytes) -> list[bytes]:
    """60 datagrams per datagram received, each a long-header v1 Initial naming the client's
    connection ids the wrong way round, with random (undecryptable) contents."""
    return [b"\xc0\x00\x00\x00\x01\x08" + os.urandom(8) + b"\x08" + os.urandom(8) + b"\x00"
            + (0x4000 | 1150).to_bytes(2, "big") + os.urandom(1150) for _ in range(60)]


HOSTILE: dict[str, Callable[[bytes], list[bytes]]] = {
    "silence": lambda data: [],
    "garbage": lambda data: [os.urandom(n) for n in (1, 40, 1200, 1500)],
    "initial_flood": _initial_flood,
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
async def test_hostile_peers_end_in_a_failure_bounded_in_time_and_memory(
        pki: dict[str, str], kind: str) -> None:
    timeout = 0.6
    async for server, port in peer(HOSTILE[kind]):
        tracemalloc.start()
        start = time.monotonic()
        try:
            m = await measure(context(pki, timeout=timeout), port)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        elapsed = time.monotonic() - start
        kinds = by_kind(m)
        assert m.failure in (F.GENERIC_TIMEOUT, wire.QUIC_FLOOD), m.failure
        assert m.failed_operation == "quic_handshake"
        # ping and control side by side, the handshake, its retry: three limits at most
        assert elapsed < 3 * timeout + 2.0, elapsed  # slack for a loaded CI machine
        assert peak < 8 * 2**20, peak  # the probe keeps nothing of what it was sent
        assert server.received >= 3  # ping, control, handshakes all went out
        assert not kinds[PING][0].versions
        if kind != "silence":
            assert kinds[PING][0].ignored > 0
        if m.failure == F.GENERIC_TIMEOUT:
            assert [o.attempt for o in kinds[HANDSHAKE]] == [1, 2]  # made again once


async def test_a_ping_flood_is_read_up_to_the_cap_and_ends_in_time() -> None:
    """1200 datagrams answer each ping: what the kernel and the bounded queue let through is
    read and ignored, up to MAX_DATAGRAMS; the ping ends by its limit either way."""
    start = time.monotonic()
    async for _server, port in peer(lambda data: [os.urandom(64)] * 1200):
        got = await ping.quicping("127.0.0.1", port, 1.0, None)
    assert got.failure in (F.GENERIC_TIMEOUT, wire.QUIC_FLOOD) and not got.versions
    assert 0 < got.ignored <= wire.MAX_DATAGRAMS
    assert time.monotonic() - start < 2


def test_the_ping_is_a_1200_byte_initial_of_a_reserved_version() -> None:
    dcid, scid = os.urandom(8), os.urandom(8)
    p = ping.ping_packet(dcid, scid)
    assert len(p) == 1200 and p[0] & 0xC0 == 0xC0
    version = int.from_bytes(p[1:5], "big")
    assert version & 0x0F0F0F0F == 0x0A0A0A0A  # RFC 9000 section 15: reserved for this
    vn = (b"\x80\0\0\0\0" + bytes([8]) + scid + bytes([8]) + dcid
          + (1).to_bytes(4, "big") + (0x6B3343CF).to_bytes(4, "big"))
    assert ping.parse_version_negotiation(vn, dcid, scid) == (1, 0x6B3343CF)
    assert ping.parse_version_negotiation(vn, scid, dcid) is None  # not ours
    assert ping.parse_version_negotiation(vn[:-2], dcid, scid) is None
    assert ping.parse_version_negotiation(b"\x80\0\0\0\0\xff", dcid, scid) is None


async def test_out_of_scope_and_proxy_send_nothing(pki: dict[str, str]) -> None:
    ctx = context(pki, address="192.0.2.1")
    m = await measure(ctx, 443)
    assert (m.failure, m.failed_operation) == (F.OUT_OF_SCOPE, "quic_handshake")
    assert [o.kind for o in by_kind(m)[HANDSHAKE]] == [HANDSHAKE]
    m = await measure(context(pki, proxy="socks5://127.0.0.1:9"), 443)
    assert m.failure == PROXY_UNSUPPORTED and "quic" not in registry.PROXIED


def test_planned_for_https_endpoints_and_on_by_default() -> None:
    svc = Service(name="s", title="S", category="x", domains=("s.test",),
                  urls=("https://s.test/", "http://plain.test/", "https://alt.test:8443/x"))
    got = [(t.host, t.port, t.key) for t in plan_targets(svc, PlanContext())]
    assert got == [("s.test", 443, "udp://s.test:443"), ("alt.test", 8443, "udp://alt.test:8443")]
    assert "quic" in registry.DEFAULT_SELECTION and "quic" in registry.ADDS_ONLY
    assert registry.settings_model("quic") is QUICSettings


def test_the_observation_round_trips_through_storage() -> None:
    o = QUICObservation(kind=HANDSHAKE, address="192.0.2.1", port=443, t0=0.0, t=1.0,
                        sni=HOST, version="1", alpn="h3", cert_sans=("a", "b"), verified=True,
                        http_status=200, after_failure_s=3.5)
    assert observation_from_dict(observation_to_dict(o)) == o


def test_settings_refuse_what_would_outlast_the_deadline() -> None:
    with pytest.raises(ValueError):
        QUICSettings(timeout=60)
    with pytest.raises(ValueError):
        QUICSettings(quicping="yes please")  # type: ignore[arg-type]


# --- the lab censor's QUIC SNI filter (blockwatch.lab.quicsni), on real client Initials -------


def client_initial(name: str) -> bytes:
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    quic = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=["h3"],
                                                          server_name=name))
    quic.connect(("192.0.2.1", 443), now=0.0)
    return quic.datagrams_to_send(now=0.0)[0][0]


def ipv4_udp(payload: bytes, sport: int, dport: int = 443) -> bytes:
    import struct

    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                       bytes([10, 0, 0, 2]), bytes([10, 0, 0, 3])) + udp


def test_the_censor_reads_the_sni_of_a_real_initial_and_blocks_gfw_style(tmp_path) -> None:
    import json

    from blockwatch.lab.quicsni import Filter, initial_sni

    assert initial_sni(client_initial("blocked.test")) == "blocked.test"
    assert initial_sni(os.urandom(1200)) is None and initial_sni(b"") is None
    config = tmp_path / "quicsni.json"
    config.write_text(json.dumps({"names": ["blocked.test"], "residual_s": 60}))
    f = Filter(config)
    assert f.verdict(ipv4_udp(client_initial("ok.test"), 50000), now=0.0)
    # the GFW's condition: a source port below the destination port passes
    assert f.verdict(ipv4_udp(client_initial("www.blocked.test"), 400), now=0.0)
    assert not f.verdict(ipv4_udp(client_initial("www.blocked.test"), 50000), now=1.0)
    # residual blocking of (client, server, 443): any datagram, any name, for 60 s
    assert not f.verdict(ipv4_udp(client_initial("ok.test"), 50001), now=30.0)
    assert not f.verdict(ipv4_udp(b"anything", 50002), now=60.9)
    assert f.verdict(ipv4_udp(client_initial("ok.test"), 50003), now=61.5)
