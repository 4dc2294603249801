"""The TCP, TLS and HTTP probes against real loopback servers (and a loopback SOCKS5 proxy).

Names are mapped by pre-seeding the context's lookup cache, so no test depends on probes.dns and
nothing is ever resolved by the system.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from judging import judge_run
from servers import (
    EXACT_BODY,
    LARGE_BODY,
    PKI,
    TITLE_PAGE,
    LoopbackServer,
    SocksBehaviour,
    blackhole_port,
    close_on_data,
    http,
    make_pki,
    refusing_port,
    reset_on_data,
    silent,
    silent_once,
    sni_filter,
    socks5,
)

from blockwatch.probes.context import Lookup, ProbeContext, ProbeResult, Timeouts
from blockwatch.probes.http import BODY_CAP, HTTPProbe, extract_title
from blockwatch.probes.model import (
    DNSObservation,
    HTTPObservation,
    Target,
    TCPObservation,
    TLSObservation,
    Verdict,
)
from blockwatch.probes.runner import run_probe
from blockwatch.probes.scope import Scope
from blockwatch.probes.socks import SocksReplyError, parse_proxy
from blockwatch.probes.tcp import TCPProbe
from blockwatch.probes.tls import TLSProbe, _peer_chain

HOST = "example.test"
FAST = Timeouts(dns=0.5, tcp=0.5, tls=1.0, http=1.0)
DNS_FACT = DNSObservation(resolver="fake", transport="udp", qname=HOST, qtype="A", t0=0.0)


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return make_pki(tmp_path)


def context(
    *addresses: str, failure: str | None = None, scope: Scope | None = None, **kw: object
) -> ProbeContext:
    """A fast context whose lookup of HOST answers ``addresses`` (or fails)."""
    ctx = ProbeContext(scope=scope or Scope.loopback(), timeouts=FAST, **kw)  # type: ignore[arg-type]
    ctx.static_lookups[HOST] = Lookup(addresses, (DNS_FACT,), failure)
    return ctx


def of(kind: type, observations: tuple[object, ...]) -> list:  # type: ignore[type-arg]
    return [o for o in observations if isinstance(o, kind)]


def chain_sha256(cert: trustme.LeafCert) -> list[str]:
    pems = [blob.bytes().decode() for blob in cert.cert_chain_pems]
    return [hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest() for pem in pems]


def leaf_sha256(cert: trustme.LeafCert) -> str:
    return chain_sha256(cert)[0]


async def settle() -> None:
    """Give the servers' accept callbacks a moment to run."""
    await asyncio.sleep(0.05)


# --- TCP ---------------------------------------------------------------------------------------


async def test_tcp_connects() -> None:
    async with LoopbackServer(silent) as server:
        result = await TCPProbe().observe(Target(service="s", probe="tcp", host=HOST,
                                                 port=server.port), context("127.0.0.1"))
        await settle()
    assert result.failure is None and result.operation is None
    assert result.observations[0] == DNS_FACT
    (tcp,) = of(TCPObservation, result.observations)
    assert (tcp.address, tcp.port, tcp.failure) == ("127.0.0.1", server.port, None)
    assert 0 <= tcp.t0 <= tcp.t
    assert server.accepted == 1


async def test_tcp_refused() -> None:
    with refusing_port() as port:
        result = await TCPProbe().observe(Target(service="s", probe="tcp", host="127.0.0.1",
                                                 port=port), context())
    assert (result.failure, result.operation) == ("connection_refused", "connect")
    assert of(TCPObservation, result.observations)[0].failure == "connection_refused"


async def test_tcp_timeout() -> None:
    with blackhole_port() as port:
        result = await TCPProbe().observe(Target(service="s", probe="tcp", host="127.0.0.1",
                                                 port=port), context())
    assert (result.failure, result.operation) == ("generic_timeout_error", "connect")


async def test_tcp_tries_every_address_and_succeeds_if_one_does() -> None:
    async with LoopbackServer(silent) as server:
        with refusing_port("::1", server.port):  # nothing may answer on the IPv6 twin
            result = await TCPProbe().observe(
                Target(service="s", probe="tcp", host=HOST, port=server.port),
                context("::1", "127.0.0.1"),
            )
    assert result.failure is None
    v6, v4 = of(TCPObservation, result.observations)
    assert (v6.address, v6.failure) == ("::1", "connection_refused")
    assert (v4.address, v4.failure) == ("127.0.0.1", None)


