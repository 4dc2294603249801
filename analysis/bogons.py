"""The one bogon decision: which DNS answers are a sinkhole's addresses.

An address in IANA's special-purpose registries (``is_bogon``) can never be a public server's,
unless the user's scope names its network explicitly (``RunInputs.local_networks``: a lab, a
LAN's own servers). The DNS probe records the addresses it was given and nothing more; this
module turns "every address of the first answer is a bogon outside the local networks" into the
failure ``dns_bogon_error`` of that query, and of the measurement as the probe would fail it
(the A query bogon, the AAAA query failed or without addresses), before any rule reads them
(``Judge`` applies ``decided`` to every measurement, tested and control). Measurements stored
before this decision moved here (DNS probe version 2, OONI imports) already carry the failure,
decided then against the same scope; they read the same.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
from collections.abc import Sequence

from blockwatch.probes import failures as F
from blockwatch.probes.model import DNSObservation, Measurement

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_BOGONS = tuple(
    ipaddress.ip_network(n)
    for n in (
        # IANA IPv4 special-purpose registry: not reachable on the public internet
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        # IANA IPv6 special-purpose registry, plus multicast and deprecated site-local
        "::/128", "::1/128", "64:ff9b:1::/48", "100::/64", "2001:2::/48", "2001:10::/28",
        "2001:db8::/32", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
    )
)


@functools.lru_cache(maxsize=65536)
def is_bogon(ip: str) -> bool:
    """True if ``ip`` can never be a public server's address (private, loopback, reserved, ...).

    An explicit list rather than ``ipaddress``'s ``is_private``/``is_global``, whose meaning has
    changed between Python releases: a stored verdict must not depend on the interpreter.
    Raises ValueError if ``ip`` is not an IP address.
    """
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in _BOGONS)


def bogon(address: str) -> bool:
    """``is_bogon`` that says False for what is not an IP address."""
    try:
        return is_bogon(address)
    except ValueError:
        return False


def local(address: str, networks: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == n.version and ip in n for n in networks)


def sinkhole(addresses: Sequence[str], networks: Sequence[Network]) -> bool:
    """Every address a bogon outside the local networks (and at least one address)."""
    return bool(addresses) and all(bogon(a) and not local(a, networks) for a in addresses)


def decided(m: Measurement, networks: Sequence[Network]) -> Measurement:
    """``m`` with the bogon decision applied to its DNS queries (and, as the DNS probe fails a
    measurement, to the measurement); other measurements unchanged."""
    changed = False
    out = []
    for o in m.observations:
        if (isinstance(o, DNSObservation) and o.failure is None
                and sinkhole(o.addresses, networks)):
            o = dataclasses.replace(o, failure=F.DNS_BOGON)
            changed = True
        out.append(o)
    if not changed:
        return m
    observations = tuple(out)
    failure, operation = m.failure, m.failed_operation
    if m.probe == "dns" and failure is None:
        a = [o for o in observations if isinstance(o, DNSObservation) and o.qtype == "A"]
        aaaa = [o for o in observations if isinstance(o, DNSObservation) and o.qtype == "AAAA"]
        if a and a[-1].failure is not None and (
                not aaaa or aaaa[-1].failure is not None or not aaaa[-1].addresses):
            failure, operation = a[-1].failure, "resolve"
    return dataclasses.replace(m, observations=observations, failure=failure,
                               failed_operation=operation)
