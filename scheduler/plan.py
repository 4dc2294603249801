"""Planning a sweep: which targets each service yields for each selected probe. Pure, no I/O.

Each probe plans its own targets (``plan_targets`` in its module, named by its registry line,
``probes.registry``); this asks the selected ones in registry order and removes duplicates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from blockwatch.probes.dns import SILENT as SILENT
from blockwatch.probes.model import Service, Target
from blockwatch.probes.registry import planners
from blockwatch.probes.targets import PlanContext
from blockwatch.probes.vpnbase import vpn_target as vpn_target


def plan_service(service: Service, *, probes: Iterable[str], resolvers: Sequence[str],
                 controls: Sequence[str] = (), silent: Sequence[str] = (),
                 settings: Mapping[str, Any] | None = None) -> list[Target]:
    """Targets for one service, deduplicated, in a stable order (the registry's: dns, tcp,
    tls, http, vpn, trace, ...). ``silent``: addresses where no DNS server runs; each name is
    asked there once, over UDP, and any answer is forged on the path."""
    pc = PlanContext(tuple(resolvers), tuple(controls), tuple(silent), settings or {})
    out = [t for plan in planners(list(probes)) for t in plan(service, pc)]
    return list(dict.fromkeys(out))


def plan_sweep(services: Sequence[Service], *, probes: Iterable[str], resolvers: Sequence[str],
               controls: Sequence[str] = (), silent: Sequence[str] = (),
               settings: Mapping[str, Any] | None = None) -> list[Target]:
    """Every service's targets, each carrying its service's category; ``settings``: each
    probe's own knobs by name (``Config.probe_settings``)."""
    chosen = planners(list(probes))
    pc = PlanContext(tuple(resolvers), tuple(controls), tuple(silent), settings or {})
    return [replace(t, category=s.category) for s in services
            for t in dict.fromkeys(t for plan in chosen for t in plan(s, pc))]