async def test_tcp_fails_with_the_first_address_failure() -> None:
    with refusing_port() as port, blackhole_port() as dropped:
        ctx = context("127.0.0.1")
        result = await TCPProbe().observe(
            Target(service="s", probe="tcp", host=HOST, port=port), ctx
        )
        assert result.failure == "connection_refused"
        ctx2 = context("127.0.0.1", "::1")
        result = await TCPProbe().observe(
            Target(service="s", probe="tcp", host=HOST, port=dropped), ctx2
        )
    assert (result.failure, result.operation) == ("generic_timeout_error", "connect")
    assert len(of(TCPObservation, result.observations)) == 2


async def test_tcp_lookup_failure_is_a_resolve_failure() -> None:
    result = await TCPProbe().observe(
        Target(service="s", probe="tcp", host=HOST, port=443),
        context(failure="dns_nxdomain_error"),
    )
    assert result == type(result)((DNS_FACT,), "dns_nxdomain_error", "resolve")


async def test_tcp_scope_refusal_sends_nothing() -> None:
    async with LoopbackServer(silent) as server:
        ctx = context("127.0.0.1", scope=Scope.from_entries(["10.0.0.0/8"]))
        result = await TCPProbe().observe(
            Target(service="s", probe="tcp", host=HOST, port=server.port), ctx
        )
        await settle()
    assert (result.failure, result.operation) == ("out_of_scope", "connect")
    assert server.accepted == 0


async def test_tcp_source_address() -> None:
    async with LoopbackServer(silent) as server:
        ctx = context("127.0.0.1", source_address="127.0.0.2")
        result = await TCPProbe().observe(
            Target(service="s", probe="tcp", host=HOST, port=server.port), ctx
        )
        await settle()
    assert result.failure is None
    assert server.peers == ["127.0.0.2"]


async def test_tcp_source_address_of_another_family_is_not_used() -> None:
    async with LoopbackServer(silent, host="::1") as server:
        ctx = context("::1", source_address="127.0.0.2")
        result = await TCPProbe().observe(
            Target(service="s", probe="tcp", host=HOST, port=server.port), ctx
        )
    assert result.failure is None


# --- SOCKS5 ------------------------------------------------------------------------------------


def proxied(proxy: LoopbackServer, scope: Scope | None = None, auth: str = "") -> ProbeContext:
    """A context with no lookup seeded for HOST: through the proxy, names must stay remote."""
    return ProbeContext(scope=scope or Scope.loopback(), timeouts=FAST,
                        proxy=f"socks5://{auth}127.0.0.1:{proxy.port}")


async def test_tcp_through_socks_resolves_at_the_proxy() -> None:
    how = SocksBehaviour(names={HOST: "127.0.0.1"})
    async with LoopbackServer(silent) as target, LoopbackServer(socks5(how)) as proxy:
        ctx = proxied(proxy)
        result = await TCPProbe().observe(
            Target(service="s", probe="tcp", host=HOST, port=target.port), ctx
        )
        await settle()
    assert result.failure is None
    (tcp,) = of(TCPObservation, result.observations)
    assert len(result.observations) == 1  # no DNS: the proxy resolved the name
    assert (tcp.address, tcp.port) == (HOST, target.port)
    assert how.asked == [(3, HOST, target.port)]  # a name, not an address
    assert ctx._resolutions is None  # no DNS query at all
    assert target.accepted == 1


async def test_socks_username_password() -> None:
    how = SocksBehaviour(username="alice", password="s3cr:t", names={HOST: "127.0.0.1"})
    async with LoopbackServer(silent) as target, LoopbackServer(socks5(how)) as proxy:
        good = await TCPProbe().observe(
            Target(service="s", probe="tcp", host=HOST, port=target.port),
            proxied(proxy, auth="alice:s3cr%3At@"),
        )
        bad = await TCPProbe().observe(
            Target(service="s", probe="tcp", host=HOST, port=target.port),
            proxied(proxy, auth="alice:wrong@"),
        )
    assert good.failure is None
    assert bad.operation == "proxy_connect"
    assert bad.failure is not None and bad.failure.startswith("unknown_failure: SocksError")


@pytest.mark.parametrize(
    ("reply", "failure"),
    [
        (0x05, "connection_refused"),
        (0x04, "host_unreachable"),
        (0x03, "network_unreachable"),
        (0x06, "generic_timeout_error"),
        (0x02, "unknown_failure: SocksReplyError: SOCKS5 proxy: connection not allowed by ruleset"),
    ],
)
async def test_socks_reply_codes(reply: int, failure: str) -> None:
    async with LoopbackServer(socks5(SocksBehaviour(reply=reply))) as proxy:
        result = await TCPProbe().observe(
            Target(service="s", probe="tcp", host=HOST, port=443), proxied(proxy)
        )
    assert (result.failure, result.operation) == (failure, "connect")


