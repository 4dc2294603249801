"""The probe registry: a new probe is one module plus one line here.

Probes are imported when a sweep first asks for one, so that a sweep of web targets does not
load the VPN and raw-packet probes (and their libraries) it never uses.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from blockwatch.probes.context import Probe

# probe name -> (module, class)
REGISTRY: dict[str, tuple[str, str]] = {
    "dns": ("blockwatch.probes.dns", "DNSProbe"),
    "tcp": ("blockwatch.probes.tcp", "TCPProbe"),
    "tls": ("blockwatch.probes.tls", "TLSProbe"),
    "http": ("blockwatch.probes.http", "HTTPProbe"),
    "openvpn": ("blockwatch.probes.openvpn", "OpenVPNProbe"),
    "ikev2": ("blockwatch.probes.ikev2", "IKEv2Probe"),
    "wireguard": ("blockwatch.probes.wireguard", "WireGuardProbe"),
    "pptp": ("blockwatch.probes.pptp", "PPTPProbe"),
    "l2tp": ("blockwatch.probes.l2tp", "L2TPProbe"),
    "tor": ("blockwatch.probes.tor", "TorProbe"),
    "trace": ("blockwatch.probes.trace", "TraceProbe"),
}


class _Probes(Mapping[str, Probe]):
    """Probe instances by name, each made on first use."""

    def __init__(self) -> None:
        self._made: dict[str, Probe] = {}

    def __getitem__(self, name: str) -> Probe:
        found = self._made.get(name)
        if found is None:
            module, cls = REGISTRY[name]
            found = self._made[name] = getattr(importlib.import_module(module), cls)()
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)


PROBES: Mapping[str, Probe] = _Probes()
