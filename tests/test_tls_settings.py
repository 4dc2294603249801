"""Per-service TLS settings: a pinned CA trusted alone for a service's handshakes, and the ALPN
offered, from the catalogue's or the config's ``tls`` table, against real loopback TLS servers
(trustme certificates)."""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

import pytest
import trustme
from servers import LoopbackServer, make_pki, silent

from blockwatch.config import ConfigError, parse_config
from blockwatch.probes import failures as F
from blockwatch.probes.catalogue import CatalogueError, service_from_dict
from blockwatch.probes.context import ProbeContext, ProbeResult, Timeouts
from blockwatch.probes.model import Target, TLSObservation, TLSSettings
from blockwatch.probes.scope import Scope
from blockwatch.probes.tls import TLSProbe


def ctx(ca_bundle: str | None, **settings: TLSSettings) -> ProbeContext:
    return ProbeContext(scope=Scope.loopback(), timeouts=Timeouts(tcp=2, tls=2),
                        ca_bundle=ca_bundle, control_sni=None, tls_settings=dict(settings))


def target(port: int, service: str = "pinned") -> Target:
    return Target(service=service, probe="tls", host="127.0.0.1", port=port, sni="example.test")


def handshake(result: ProbeResult) -> TLSObservation:
    return next(o for o in result.observations if isinstance(o, TLSObservation))


def server_context(cert: trustme.LeafCert, alpn: list[str]) -> ssl.SSLContext:
    c = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(c)
    c.set_alpn_protocols(alpn)
    return c


async def test_a_pinned_ca_is_trusted_alone(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)  # pki.ca is in the config's ca_bundle: trusted for everybody
    own = trustme.CA()  # the service's own CA, pinned for it
    pinned = tmp_path / "service-ca.pem"
    own.cert_pem.write_to_path(str(pinned))
    digest = hashlib.sha256(pinned.read_bytes()).hexdigest()
    settings = TLSSettings(ca_file=str(pinned))
    by_own = server_context(own.issue_cert("example.test", "127.0.0.1"), ["http/1.1"])
    by_bundle = pki.server_context(pki.valid)
    async with LoopbackServer(silent, tls=by_own) as srv:
        ok = await TLSProbe().observe(target(srv.port), ctx(pki.ca_bundle, pinned=settings))
        other = await TLSProbe().observe(target(srv.port, "other"),
                                         ctx(pki.ca_bundle, pinned=settings))
    async with LoopbackServer(silent, tls=by_bundle) as srv:
        # a certificate the bundle (and maybe the system) trusts is not the pinned CA's
        wrong = await TLSProbe().observe(target(srv.port), ctx(pki.ca_bundle, pinned=settings))
    assert ok.failure is None and handshake(ok).verified is True
    assert handshake(ok).ca_sha256 == digest
    # another service, without the setting: its own CA is unknown to the bundle
    assert other.failure == F.SSL_UNKNOWN_AUTHORITY and handshake(other).ca_sha256 is None
    assert wrong.failure == F.SSL_UNKNOWN_AUTHORITY
    assert handshake(wrong).ca_sha256 == digest and handshake(wrong).verified is False


@pytest.mark.parametrize(("offered", "expected"), [((), "h2"), (("x-custom",), "x-custom")])
async def test_the_alpn_offered_is_the_services(tmp_path: Path, offered: tuple[str, ...],
                                                expected: str) -> None:
    pki = make_pki(tmp_path)
    srv_ctx = server_context(pki.valid, ["x-custom", "h2"])
    async with LoopbackServer(silent, tls=srv_ctx) as srv:
        result = await TLSProbe().observe(
            target(srv.port), ctx(pki.ca_bundle, pinned=TLSSettings(alpn=offered)))
    assert result.failure is None and handshake(result).alpn == expected


def test_catalogue_and_config_check_the_tls_table(tmp_path: Path) -> None:
    ca = trustme.CA()
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())
    svc = service_from_dict("s", {"domains": ["s.test"], "tls": {"ca_file": "ca.pem",
                                                                 "alpn": ["h2"]}}, tmp_path)
    assert svc.tls == TLSSettings(ca_file=str(tmp_path / "ca.pem"), alpn=("h2",))
    (tmp_path / "junk.pem").write_text("not a certificate")
    for bad, says in [({"ca_file": "junk.pem"}, "not a readable PEM CA bundle"),
                      ({"ca_file": "missing.pem"}, "not a readable PEM CA bundle"),
                      ({"alpn": "h2"}, "alpn must be a list"),
                      ({"pin": "x"}, "unknown key 'pin'")]:
        with pytest.raises(CatalogueError, match=says):
            service_from_dict("s", {"domains": ["s.test"], "tls": bad}, tmp_path)
    # the config's relative ca_file is the config file's neighbour; a bad one names the service
    cfg = tmp_path / "bw.toml"
    text = ('[[services]]\nname = "chat"\ndomains = ["chat.test"]\n'
            'tls = { ca_file = "ca.pem" }\n')
    loaded = parse_config(text, str(cfg)).catalogue()["chat"]
    assert loaded.tls is not None and loaded.tls.ca_file == str(tmp_path / "ca.pem")
    with pytest.raises(ConfigError, match=r"service 'chat': tls\.ca_file"):
        parse_config(text.replace("ca.pem", "junk.pem"), str(cfg)).catalogue()