async def test_socks_proxy_down_is_our_side() -> None:
    with refusing_port() as port:
        ctx = ProbeContext(scope=Scope.loopback(), timeouts=FAST,
                           proxy=f"socks5://127.0.0.1:{port}")
        result = await TCPProbe().observe(
            Target(service="s", probe="tcp", host=HOST, port=443), ctx
        )
    assert (result.failure, result.operation) == ("connection_refused", "proxy_connect")


async def test_socks_proxy_out_of_scope_gets_nothing() -> None:
    async with LoopbackServer(socks5(SocksBehaviour())) as proxy:
        result = await TCPProbe().observe(
            Target(service="s", probe="tcp", host=HOST, port=443),
            proxied(proxy, scope=Scope.from_entries(["10.0.0.0/8"])),
        )
        await settle()
    assert (result.failure, result.operation) == ("out_of_scope", "proxy_connect")
    assert proxy.accepted == 0


def test_parse_proxy() -> None:
    proxy = parse_proxy("socks5h://u%40x:p@[::1]:9050")
    assert (proxy.host, proxy.port, proxy.username, proxy.password) == ("::1", 9050, "u@x", "p")
    with pytest.raises(ValueError, match="socks5"):
        parse_proxy("http://127.0.0.1:8080")
    assert SocksReplyError(0x05).errno == 111


# --- TLS ---------------------------------------------------------------------------------------


async def tls_probe(server: LoopbackServer, ctx: ProbeContext, sni: str | None = None):  # type: ignore[no-untyped-def]
    target = Target(service="s", probe="tls", host=HOST, port=server.port, sni=sni)
    return await TLSProbe().observe(target, ctx)


async def test_tls_valid_certificate_facts(pki: PKI) -> None:
    async with LoopbackServer(http, tls=pki.server_context(pki.valid)) as server:
        result = await tls_probe(server, context("127.0.0.1", ca_bundle=pki.ca_bundle))
    assert result.failure is None
    assert [type(o) for o in result.observations] == [DNSObservation, TCPObservation,
                                                      TLSObservation]
    tls = result.observations[-1]
    assert tls.verified is True and tls.verify_error is None and tls.failure is None
    assert tls.sni == HOST and tls.address == "127.0.0.1"
    assert tls.version == "TLSv1.3"
    assert tls.cipher and tls.cipher.startswith("TLS_")
    assert tls.alpn == "http/1.1"
    assert tls.peer_chain_sha256[0] == leaf_sha256(pki.valid)
    assert tls.cert_subject == HOST
    assert tls.cert_sans == (HOST, "127.0.0.1", "::1")
    assert tls.cert_not_after and tls.cert_not_after.endswith("+00:00")
    assert server.sni == [HOST]


@pytest.mark.parametrize(
    ("cert", "error"),
    [
        ("wrong_host", "ssl_invalid_hostname"),
        ("unknown_ca", "ssl_unknown_authority"),
        ("expired", "ssl_invalid_certificate"),
    ],
)
async def test_tls_rejected_certificate_still_recorded(pki: PKI, cert: str, error: str) -> None:
    leaf = getattr(pki, cert)
    async with LoopbackServer(http, tls=pki.server_context(leaf)) as server:
        result = await tls_probe(server, context("127.0.0.1", ca_bundle=pki.ca_bundle))
    assert (result.failure, result.operation) == (error, "tls_handshake")
    first, second = of(TCPObservation, result.observations)  # the facts need a second look
    assert first.failure is None and second.failure is None
    (tls,) = of(TLSObservation, result.observations)
    assert (tls.verified, tls.verify_error, tls.failure) == (False, error, error)
    assert tls.version == "TLSv1.3"
    assert tls.peer_chain_sha256[0] == leaf_sha256(leaf)
    assert server.accepted == 2


async def test_tls_records_the_chain_the_server_sent(pki: PKI) -> None:
    async with LoopbackServer(http, tls=pki.server_context(pki.via_intermediate)) as server:
        result = await tls_probe(server, context("127.0.0.1", ca_bundle=pki.ca_bundle))
    assert result.failure is None
    (tls,) = of(TLSObservation, result.observations)
    expected = chain_sha256(pki.via_intermediate)
    assert len(expected) == 2
    # Pythons without get_unverified_chain record the leaf alone
    assert list(tls.peer_chain_sha256) in (expected, expected[:1])
    # the certificates themselves (OONI's peer_certificates), the same as their hashes say
    kept = [hashlib.sha256(base64.b64decode(d)).hexdigest() for d in tls.peer_chain_der]
    assert kept == list(tls.peer_chain_sha256)


