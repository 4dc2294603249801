from __future__ import annotations

from probes.catalogue import load_catalogue
from scheduler.plan import plan_service


def test_plan_yields_each_probe_once_per_target() -> None:
    wa = load_catalogue()["whatsapp"]
    targets = plan_service(wa, probes=["dns", "tcp", "tls", "http"], resolvers=["system"],
                           controls=["https://1.1.1.1/dns-query"])
    keys = [(t.probe, t.key) for t in targets]
    assert len(keys) == len(set(keys))
    assert ("tcp", "g.whatsapp.net:5222") in keys
    assert ("tls", "g.whatsapp.net:443") in keys
    assert ("tls", "g.whatsapp.net:5222") not in keys
    assert ("http", "https://web.whatsapp.com/") in keys
    assert ("dns", "whatsapp.com@https://1.1.1.1/dns-query") in keys
    assert {t.probe for t in targets} == {"dns", "tcp", "tls", "http"}


def test_plan_respects_probe_selection() -> None:
    tg = load_catalogue()["telegram"]
    targets = plan_service(tg, probes=["tcp"], resolvers=["system"])
    assert {t.probe for t in targets} == {"tcp"}
    assert not any(t.probe == "tls" for t in targets)
