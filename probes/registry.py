"""The probe registry: a new probe is one module plus one line here.

Each line is a ``Spec``: what the rest of blockwatch needs to know about a probe without
importing it. Everything that used to be a string-keyed list elsewhere is derived from
``SPECS``: the names ``[probes] probes`` accepts and its default (``SELECTABLE``,
``DEFAULT_SELECTION``), the planner (``planners``: each selection's ``plan`` function, in the
probe's own module), the order of layers a service verdict counts from (``RANK``), the probes a
SOCKS5 control path can carry (``PROXIED``), the probes whose evidence only adds blocking
(``ADDS_ONLY``), and observation types declared in a probe's own module (``observation_type``).
The analysis finds a probe's rules by name (``blockwatch.analysis.<name>``, if that module
exists; see ``blockwatch.analysis.verdicts``).

Probes are imported when a sweep first asks for one, so that a sweep of web targets does not
load the VPN and raw-packet probes (and their libraries) it never uses.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from blockwatch.probes.context import Probe, ProbeContext
    from blockwatch.probes.model import Service, Target
    from blockwatch.probes.targets import PlanContext

    Planner = Callable[[Service, PlanContext], list[Target]]


@dataclass(frozen=True, slots=True)
class Spec:
    """One probe, as the registry declares it.

    ``name``: ``Target.probe``; ``impl``: ``"module:Class"`` of the probe; ``select``: the name
    in ``[probes] probes`` that turns it on (several probes may share one: ``vpn``), and
    the first probe of a selection plans its targets from a service, by ``planner``
    (``"module:function"``; by default ``plan_targets`` in the probe's own module);
    ``default``: selected when the config says nothing;
    ``layer``: the layer its measurements speak for, ``rank`` that layer's place from the bottom
    (a working layer at or above a blocked one makes blocking partial); ``proxied``: it can run
    through a SOCKS5 control path; ``adds_only``: its verdicts count in a service verdict only
    when they say blocking (a probe that may be unable to run, like raw sockets without
    CAP_NET_RAW); ``observation``: ``"module:Class"`` of an observation type the probe declares
    in its own module (the built-in types live in ``probes.model``); ``settings``:
    ``"module:Model"`` of the probe's own config knobs, a pydantic model whose fields all have
    defaults, read from the config's ``[probe.<name>]`` table (``settings_model``);
    ``follow``: ``"module:function"`` making a sweep's follower (``followers``): given the
    sweep's targets and context it returns None or a callable that looks at each finished
    measurement and may return one more target of this probe to run at once (the trace probe
    follows failed TLS/HTTP endpoints: ``probes.trace_follow``).
    """

    name: str
    impl: str
    select: str
    layer: str
    rank: int
    planner: str | None = None
    default: bool = True
    proxied: bool = False
    adds_only: bool = False
    observation: str | None = None
    settings: str | None = None
    follow: str | None = None

SPECS: tuple[Spec, ...] = (
    Spec("dns", "blockwatch.probes.dns:DNSProbe", "dns", "dns", 0),
    Spec("tcp", "blockwatch.probes.tcp:TCPProbe", "tcp", "tcp", 1, proxied=True),
    Spec("tls", "blockwatch.probes.tls:TLSProbe", "tls", "tls", 2, proxied=True),
    Spec("http", "blockwatch.probes.http:HTTPProbe", "http", "http", 3, proxied=True),
    Spec("openvpn", "blockwatch.probes.openvpn:OpenVPNProbe", "vpn", "vpn", 4,
         planner="blockwatch.probes.vpnbase:plan_targets"),
    Spec("ikev2", "blockwatch.probes.ikev2:IKEv2Probe", "vpn", "vpn", 4),
    Spec("wireguard", "blockwatch.probes.wireguard:WireGuardProbe", "vpn", "vpn", 4),
    Spec("pptp", "blockwatch.probes.pptp:PPTPProbe", "vpn", "vpn", 4),
    Spec("l2tp", "blockwatch.probes.l2tp:L2TPProbe", "vpn", "vpn", 4),
    Spec("tor", "blockwatch.probes.tor:TorProbe", "vpn", "vpn", 4),
    Spec("trace", "blockwatch.probes.trace:TraceProbe", "trace", "raw", 4, default=False,
         adds_only=True, settings="blockwatch.probes.trace_follow:TraceSettings",
         follow="blockwatch.probes.trace_follow:follower"),
    Spec("stun", "blockwatch.probes.stun:STUNProbe", "stun", "stun", 4, default=False,
         observation="blockwatch.probes.stun:STUNObservation",
         settings="blockwatch.probes.stun:STUNSettings"),
    Spec("quic", "blockwatch.probes.quic:QUICProbe", "quic", "quic", 2, adds_only=True,
         observation="blockwatch.probes.quic:QUICObservation",
         settings="blockwatch.probes.quic:QUICSettings"),
    Spec("ech", "blockwatch.probes.ech:ECHProbe", "ech", "ech", 2, adds_only=True,
         observation="blockwatch.probes.ech:ECHObservation",
         settings="blockwatch.probes.ech:ECHSettings"),
)

BY_NAME: dict[str, Spec] = {s.name: s for s in SPECS}
SELECTABLE: tuple[str, ...] = tuple(dict.fromkeys(s.select for s in SPECS))
DEFAULT_SELECTION: tuple[str, ...] = tuple(dict.fromkeys(s.select for s in SPECS if s.default))
RANK: dict[str, int] = {**{s.layer: s.rank for s in SPECS}, **{s.name: s.rank for s in SPECS}}
# selection -> its planner: the first probe's of the selection
PLANNERS: dict[str, str] = {}
for _s in SPECS:
    PLANNERS.setdefault(_s.select, _s.planner or f"{_s.impl.partition(':')[0]}:plan_targets")
PROXIED: frozenset[str] = frozenset(s.name for s in SPECS if s.proxied)
ADDS_ONLY: frozenset[str] = frozenset(s.name for s in SPECS if s.adds_only)
TOP_RANK = max(s.rank for s in SPECS)


def load(path: str) -> Any:
    """The object a ``"module:name"`` path names."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def planners(selected: Iterable[str]) -> list[Planner]:
    """The planners of the selected names, in registry order (so targets come out dns, tcp,
    tls, http, vpn, trace, ...)."""
    wanted = set(selected)
    return [load(PLANNERS[name]) for name in SELECTABLE if name in wanted]


def followers(targets: Sequence[Target], ctx: ProbeContext) -> list[Any]:
    """The sweep's followers (``Spec.follow``) that have something to follow."""
    made = (load(s.follow)(targets, ctx) for s in SPECS if s.follow)
    return [f for f in made if f is not None]


def settings_model(name: str) -> type[Any] | None:
    """The pydantic model of probe ``name``'s ``[probe.<name>]`` table, or None (no knobs)."""
    spec = BY_NAME.get(name)
    if spec is None or spec.settings is None:
        return None
    found: type[Any] = load(spec.settings)
    return found


@functools.cache
def observation_type(layer: str) -> type[Any] | None:
    """The observation class a probe declares in its own module for ``layer``, or None."""
    for s in SPECS:
        if s.observation and s.layer == layer:
            found: type[Any] = load(s.observation)
            return found
    return None


class _Probes(Mapping[str, "Probe"]):
    """Probe instances by name, each made on first use."""

    def __init__(self) -> None:
        self._made: dict[str, Probe] = {}

    def __getitem__(self, name: str) -> Probe:
        found = self._made.get(name)
        if found is None:
            found = self._made[name] = load(BY_NAME[name].impl)()
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(BY_NAME)

    def __len__(self) -> int:
        return len(BY_NAME)


PROBES: Mapping[str, Probe] = _Probes()