def test_peer_chain_falls_back_to_the_leaf() -> None:
    class OldSSLObject:
        def getpeercert(self, binary_form: bool = False) -> bytes:
            return b"leaf-der"

    assert _peer_chain(OldSSLObject()) == [b"leaf-der"]  # type: ignore[arg-type]


async def test_tls_sni_is_the_targets(pki: PKI) -> None:
    async with LoopbackServer(http, tls=pki.server_context(pki.wrong_host)) as server:
        result = await tls_probe(server, context("127.0.0.1", ca_bundle=pki.ca_bundle),
                                 sni="other.test")
    assert result.failure is None
    assert server.sni == ["other.test"]
    assert of(TLSObservation, result.observations)[0].cert_sans == ("other.test",)


@pytest.mark.parametrize(
    ("handler", "failure"),
    [(reset_on_data, "connection_reset"), (close_on_data, "eof_error"),
     (silent, "generic_timeout_error")],
)
async def test_tls_handshake_interference(handler: object, failure: str) -> None:
    async with LoopbackServer(handler) as server:  # type: ignore[arg-type]
        result = await tls_probe(server, context("127.0.0.1"))
    assert (result.failure, result.operation) == (failure, "tls_handshake")
    timed_out = failure == "generic_timeout_error"
    # a timeout is made again with the real name (packet loss is not a censor), beside the
    # control SNI's handshake
    tcps = of(TCPObservation, result.observations)
    *tls, control = sorted(of(TLSObservation, result.observations), key=lambda o: o.control)
    assert len(tcps) == len(tls) + 1 == (3 if timed_out else 2)
    assert all(t.failure is None for t in tcps)
    assert all((o.failure, o.verified, o.version, o.control, o.sni) ==
               (failure, None, None, False, HOST) for o in tls)
    # the same address with the control SNI fails the same way: not the name
    assert (control.sni, control.control, control.failure) == ("example.com", True, failure)
    assert server.accepted == len(tcps)


async def test_a_handshake_lost_once_is_made_again_and_counts(pki: PKI) -> None:
    async with LoopbackServer(silent_once(pki.server_context(pki.valid), http)) as server:
        target = Target(service="s", probe="tls", host=HOST, port=server.port)
        result = await TLSProbe().observe(target, context("127.0.0.1", ca_bundle=pki.ca_bundle))
    assert (result.failure, result.operation) == (None, None)
    lost, *rest = of(TLSObservation, result.observations)
    assert (lost.failure, lost.control) == ("generic_timeout_error", False)
    again = next(o for o in rest if not o.control)
    assert (again.failure, again.verified, again.sni) == (None, True, HOST)
    assert server.accepted == 3  # the first, the second, the control SNI's
    verdict = _judged(result, target)
    assert verdict.verdict == "ok", verdict  # not tls.sni_vs_control_sni: the name got through


def _judged(result: object, target: Target) -> Verdict:
    from blockwatch.probes.model import Measurement

    m = Measurement(id="m1", run_id="r", vantage="v", target=target, probe_version="1",
                    started_at=dt.datetime.now(dt.UTC), runtime_s=0.1,
                    observations=result.observations, failure=result.failure,  # type: ignore[attr-defined]
                    failed_operation=result.operation)  # type: ignore[attr-defined]
    return next(v for v in judge_run([m], {}, ()) if v.measurement_id == "m1")


async def test_tls_sni_filtering_told_apart_by_the_control_sni(pki: PKI) -> None:
    handler = sni_filter(HOST, pki.server_context(pki.valid))
    async with LoopbackServer(handler) as server:
        target = Target(service="s", probe="tls", host=HOST, port=server.port)
        result = await TLSProbe().observe(target, context("127.0.0.1", ca_bundle=pki.ca_bundle))
    assert (result.failure, result.operation) == ("connection_reset", "tls_handshake")
    tls, control = of(TLSObservation, result.observations)
    assert (tls.sni, tls.failure) == (HOST, "connection_reset")
    assert (control.sni, control.control, control.failure) == ("example.com", True, None)
    assert control.version == "TLSv1.3" and control.verified is None  # looked at, not trusted
    verdict = _judged(result, target)
    assert (verdict.verdict, verdict.rule_id) == ("tls_blocked", "tls.sni_vs_control_sni")
    assert verdict.details["sni_based"] is True and "example.com" in verdict.evidence


