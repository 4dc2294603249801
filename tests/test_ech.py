"""The ech probe against real loopback servers: a TLS server (Python's ssl, OpenSSL) that answers
every hello, the same server behind a filter that resets or silences hellos carrying the ECH
extension, hostile repliers; the HTTPS record from a real loopback DNS server; the hellos
scapy builds; the ECHConfigList reader; the rules."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import json
import random
import ssl
import time
from collections.abc import Callable
from typing import Any

import pytest
from dns_server import Behaviour, DNSServer
from judging import judge_run
from servers import LoopbackServer, abort_with_reset, make_pki, silent

from blockwatch.probes import failures as F
from blockwatch.probes import registry
from blockwatch.probes.context import ProbeContext, ProbeResult, Timeouts
from blockwatch.probes.ech import ECHObservation, ECHProbe, ECHSettings, plan_targets
from blockwatch.probes.ech_hello import (
    ECH_EXTENSION,
    MALFORMED,
    ECHConfig,
    client_hello,
    ech_config_list,
    parse_ech_configs,
)
from blockwatch.probes.errors import MalformedReply
from blockwatch.probes.model import (
    Measurement,
    Service,
    Target,
    observation_from_dict,
    observation_to_dict,
)
from blockwatch.probes.resolvers import parse_resolver
from blockwatch.probes.scope import Scope
from blockwatch.probes.targets import PlanContext

HOST = "example.test"
CONFIG = ECHConfig(config_id=7, kem_id=0x0020, suites=((1, 1), (1, 3)),
                   public_name="public.example.test", public_key=bytes(range(32)))
ECH_B64 = base64.b64encode(ech_config_list([CONFIG])).decode()
# ECHConfigLists whose outer length is right (dnspython checks that much) and whose config is not
TRUNCATED = base64.b64encode(bytes.fromhex("0007fe0d0010070000")).decode()
NOT_ASCII = base64.b64encode(ech_config_list([ECHConfig(1, 0x20, ((1, 1),), "x", b"k")])
                             .replace(b"\x01x", b"\x01\xff")).decode()
HTTPS_TEXT = f'1 . alpn="h2,http/1.1" ipv4hint=127.0.0.1 ech={ECH_B64}'


def extensions(record: bytes) -> list[int]:
    """The extension types of the ClientHello in ``record``, as scapy reads it."""
    from scapy.layers.tls.record import TLS

    return [int(e.type) for e in TLS(record).msg[0].ext]


def carries_ech(first: bytes) -> bool:
    try:
        return ECH_EXTENSION in extensions(first)
    except Exception:
        return False


def ech_filter(context: ssl.SSLContext, on_ech: str) -> Any:
    """A real TLS server (OpenSSL through memory BIOs) behind a censor that reads each
    ClientHello with scapy and resets (``reset``) or ignores (``silent``) those carrying ECH."""

    async def handler(s: LoopbackServer, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        first = await reader.read(16384)
        if on_ech != "none" and carries_ech(first):
            if on_ech == "reset":
                abort_with_reset(writer)
            else:
                await silent(s, reader, writer)
            return
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_side=True)
        incoming.write(first)
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass  # it waits for our Finished: the ServerHello flight is written
        except ssl.SSLError:
            pass  # an alert for the client, in outgoing
        writer.write(outgoing.read())
        await writer.drain()
        await reader.read(1)

    return handler


def replies(data: bytes, *, trickle: float = 0.0, close: bool = False) -> Any:
    """A hostile server: read the hello, send ``data`` (one byte every ``trickle`` seconds),
    then close (``close``) or wait."""

    async def handler(_s: LoopbackServer, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await reader.read(16384)
        if trickle:
            for b in data:
                writer.write(bytes([b]))
                await writer.drain()
                await asyncio.sleep(trickle)
        else:
            writer.write(data)
            await writer.drain()
        if close:
            writer.close()
            return
        await reader.read(1)

    return handler


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_pki(tmp_path_factory.mktemp("pki"))


def context(dns: DNSServer, **settings: Any) -> ProbeContext:
    return ProbeContext(scope=Scope.loopback(), lookup_resolver=parse_resolver(dns.udp),
                        timeouts=Timeouts(dns=1, tcp=1, tls=1, http=1),
                        settings={"ech": ECHSettings(**settings)})


async def probe(handler: Any, *, records: tuple[tuple[str, str], ...] = (("HTTPS", HTTPS_TEXT),),
                **settings: Any) -> tuple[ProbeResult, float, LoopbackServer]:
    with DNSServer({HOST: Behaviour(addresses=("127.0.0.1",), records=records)}) as dns:
        async with LoopbackServer(handler) as server:
            target = Target(service="news", probe="ech", host=HOST, port=server.port, sni=HOST)
            # the HTTPS record of a port other than 443 is asked at _PORT._https.NAME
            dns.names[f"_{server.port}._https.{HOST}"] = Behaviour(records=records)
            started = time.perf_counter()
            result = await ECHProbe().observe(target, context(dns, **settings))
            return result, time.perf_counter() - started, server


def hellos(result: ProbeResult) -> list[ECHObservation]:
    return [o for o in result.observations
            if isinstance(o, ECHObservation) and o.kind == "hello"]


# --- against real servers ------------------------------------------------------------------------


async def test_every_variant_is_answered_by_a_real_tls_server(pki: Any) -> None:
    result, _, server = await probe(ech_filter(pki.server_context(pki.valid), "none"))
    assert result.failure is None, result
    got = hellos(result)
    assert sorted(o.variant or "" for o in got) == ["grease", "plain", "real"]
    assert sorted(o.order or 0 for o in got) == [1, 2, 3]
    assert {o.outcome for o in got} == {"server_hello"}
    real = next(o for o in got if o.variant == "real")
    assert (real.sni, real.config_id) == ("public.example.test", 7)
    assert server.accepted == 3
    (record,) = [o for o in result.observations
                 if isinstance(o, ECHObservation) and o.kind == "https_record"]
    assert record.ech_config and record.ech_config_ids == (7,)
    assert record.alpn == ("h2", "http/1.1") and record.ipv4hint == ("127.0.0.1",)
    assert record.ech_public_names == ("public.example.test",)


async def test_the_order_is_random(pki: Any) -> None:
    orders = set()
    for _ in range(6):
        result, _, _ = await probe(ech_filter(pki.server_context(pki.valid), "none"))
        orders.add(tuple(o.variant for o in sorted(hellos(result), key=lambda o: o.order or 0)))
    assert len(orders) > 1, orders


async def test_no_real_config_without_an_https_record_or_when_turned_off(pki: Any) -> None:
    handler = ech_filter(pki.server_context(pki.valid), "none")
    for records, real in (((), True), ((("HTTPS", HTTPS_TEXT),), False)):
        result, _, server = await probe(handler, records=records, real_config=real)
        assert sorted(o.variant or "" for o in hellos(result)) == ["grease", "plain"]
        assert result.failure is None and server.accepted == 2


async def test_a_censor_resetting_ech_hellos(pki: Any) -> None:
    result, _, _ = await probe(ech_filter(pki.server_context(pki.valid), "reset"))
    assert (result.failure, result.operation) == (F.CONNECTION_RESET, "ech_hello")
    by = {o.variant: o for o in hellos(result)}
    assert by["plain"].outcome == "server_hello"
    assert by["grease"].outcome == by["real"].outcome == "reset"
    assert all(o.attempt == 1 for o in hellos(result))  # a reset is not retried


async def test_a_censor_silencing_ech_hellos_is_retried_once(pki: Any) -> None:
    result, took, _ = await probe(ech_filter(pki.server_context(pki.valid), "silent"),
                                  timeout=0.3)
    assert (result.failure, result.operation) == (F.GENERIC_TIMEOUT, "ech_hello")
    attempts = sorted((o.variant or "", o.attempt) for o in hellos(result))
    assert attempts == [("grease", 1), ("grease", 2), ("plain", 1), ("real", 1), ("real", 2)]
    assert took < 3.0


async def test_an_alert_is_the_server_answering() -> None:
    alert = bytes.fromhex("15030300020228")  # fatal handshake_failure
    result, _, _ = await probe(replies(alert))
    assert result.failure is None
    assert {(o.outcome, o.alert) for o in hellos(result)} == {("alert", 40)}


async def test_nobody_listening_is_a_connect_failure() -> None:
    from servers import refusing_port

    with DNSServer({HOST: Behaviour(addresses=("127.0.0.1",))}) as dns, \
            refusing_port() as port:
        target = Target(service="news", probe="ech", host=HOST, port=port, sni=HOST)
        result = await ECHProbe().observe(target, context(dns))
    assert (result.failure, result.operation) == (F.CONNECTION_REFUSED, "connect")
    assert len(hellos(result)) == 1  # an address that refuses gets no further hellos


async def test_a_connect_that_times_out_is_tried_once_more_at_once() -> None:
    from servers import blackhole_port

    with DNSServer({HOST: Behaviour(addresses=("127.0.0.1",))}) as dns, \
            blackhole_port() as port:
        target = Target(service="news", probe="ech", host=HOST, port=port, sni=HOST)
        ctx = context(dns)
        ctx.timeouts = Timeouts(dns=1, tcp=0.3, tls=1, http=1)
        result = await ECHProbe().observe(target, ctx)
    assert (result.failure, result.operation) == (F.GENERIC_TIMEOUT, "connect")
    got = hellos(result)
    assert [o.attempt for o in got] == [1, 2] and got[0].variant == got[1].variant


# --- hostile replies: bounded in time and memory, recorded -------------------------------------


async def test_a_close_without_a_byte_is_an_eof() -> None:
    result, _, _ = await probe(replies(b"", close=True), records=())
    assert {(o.outcome, o.failure) for o in hellos(result)} == {("eof", F.EOF_ERROR)}
    assert result.operation == "tls_handshake"


@pytest.mark.parametrize(("data", "trickle", "detail"), [
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", 0.0, "record header"),
    (b"\x16\x03\x03\xff\xff" + b"\x00" * 70000, 0.0, "record header"),  # over the record limit
    (b"\x16\x03\x03\x00\x30" + b"\x0b" * 0x30, 0.0, "not a ServerHello"),
    (b"\x16\x03\x03\x00\x10" + b"\x02" * 4, 0.0, "EOF after"),
    (b"\x15\x03\x03\x00\x01\x02", 0.0, "alert shorter"),
])
async def test_garbage_is_a_malformed_reply(data: bytes, trickle: float, detail: str) -> None:
    result, took, _ = await probe(replies(data, trickle=trickle, close=True), records=())
    assert {o.outcome for o in hellos(result)} == {"malformed"}
    assert {o.failure for o in hellos(result)} == {MALFORMED}
    assert all(detail in (o.detail or "") for o in hellos(result))
    assert took < 3.0


async def test_a_huge_stream_is_read_no_further_than_one_record() -> None:
    record = b"\x16\x03\x03\x47\xff" + b"\x02" * 0x47FF  # 18431 bytes: within the limit
    result, took, _ = await probe(replies(record + b"\x00" * 4_000_000), records=())
    assert {o.outcome for o in hellos(result)} == {"server_hello"}
    assert took < 3.0


async def test_a_slow_trickle_ends_at_the_deadline() -> None:
    result, took, _ = await probe(replies(b"\x16\x03\x03\x00\x40" + b"\x02" * 64, trickle=0.2),
                                  records=(), timeout=0.5)
    assert {o.failure for o in hellos(result)} == {F.GENERIC_TIMEOUT}
    assert took < 4.0  # three hellos and three retries, each cut at 0.5 s, some in parallel


@pytest.mark.parametrize("text", [
    f'1 . alpn="h2" ech={TRUNCATED}',  # a config whose length runs past the list
    f"1 . ech={NOT_ASCII}",  # a public name that is not ASCII
])
async def test_a_broken_ech_config_is_recorded_and_the_rest_goes_on(pki: Any,
                                                                    text: str) -> None:
    result, _, _ = await probe(ech_filter(pki.server_context(pki.valid), "none"),
                               records=(("HTTPS", text),))
    (record,) = [o for o in result.observations
                 if isinstance(o, ECHObservation) and o.kind == "https_record"]
    assert record.ech_config and record.ech_error
    assert sorted(o.variant or "" for o in hellos(result)) == ["grease", "plain"]
    assert result.failure is None


# --- the hello, the config -----------------------------------------------------------------------


def test_scapy_builds_hellos_with_and_without_the_ech_extension() -> None:
    plain = client_hello("a.test")
    assert ECH_EXTENSION not in extensions(plain) and 0 in extensions(plain)
    grease = client_hello("a.test", b"\x00" + b"\x01" * 40)
    assert extensions(grease)[-1] == ECH_EXTENSION
    assert plain[:3] == b"\x16\x03\x01"
    assert client_hello("a.test") != plain  # fresh random, session id, key share


def test_ech_config_list_round_trip_and_truncations_never_raise_otherwise() -> None:
    wire = ech_config_list([CONFIG, dataclasses.replace(CONFIG, config_id=9)])
    assert parse_ech_configs(wire) == [CONFIG, dataclasses.replace(CONFIG, config_id=9)]
    rng = random.Random(7)
    for cut in range(len(wire)):
        with pytest.raises(MalformedReply):
            parse_ech_configs(wire[:cut])
    for _ in range(300):
        mangled = bytearray(wire)
        mangled[rng.randrange(len(mangled))] = rng.randrange(256)
        with contextlib.suppress(MalformedReply):
            parse_ech_configs(bytes(mangled))


def test_plan_registry_settings_and_storage_shape() -> None:
    svc = Service(name="news", title="News", category="news", domains=("news.test",),
                  urls=("https://news.test/", "http://plain.test/"))
    assert [(t.host, t.port) for t in plan_targets(svc, PlanContext())] == [("news.test", 443)]
    spec = registry.BY_NAME["ech"]
    assert spec.default and registry.settings_model("ech") is ECHSettings
    o = ECHObservation(kind="hello", t0=0.0, t=0.1, address="192.0.2.1", port=443,
                       variant="grease", order=2, outcome="reset", failure=F.CONNECTION_RESET)
    assert observation_from_dict(json.loads(json.dumps(observation_to_dict(o)))) == o


# --- the rules -----------------------------------------------------------------------------------

NOW = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
NEWS = Service(name="news", title="News", category="news", domains=("news.test",),
               urls=("https://news.test/",))


def measured(vantage: str, outcomes: dict[str, str], *, address: str = "192.0.2.7"
             ) -> Measurement:
    """An ech measurement of news.test from ``vantage``: variant -> outcome."""
    failures = {"server_hello": None, "reset": F.CONNECTION_RESET,
                "timeout": F.GENERIC_TIMEOUT, "malformed": MALFORMED,
                "connect_failed": F.CONNECTION_REFUSED}
    obs = tuple(ECHObservation(kind="hello", t0=0.0, t=0.1, address=address, port=443,
                               variant=v, order=i, outcome=out, failure=failures[out])
                for i, (v, out) in enumerate(outcomes.items(), 1))
    from blockwatch.probes.ech import outcome

    failure, op = outcome(obs)
    return Measurement(id=f"{vantage}-1", run_id="r", vantage=vantage, probe_version="1",
                       started_at=NOW, runtime_s=1.0,
                       target=Target(service="news", probe="ech", host="news.test", port=443,
                                     sni="news.test"),
                       observations=obs, failure=failure, failed_operation=op)


BLOCKED = {"plain": "server_hello", "grease": "reset", "real": "reset"}
ALL_OK = {"plain": "server_hello", "grease": "server_hello", "real": "server_hello"}
CASES: dict[str, tuple[dict[str, str], dict[str, str] | None, str]] = {
    "ech.blocked_vs_control": (BLOCKED, ALL_OK, "ech_blocked"),
    "ech.server_refuses": (BLOCKED, {"plain": "server_hello", "grease": "reset"},
                           "inconclusive"),
    "ech.plain_only": (BLOCKED, None, "ech_blocked"),
    "ech.real_config_only": ({"plain": "server_hello", "grease": "server_hello",
                              "real": "timeout"}, None, "inconclusive"),
    "ech.no_claim": ({"plain": "server_hello", "grease": "malformed"}, None, "inconclusive"),
    "ech.plain_failed": ({"plain": "reset", "grease": "reset"}, ALL_OK, "inconclusive"),
}


def judged(rule: str) -> list[Any]:
    here, control, _ = CASES[rule]
    ms = [measured("home", here), *([measured("vps", control)] if control else [])]
    return judge_run(ms, {"news": NEWS}, [], control_vantages=["vps"])


EXAMPLES: dict[str, Callable[[], list[Any]]] = {
    rule: (lambda rule=rule: judged(rule)) for rule in CASES}


@pytest.mark.parametrize("rule", sorted(CASES))
def test_each_rule_and_the_service_verdict(rule: str) -> None:
    out = {v.measurement_id: v for v in judged(rule)}
    assert (out["home-1"].rule_id, out["home-1"].verdict) == (rule, CASES[rule][2])
    if CASES[rule][2] == "ech_blocked":
        assert out["home-1"].layer == "ech"
        assert out["home-1"].details["confidence"] == (
            "high" if rule == "ech.blocked_vs_control" else "medium")
        assert (out[None].verdict, out[None].layer) == ("blocked", "ech")


def test_an_outage_is_never_ech_blocking() -> None:
    down = measured("home", {"plain": "timeout", "grease": "timeout", "real": "timeout"})
    assert down.failed_operation == "tls_handshake"
    (v, _) = judge_run([down], {"news": NEWS}, [])
    assert v.verdict != "ech_blocked" and v.rule_id == "ech.plain_failed"
    refused = measured("home", {"plain": "connect_failed", "grease": "connect_failed"})
    assert refused.failed_operation == "connect"
    assert judge_run([refused], {"news": NEWS}, [])[0].verdict != "ech_blocked"


def test_the_lab_censor_reads_the_extension_not_the_bytes() -> None:
    """blockwatch.lab.echblock: a ClientHello with ECH is caught (IPv4 and IPv6), one without
    it is not even when fe 0d appears elsewhere (the SNI), and garbage is let through."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6

    from blockwatch.lab.echblock import carries_ech

    def packet(payload: bytes, v6: bool = False) -> bytes:
        ip = IPv6(dst="fd00::1") if v6 else IP(dst="10.0.0.1")
        return bytes(ip / TCP(dport=443, flags="PA") / payload)

    grease = client_hello("a.test", b"\x00" + b"\x01" * 40)
    assert carries_ech(packet(grease)) and carries_ech(packet(grease, v6=True))
    assert not carries_ech(packet(client_hello("a.test")))
    sneaky = client_hello("a.test").replace(b"a.test", b"a\xfe\x0dst")
    assert not carries_ech(packet(sneaky))
    assert not carries_ech(packet(b"\x16\x03\x01\xff\xff" + b"\xfe\x0d" * 50))
    assert not carries_ech(b"\x45garbage")


async def test_an_endpoint_given_as_an_address_is_greeted_without_a_name(pki: Any) -> None:
    """An IP address is no server name (RFC 6066 3): neither the plan nor the probe sends one
    as the SNI."""
    svc = Service(name="ip", title="IP", category="news", domains=(),
                  urls=("https://192.0.2.9/",))
    assert [(t.host, t.sni) for t in plan_targets(svc, PlanContext())] == [("192.0.2.9", None)]
    with DNSServer({}) as dns:
        async with LoopbackServer(ech_filter(pki.server_context(pki.valid), "none")) as server:
            target = Target(service="ip", probe="ech", host="127.0.0.1", port=server.port)
            result = await ECHProbe().observe(target, context(dns))
    got = hellos(result)
    assert result.failure is None, result
    assert sorted(o.variant or "" for o in got) == ["grease", "plain"]  # no HTTPS record asked
    assert {o.sni for o in got} == {None} and {o.outcome for o in got} == {"server_hello"}
