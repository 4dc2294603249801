"""The address scope allow-list: probes send packets only to addresses it admits.

Entries are CIDR prefixes (``127.0.0.0/8``, ``::1/128``) or the keywords ``public`` (globally
routable unicast addresses) and ``system-resolvers`` (the nameservers of /etc/resolv.conf, which
on a home network are often private addresses). The check happens before any socket is opened.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from blockwatch.probes.errors import OutOfScopeError as OutOfScopeError  # its home before errors.py


@functools.lru_cache(maxsize=65536)
def is_ip(text: str) -> bool:
    """True if ``text`` is an IPv4 or IPv6 address literal (a ``%zone`` suffix allowed).
    Cached: a sweep asks it of the same names and addresses again and again."""
    try:
        ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return False
    return True

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

KEYWORDS = ("public", "system-resolvers")


def parse_entry(entry: str) -> IPNetwork | str:
    """Parse one scope entry; raise ValueError with a readable message if it is wrong."""
    if entry in KEYWORDS:
        return entry
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise ValueError(
            f"{entry!r} is neither a CIDR prefix nor one of {', '.join(KEYWORDS)}"
        ) from None


def system_resolver_addresses() -> tuple[str, ...]:
    """Nameserver addresses from /etc/resolv.conf (read only, no packets)."""
    out: list[str] = []
    try:
        with open("/etc/resolv.conf", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    out.append(parts[1].split("%")[0])
    except OSError:
        pass
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Scope:
    networks: tuple[IPNetwork, ...] = ()
    public: bool = False
    resolvers: tuple[str, ...] = ()
    # answers already given, by address (a sweep checks the same addresses many times)
    _seen: dict[str, bool] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> Scope:
        nets: list[IPNetwork] = []
        public = False
        resolvers: tuple[str, ...] = ()
        for entry in entries:
            parsed = parse_entry(entry)
            if parsed == "public":
                public = True
            elif parsed == "system-resolvers":
                resolvers = system_resolver_addresses()
            else:
                assert not isinstance(parsed, str)
                nets.append(parsed)
        return cls(tuple(nets), public, resolvers)

    @classmethod
    def loopback(cls) -> Scope:
        return cls.from_entries(["127.0.0.0/8", "::1/128"])

    def allows(self, address: str) -> bool:
        found = self._seen.get(address)
        if found is None:
            found = self._allows(address)
            if len(self._seen) < 65536:
                self._seen[address] = found
        return found

    def _allows(self, address: str) -> bool:
        try:
            ip: IPAddress = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if self.public and ip.is_global:
            return True
        if str(ip) in self.resolvers:
            return True
        return any(ip.version == net.version and ip in net for net in self.networks)

    def check(self, address: str) -> None:
        """Raise ``OutOfScopeError`` unless the scope admits ``address``."""
        if not self.allows(address):
            raise OutOfScopeError(address)