async def test_https_fetch_of_an_sni_filtered_name_is_judged_by_the_control_sni(
        pki: PKI) -> None:
    from blockwatch.probes.model import Measurement

    handler = sni_filter(HOST, pki.server_context(pki.valid))
    async with LoopbackServer(handler) as server:
        ctx = context("127.0.0.1", ca_bundle=pki.ca_bundle)
        tls_target = Target(service="s", probe="tls", host=HOST, port=server.port)
        url = f"https://{HOST}:{server.port}/"
        http_target = Target(service="s", probe="http", host=HOST, url=url)
        tls_m = await run_probe(TLSProbe(), tls_target, ctx, run_id="r", vantage="v")
        http_m = await run_probe(HTTPProbe(), http_target, ctx, run_id="r", vantage="v")
    assert isinstance(http_m, Measurement) and http_m.failed_operation == "tls_handshake"
    out = {v.measurement_id: v for v in judge_run([tls_m, http_m], {}, ())}
    for m in (tls_m, http_m):
        assert out[m.id].rule_id == "tls.sni_vs_control_sni", out[m.id]
    assert f"{HOST}'s addresses completed a handshake for example.com" in out[http_m.id].evidence


async def test_tls_failure_on_both_names_is_not_called_sni_blocking() -> None:
    async with LoopbackServer(reset_on_data) as server:
        target = Target(service="s", probe="tls", host=HOST, port=server.port)
        result = await TLSProbe().observe(target, context("127.0.0.1"))
    verdict = _judged(result, target)
    # no control vantage: an address-wide reset cannot be told from a broken server
    assert (verdict.verdict, verdict.rule_id) == ("inconclusive", "failure.no_control")
    assert verdict.details["sni_based"] is False and "failed too" in verdict.evidence


async def test_tls_control_sni_can_be_switched_off(pki: PKI) -> None:
    handler = sni_filter(HOST, pki.server_context(pki.valid))
    async with LoopbackServer(handler) as server:
        target = Target(service="s", probe="tls", host=HOST, port=server.port)
        result = await TLSProbe().observe(target, context("127.0.0.1", control_sni=None))
    assert len(of(TLSObservation, result.observations)) == 1 and server.accepted == 1
    assert _judged(result, target).rule_id == "failure.no_control"


async def test_tls_tcp_failure_is_a_connect_failure() -> None:
    with refusing_port() as port:
        result = await TLSProbe().observe(
            Target(service="s", probe="tls", host="127.0.0.1", port=port), context()
        )
    assert (result.failure, result.operation) == ("connection_refused", "connect")
    assert of(TLSObservation, result.observations) == []


async def test_tls_one_good_address_is_enough(pki: PKI) -> None:
    async with LoopbackServer(http, tls=pki.server_context(pki.valid)) as server:
        with refusing_port("::1", server.port):
            result = await tls_probe(server, context("::1", "127.0.0.1", ca_bundle=pki.ca_bundle))
    assert result.failure is None
    assert [o.failure for o in of(TCPObservation, result.observations)] == [
        "connection_refused", None]


async def test_tls_through_socks(pki: PKI) -> None:
    how = SocksBehaviour(names={HOST: "127.0.0.1"})
    async with (LoopbackServer(http, tls=pki.server_context(pki.valid)) as server,
                LoopbackServer(socks5(how)) as proxy):
        ctx = proxied(proxy)
        ctx.ca_bundle = pki.ca_bundle
        result = await tls_probe(server, ctx)
    assert result.failure is None
    assert of(TLSObservation, result.observations)[0].address == HOST
    assert how.asked == [(3, HOST, server.port)]


# --- HTTP --------------------------------------------------------------------------------------


async def http_probe(url: str, ctx: ProbeContext) -> tuple[HTTPObservation | None, object]:
    result = await HTTPProbe().observe(Target(service="s", probe="http", host=HOST, url=url), ctx)
    found = of(HTTPObservation, result.observations)
    return (found[0] if found else None), result


