from __future__ import annotations

from blockwatch.probes.catalogue import load_catalogue
from blockwatch.scheduler.plan import plan_service


def test_plan_yields_each_probe_once_per_target() -> None:
    wa = load_catalogue()["whatsapp"]
    targets = plan_service(wa, probes=["dns", "tcp", "tls", "http"], resolvers=["system"],
                           controls=["https://1.1.1.1/dns-query"])
    keys = [(t.probe, t.key) for t in targets]
    assert len(keys) == len(set(keys))
    assert ("tcp", "e1.whatsapp.net:5222") in keys
    assert ("tls", "e16.whatsapp.net:443") in keys
    assert ("tls", "e1.whatsapp.net:5222") not in keys
    assert ("http", "https://web.whatsapp.com/") in keys
    assert ("dns", "whatsapp.com@https://1.1.1.1/dns-query") in keys
    assert {t.probe for t in targets} == {"dns", "tcp", "tls", "http"}


def test_plan_respects_probe_selection() -> None:
    tg = load_catalogue()["telegram"]
    targets = plan_service(tg, probes=["tcp"], resolvers=["system"])
    assert {t.probe for t in targets} == {"tcp"}
    assert not any(t.probe == "tls" for t in targets)


def test_vpn_endpoints_become_protocol_targets() -> None:
    from blockwatch.probes.catalogue import service_from_dict

    svc = service_from_dict("myvpn", {"vpn": [
        {"protocol": "openvpn", "host": "vpn.example", "port": 1194, "transport": "udp",
         "options": {"tls_auth": "yes"}, "key_file": "/etc/ta.key"},
        {"protocol": "shadowsocks", "host": "ss.example", "port": 8388},
        {"protocol": "ikev2", "host": "ike.example"},
    ]})
    targets = plan_service(svc, probes=["dns", "vpn"], resolvers=["system"])
    by_probe = {t.probe: t for t in targets if t.probe != "dns"}
    assert by_probe["openvpn"].options == (("tls_auth", "yes"),)
    assert by_probe["openvpn"].key == "udp://vpn.example:1194"
    assert by_probe["tcp"].options == (("silent_protocol", "shadowsocks"),)
    assert by_probe["ikev2"].port == 500 and by_probe["ikev2"].transport == "udp"
    assert "/etc/ta.key" not in str([t.to_dict() for t in targets])
    assert not plan_service(svc, probes=["dns"], resolvers=["system"])


def test_bad_vpn_entries() -> None:
    import pytest

    from blockwatch.probes.catalogue import CatalogueError, service_from_dict

    for entry, message in [({"protocol": "ipsec", "host": "a"}, "protocol must be"),
                           ({"protocol": "wireguard", "host": "a", "transport": "tcp"},
                            "not possible"),
                           ({"protocol": "openvpn"}, "host is required"),
                           ({"protocol": "openvpn", "host": "a", "port": 0}, "port must"),
                           ({"protocol": "shadowsocks", "host": "a", "key_file": "k"},
                            "TCP reachability only")]:
        with pytest.raises(CatalogueError, match=message):
            service_from_dict("v", {"vpn": [entry]})


def test_silent_addresses_get_one_marked_query_per_name() -> None:
    tg = load_catalogue()["telegram"]
    targets = plan_service(tg, probes=["dns"], resolvers=["system"],
                           silent=["192.0.2.99", "2001:db8::99"])
    silent = [t for t in targets if ("silent", "yes") in t.options]
    names = {t.host for t in targets if t.resolver == "system"}
    assert {t.host for t in silent} == names
    assert {t.resolver for t in silent} == {"udp://192.0.2.99", "udp://[2001:db8::99]"}
    assert len(silent) == 2 * len(names)


def test_trace_targets_are_opt_in_and_name_their_payload() -> None:
    wa = load_catalogue()["whatsapp"]
    assert not any(t.probe == "trace" for t in plan_service(
        wa, probes=["dns", "tcp", "tls", "http"], resolvers=["system"]))
    traces = [t for t in plan_service(wa, probes=["trace"], resolvers=["system"])]
    assert traces and all(t.probe == "trace" for t in traces)
    tls = next(t for t in traces if t.port == 443)
    assert (tls.sni, tls.options) == (tls.host, (("mode", "tls"),))
    assert not any(t.port == 5222 for t in traces)  # neither TLS nor HTTP: nothing to send
