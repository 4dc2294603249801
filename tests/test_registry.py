"""The probe registry is the one place a probe is declared: every line must load, and what the
rest of blockwatch used to list by hand (config names, planners, verdict dispatch, layer ranks,
control-path probes, observation types) must come from it."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from pydantic import ValidationError

from blockwatch import config
from blockwatch.analysis import service, verdicts
from blockwatch.probes import registry
from blockwatch.probes.model import Service, observation_from_dict
from blockwatch.probes.targets import PlanContext
from blockwatch.scheduler import sweep

# modules of the analysis that are not a probe's rules: no probe may take one of these names
ANALYSIS_INFRASTRUCTURE = {"rules", "evidence", "verdicts", "fingerprints", "failure", "service",
                           "vpn"}


@pytest.mark.parametrize("spec", registry.SPECS, ids=lambda s: s.name)
def test_every_line_loads_and_names_its_probe(spec: registry.Spec) -> None:
    probe = registry.load(spec.impl)()
    assert probe.name == spec.name and probe.version
    assert registry.PROBES[spec.name].name == spec.name
    assert callable(registry.load(registry.PLANNERS[spec.select]))
    if spec.settings:  # its knobs: a model whose defaults stand alone
        assert registry.settings_model(spec.name) is registry.load(spec.settings)
        registry.load(spec.settings)()
    if spec.observation:
        cls = registry.load(spec.observation)
        assert registry.observation_type(spec.layer) is cls
        assert cls.__dataclass_fields__["layer"].default == spec.layer


def test_names_are_unique_and_no_probe_shadows_the_analysis() -> None:
    names = [s.name for s in registry.SPECS]
    assert len(names) == len(set(names))
    assert not set(names) & ANALYSIS_INFRASTRUCTURE


def test_config_names_and_defaults_come_from_the_registry() -> None:
    assert config.PROBE_NAMES == registry.DEFAULT_SELECTION
    assert "trace" not in config.PROBE_NAMES and "stun" not in config.PROBE_NAMES  # opt-in
    for name in registry.SELECTABLE:
        assert config.Probes(probes=[name]).probes == [name]
    with pytest.raises(ValidationError, match="unknown probe 'smtp'"):
        config.Probes(probes=["smtp"])


def test_control_paths_layers_and_adds_only_come_from_the_registry() -> None:
    assert sweep.CONTROL_PROBES == registry.PROXIED == {"tcp", "tls", "http"}
    assert [service.rank(x) for x in ("dns", "tcp", "tls", "http", "vpn", "openvpn", "stun")] \
        == [0, 1, 2, 3, 4, 4, 4]
    assert service.rank("no such layer") == registry.TOP_RANK
    assert registry.ADDS_ONLY == {"trace", "quic", "ech"}
    assert service.rank("quic") == 2  # a QUIC block leaves TLS and HTTP working: partial


def test_the_analysis_finds_each_probes_rules_by_its_name() -> None:
    have = {m.name for m in pkgutil.iter_modules(importlib.import_module(
        "blockwatch.analysis").__path__)}
    expected = {s.name for s in registry.SPECS if s.name in have}
    assert set(verdicts.PROBE_RULES) == expected == {"dns", "http", "trace", "stun", "quic", "ech"}
    for probe, module in verdicts.PROBE_RULES.items():
        assert verdicts.PROBE_STAGES[probe] and module.RULE_LISTS
        for rules in module.RULE_LISTS.values():
            assert all(r.id in verdicts.RULES for r in rules), probe


def test_planners_run_in_registry_order() -> None:
    svc = Service(name="s", title="S", category="x", domains=("s.test",),
                  urls=("https://s.test/",))
    pc = PlanContext(resolvers=("system",))
    got = [t.probe for p in registry.planners(["http", "dns", "tls"]) for t in p(svc, pc)]
    assert got == ["dns", "tls", "http"]


def test_an_unknown_layer_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown layer 'smtp'"):
        observation_from_dict({"layer": "smtp", "t0": 0, "t": 0})