async def test_http_page(pki: PKI) -> None:
    async with LoopbackServer(http) as server:
        ctx = context("127.0.0.1")
        obs, result = await http_probe(f"http://{HOST}:{server.port}/", ctx)
    assert result.failure is None  # type: ignore[attr-defined]
    assert result.observations[0] == DNS_FACT  # type: ignore[attr-defined]
    assert obs is not None
    assert (obs.status, obs.http_version, obs.address) == (200, "HTTP/1.1", "127.0.0.1")
    assert obs.title == "Hello, blocked World & co"
    assert obs.body_length == len(TITLE_PAGE) and not obs.body_truncated
    assert obs.body_sha256 == hashlib.sha256(TITLE_PAGE).hexdigest()
    assert ("Set-Cookie", "seen=1") in obs.headers
    assert obs.redirects == () and 0 <= obs.t0 <= obs.t
    (request,) = server.requests
    assert request.headers["host"] == f"{HOST}:{server.port}"
    assert request.headers["user-agent"] == ctx.user_agent


async def test_redirect_to_a_block_page_that_cannot_load_is_still_a_block_page() -> None:
    async with LoopbackServer(http) as server:
        ctx = context("127.0.0.1")
        # nothing leaves loopback
        ctx.static_lookups["warning.or.kr"] = Lookup((), (), "dns_nxdomain_error")
        target = Target(service="s", probe="http", host=HOST,
                        url=f"http://{HOST}:{server.port}/warning")
        result = await HTTPProbe().observe(target, ctx)
    assert (result.failure, result.operation) == ("dns_nxdomain_error", "resolve")
    (obs,) = of(HTTPObservation, result.observations)
    assert obs.status == 302 and obs.redirects == ("http://warning.or.kr/i3.html",)
    verdict = _judged(result, target)
    assert (verdict.verdict, verdict.rule_id) == ("http_blocked", "http.blockpage_fingerprint")
    assert "bw.http.kr_warning_location" in verdict.evidence


async def test_a_fetch_lost_once_is_made_again_and_counts(pki: PKI) -> None:
    async with LoopbackServer(silent_once(pki.server_context(pki.valid), http)) as server:
        ctx = context("127.0.0.1", ca_bundle=pki.ca_bundle)
        url = f"https://{HOST}:{server.port}/"
        result = await HTTPProbe().observe(Target(service="s", probe="http", host=HOST,
                                                  url=url), ctx)
    assert (result.failure, result.operation) == (None, None)
    lost, again = of(HTTPObservation, result.observations)
    assert (lost.failure, lost.status) == ("generic_timeout_error", None)
    assert (again.failure, again.status, again.title) == (None, 200, "Hello, blocked World & co")
    assert lost.t <= again.t0 and server.accepted == 2
    assert of(DNSObservation, result.observations) == [DNS_FACT]  # the lookup, once


async def test_a_fetch_that_times_out_twice_fails_with_both_recorded() -> None:
    async with LoopbackServer(silent) as server:
        url = f"https://{HOST}:{server.port}/"
        result = await HTTPProbe().observe(Target(service="s", probe="http", host=HOST,
                                                  url=url), context("127.0.0.1"))
    assert (result.failure, result.operation) == ("generic_timeout_error", "tls_handshake")
    assert [o.failure for o in of(HTTPObservation, result.observations)] == [
        "generic_timeout_error"] * 2
    assert server.accepted == 2


async def test_http_redirect_chain() -> None:
    async with LoopbackServer(http) as server:
        base = f"http://{HOST}:{server.port}"
        obs, result = await http_probe(f"{base}/redirect/3", context("127.0.0.1"))
    assert result.failure is None  # type: ignore[attr-defined]
    assert obs is not None and obs.status == 200
    assert obs.redirects == (f"{base}/redirect/2", f"{base}/redirect/1", f"{base}/")
    assert obs.url == f"{base}/redirect/3"


async def test_http_ten_redirects_are_followed_eleven_are_not() -> None:
    async with LoopbackServer(http) as server:
        base = f"http://{HOST}:{server.port}"
        ten, ok = await http_probe(f"{base}/redirect/10", context("127.0.0.1"))
        loop, bad = await http_probe(f"{base}/loop", context("127.0.0.1"))
    assert ok.failure is None and ten is not None and len(ten.redirects) == 10  # type: ignore[attr-defined]
    assert (bad.failure, bad.operation) == ("http_too_many_redirects", "http_round_trip")  # type: ignore[attr-defined]
    assert loop is not None and loop.failure == "http_too_many_redirects"
    assert loop.status == 302 and loop.redirects == (f"{base}/loop",) * 10


