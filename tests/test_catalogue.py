"""The built-in catalogue is well-formed data covering the services of the seeds."""

from __future__ import annotations

import ipaddress

import pytest

from blockwatch.probes.catalogue import (
    CatalogueError,
    load_catalogue,
    parse_endpoint,
    service_from_dict,
)

REQUIRED = {"facebook", "instagram", "whatsapp", "kakaotalk", "line", "wechat", "twitter",
            "youtube", "google", "telegram", "signal", "chinadigitaltimes"}


def test_catalogue_covers_the_seed_services() -> None:
    cat = load_catalogue()
    assert set(cat) >= REQUIRED
    assert any(s.category == "vpn" for s in cat.values())
    for s in cat.values():
        assert s.source, f"{s.name} has no source for its facts"
        assert s.domains or s.urls


def test_exclusive_prefixes_are_real_networks() -> None:
    for s in load_catalogue().values():
        if s.exclusive_prefixes:
            assert s.prefixes
            for p in s.prefixes:
                assert ipaddress.ip_network(p).is_global


def test_endpoint_parsing() -> None:
    assert parse_endpoint("a.b:443").port == 443
    ep = parse_endpoint("[2001:db8::1]:853")
    assert ep.host == "2001:db8::1"
    assert parse_endpoint("udp://vpn.example:1194").transport == "udp"
    for bad in ("nohost", "a:b", "a:0", "ftp://a:1"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)


def test_bad_service_definitions() -> None:
    with pytest.raises(CatalogueError, match="exclusive_prefixes needs prefixes"):
        service_from_dict("x", {"domains": ["a.b"], "exclusive_prefixes": True})
    with pytest.raises(CatalogueError, match="asns"):
        service_from_dict("x", {"domains": ["a.b"], "asns": ["AS1"]})
    with pytest.raises(CatalogueError, match="name must be"):
        service_from_dict("a b", {"domains": ["a.b"]})


def test_messaging_apps_have_bundles_with_rules() -> None:
    cat = load_catalogue()
    for name in ("whatsapp", "messenger", "instagram", "kakaotalk", "line", "wechat",
                 "telegram", "signal"):
        app = cat[name].app
        assert app is not None, name
        assert app.parts and app.text and any(p.core for p in app.parts)
        assert set(app.endpoints) <= {*(str(e) for e in cat[name].endpoints), *cat[name].urls}


def test_the_apps_are_measured_as_oonis_experiments_measure_them() -> None:
    """Issue #13 (8): whatsapp 0.11 (e1..e16 on 443 and 5222, registration, web), telegram 0.3
    (six data centres on 80 and 443, web), signal 0.2 (four backend hosts, any one failing),
    fbmessenger (six endpoints, any one failing)."""
    cat = load_catalogue()
    parts = {n: {p.name: (len(p.endpoints), p.blocked_when, p.core) for p in cat[n].app.parts}
             for n in ("whatsapp", "telegram", "signal", "messenger")}  # type: ignore[union-attr]
    assert parts == {
        "whatsapp": {"chat endpoints": (32, "all", True), "registration": (1, "any", False),
                     "web": (1, "any", False)},
        "telegram": {"data centres": (12, "all", True), "web": (1, "any", False)},
        "signal": {"backend": (4, "any", True)},
        "messenger": {"endpoints": (6, "any", True)},
    }
    hosts = {e.host for e in cat["whatsapp"].endpoints}
    assert hosts == {f"e{i}.whatsapp.net" for i in range(1, 17)}


@pytest.mark.parametrize(("app", "says"), [
    ({"parts": []}, "parts must be a non-empty list"),
    ({"parts": [{"name": "x", "endpoints": ["a.b:443"], "blocked_when": "some"}]},
     "blocked_when must be"),
    ({"parts": [{"name": "x", "endpoints": ["a.b:443"], "core": "yes"}]}, "core must be"),
    ({"parts": [{"name": "", "endpoints": ["a.b:443"]}]}, "name must be a non-empty"),
    ({"parts": [{"name": "x", "endpoints": []}]}, "endpoints is empty"),
    ({"parts": [{"name": "x", "endpoints": ["a.b:443"]}, {"name": "x",
                                                         "endpoints": ["a.b:443"]}]},
     "a second part named"),
    ({"parts": [{"name": "x", "endpoints": ["a.b:443"], "rule": "y"}]}, "must be a table of"),
    ({"parts": [{"name": "x", "endpoints": ["https://c.d/"]}]}, "not among its endpoints"),
    ({"parts": [{"name": "x", "endpoints": ["a.b:443"]}], "extra": 1}, "unknown key 'extra'"),
    ({"chat_endpoints": ["a.b:443"], "parts": []}, "without other keys"),
])
def test_app_parts_are_checked(app: dict[str, object], says: str) -> None:
    with pytest.raises(CatalogueError, match=says):
        service_from_dict("x", {"endpoints": ["a.b:443"], "urls": ["https://a.b/"], "app": app})


def test_app_rule_must_name_known_endpoints() -> None:
    with pytest.raises(CatalogueError, match="not among its endpoints"):
        service_from_dict("x", {"endpoints": ["a.b:443"],
                                "app": {"chat_endpoints": ["c.d:443"]}})
    with pytest.raises(CatalogueError, match=r"app\.rule"):
        service_from_dict("x", {"endpoints": ["a.b:443"],
                                "app": {"chat_endpoints": ["a.b:443"], "rule": "vibes"}})