async def test_http_body_cap() -> None:
    async with LoopbackServer(http) as server:
        base = f"http://{HOST}:{server.port}"
        large, _ = await http_probe(f"{base}/large", context("127.0.0.1"))
        exact, _ = await http_probe(f"{base}/exact", context("127.0.0.1"))
    assert large is not None and large.body_truncated and large.body_length == BODY_CAP
    assert large.body_sha256 == hashlib.sha256(LARGE_BODY[:BODY_CAP]).hexdigest()
    assert exact is not None and not exact.body_truncated and exact.body_length == BODY_CAP
    assert exact.body_sha256 == hashlib.sha256(EXACT_BODY).hexdigest()


Check = Callable[[HTTPObservation | None], bool]


@pytest.mark.parametrize(
    ("path", "failure"),
    [("/slow", "generic_timeout_error"), ("/reset", "connection_reset"), ("/close", "eof_error")],
)
async def test_http_round_trip_failures(path: str, failure: str) -> None:
    async with LoopbackServer(http) as server:
        server.slow_delay = 5
        obs, result = await http_probe(f"http://{HOST}:{server.port}{path}", context("127.0.0.1"))
    assert (result.failure, result.operation) == (failure, "http_round_trip")  # type: ignore[attr-defined]
    assert obs is not None and obs.failure == failure and obs.status is None


async def test_http_connect_failures() -> None:
    with refusing_port() as port, blackhole_port() as dropped:
        _, refused = await http_probe(f"http://{HOST}:{port}/", context("127.0.0.1"))
        _, timed_out = await http_probe(f"http://{HOST}:{dropped}/", context("127.0.0.1"))
    assert (refused.failure, refused.operation) == ("connection_refused", "connect")  # type: ignore[attr-defined]
    assert (timed_out.failure, timed_out.operation) == ("generic_timeout_error", "connect")  # type: ignore[attr-defined]


async def test_http_tries_the_next_address() -> None:
    async with LoopbackServer(http) as server:
        with refusing_port("::1", server.port):
            obs, result = await http_probe(f"http://{HOST}:{server.port}/",
                                           context("::1", "127.0.0.1"))
    assert result.failure is None  # type: ignore[attr-defined]
    assert obs is not None and obs.address == "127.0.0.1"


async def test_http_does_not_wait_out_a_dropped_address_before_the_next() -> None:
    slow = Timeouts(dns=0.5, tcp=20.0, tls=1.0, http=2.0)
    async with LoopbackServer(http) as server:
        # 127.0.0.2 drops SYNs on the server's port (a full backlog that never accepts)
        with socket.socket() as dropped, socket.socket() as filler:
            dropped.bind(("127.0.0.2", server.port))
            dropped.listen(0)
            filler.connect(("127.0.0.2", server.port))
            ctx = ProbeContext(scope=Scope.loopback(), timeouts=slow)
            ctx.static_lookups[HOST] = Lookup(("127.0.0.2", "127.0.0.1"), (DNS_FACT,))
            started = time.monotonic()
            obs, result = await http_probe(f"http://{HOST}:{server.port}/", ctx)
            took = time.monotonic() - started
    assert result.failure is None  # type: ignore[attr-defined]
    assert obs is not None and obs.address == "127.0.0.1" and obs.status == 200
    # one address after the other would have waited out the first one's 20 s connect timeout
    assert took < slow.tcp


async def test_http_source_address_and_ipv6_literal() -> None:
    async with LoopbackServer(http) as v4, LoopbackServer(http, host="::1") as v6:
        ctx = context(source_address="127.0.0.2")
        four, r4 = await http_probe(f"http://127.0.0.1:{v4.port}/", ctx)
        six, r6 = await http_probe(f"http://[::1]:{v6.port}/", ctx)
        await settle()
    assert r4.failure is None and r6.failure is None  # type: ignore[attr-defined]
    assert v4.peers == ["127.0.0.2"]
    assert four is not None and six is not None and six.address == "::1"


async def test_http_lookup_failure() -> None:
    obs, result = await http_probe(f"http://{HOST}/", context(failure="dns_nxdomain_error"))
    assert obs is None
    assert result.observations == (DNS_FACT,)  # type: ignore[attr-defined]
    assert (result.failure, result.operation) == ("dns_nxdomain_error", "resolve")  # type: ignore[attr-defined]


async def test_http_scope_refusal_sends_nothing() -> None:
    async with LoopbackServer(http) as server:
        ctx = context("127.0.0.1", scope=Scope.from_entries(["10.0.0.0/8"]))
        _, result = await http_probe(f"http://{HOST}:{server.port}/", ctx)
        _, literal = await http_probe(f"http://127.0.0.1:{server.port}/", ctx)
        await settle()
    assert (result.failure, result.operation) == ("out_of_scope", "connect")  # type: ignore[attr-defined]
    assert (literal.failure, literal.operation) == ("out_of_scope", "connect")  # type: ignore[attr-defined]
    assert server.accepted == 0


async def test_https_valid(pki: PKI) -> None:
    async with LoopbackServer(http, tls=pki.server_context(pki.valid)) as server:
        obs, result = await http_probe(f"https://{HOST}:{server.port}/",
                                       context("127.0.0.1", ca_bundle=pki.ca_bundle))
    assert result.failure is None  # type: ignore[attr-defined]
    assert obs is not None and obs.status == 200 and obs.title
    assert server.sni == [HOST]


@pytest.mark.parametrize(
    ("cert", "failure"),
    [
        ("wrong_host", "ssl_invalid_hostname"),
        ("unknown_ca", "ssl_unknown_authority"),
        ("expired", "ssl_invalid_certificate"),
    ],
)
async def test_https_certificate_failures(pki: PKI, cert: str, failure: str) -> None:
    async with LoopbackServer(http, tls=pki.server_context(getattr(pki, cert))) as server:
        _, result = await http_probe(f"https://{HOST}:{server.port}/",
                                     context("127.0.0.1", ca_bundle=pki.ca_bundle))
    assert (result.failure, result.operation) == (failure, "tls_handshake")  # type: ignore[attr-defined]
    assert server.requests == []


@pytest.mark.parametrize(
    ("handler", "failure"),
    [(reset_on_data, "connection_reset"), (close_on_data, "eof_error"),
     (silent, "generic_timeout_error")],
)
async def test_https_handshake_interference(handler: object, failure: str) -> None:
    async with LoopbackServer(handler) as server:  # type: ignore[arg-type]
        _, result = await http_probe(f"https://{HOST}:{server.port}/", context("127.0.0.1"))
    assert (result.failure, result.operation) == (failure, "tls_handshake")  # type: ignore[attr-defined]


async def test_http_through_socks(pki: PKI) -> None:
    how = SocksBehaviour(names={HOST: "127.0.0.1"})
    async with (LoopbackServer(http, tls=pki.server_context(pki.valid)) as server,
                LoopbackServer(socks5(how)) as proxy):
        ctx = proxied(proxy)
        ctx.ca_bundle = pki.ca_bundle
        obs, result = await http_probe(f"https://{HOST}:{server.port}/redirect/1", ctx)
    assert result.failure is None  # type: ignore[attr-defined]
    assert obs is not None and obs.status == 200 and obs.address == HOST
    assert how.asked[0] == (3, HOST, server.port)
    assert ctx._resolutions is None  # no DNS query at all


async def test_http_through_socks_refused_target() -> None:
    async with LoopbackServer(socks5(SocksBehaviour(reply=0x05))) as proxy:
        _, result = await http_probe(f"http://{HOST}/", proxied(proxy))
    assert (result.failure, result.operation) == ("connection_refused", "connect")  # type: ignore[attr-defined]


async def test_http_through_socks_proxy_out_of_scope() -> None:
    async with LoopbackServer(socks5(SocksBehaviour())) as proxy:
        _, result = await http_probe(
            f"http://{HOST}/", proxied(proxy, scope=Scope.from_entries(["10.0.0.0/8"]))
        )
        await settle()
    assert (result.failure, result.operation) == ("out_of_scope", "proxy_connect")  # type: ignore[attr-defined]
    assert proxy.accepted == 0


def test_extract_title() -> None:
    assert extract_title(b"<html><title>\n a  <b> &lt;c&gt; </title>") == "a <b> <c>"
    assert extract_title(b"<p>no title</p>") is None
    assert extract_title(b"<title>" + b"x" * 500 + b"</title>") == "x" * 200
    assert extract_title("<title>caf\xe9</title>".encode("latin-1"), "latin-1") == "caf\xe9"


# --- the runner --------------------------------------------------------------------------------


class Exploding:
    name, version = "tcp", "0"

    async def observe(self, target: Target, ctx: ProbeContext) -> ProbeResult:
        raise RuntimeError("resolver exploded at 192.0.2.1")


async def test_exception_inside_a_probe_becomes_unknown_failure() -> None:
    measurement = await run_probe(
        Exploding(), Target(service="s", probe="tcp", host=HOST, port=443), context(),
        run_id="r", vantage="v",
    )
    assert measurement.failure == "unknown_failure: RuntimeError: resolver exploded at [scrubbed]"
    assert measurement.failed_operation == "probe"
