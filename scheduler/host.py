"""What a run records of the machine that measured: OONI's annotations and its resolver.

``host_facts`` is read when a sweep starts (``scheduler.sweep``: a daemon's laptop moves between
networks) and stored in the run's summary (``summary["host"]``), so an export made later, or on
another machine, says where the measurements were made:

- ``architecture``: the CPU as Go names it (OONI's clients annotate ``runtime.GOARCH``: amd64,
  arm64, arm, 386, ...), from ``platform.machine()``; "unknown" for a machine not in ``GOARCH``;
- ``platform``: OONI's names (``linux``, ``macos``, ``windows``, ``android``, ``freebsd``,
  ``openbsd``), else "unknown" (probe-cli's ``platform.Name``);
- ``resolver_ip``: the address the sweep's first resolver (``[dns] resolvers``) sends its queries
  to: the configured address, or for ``system`` the first ``nameserver`` of /etc/resolv.conf;
  None for a DoH resolver named by host, or when none can be read. It is the address blockwatch
  was told to use (the config, resolv.conf), found without sending anything; nothing about the
  volunteer's own address is looked up (a resolver run on the volunteer's own public address
  would be recorded as such: configure it by a private address to keep it out).

Reads /etc/resolv.conf (bounded) and the platform module; nothing is sent.
"""

from __future__ import annotations

import ipaddress
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blockwatch.probes.resolvers import parse_resolver

# platform.machine() -> Go's GOARCH (what OONI's clients write in the annotation)
GOARCH = {
    "x86_64": "amd64", "amd64": "amd64", "x64": "amd64",
    "aarch64": "arm64", "arm64": "arm64", "armv8l": "arm",
    "armv7l": "arm", "armv7": "arm", "armv6l": "arm", "armv5tel": "arm", "arm": "arm",
    "i386": "386", "i486": "386", "i586": "386", "i686": "386", "x86": "386",
    "riscv64": "riscv64", "ppc64le": "ppc64le", "ppc64": "ppc64", "s390x": "s390x",
    "mips": "mips", "mipsel": "mipsle", "mips64": "mips64", "loongarch64": "loong64",
}
PLATFORMS = {"linux": "linux", "darwin": "macos", "windows": "windows", "android": "android",
             "freebsd": "freebsd", "openbsd": "openbsd", "ios": "ios"}
RESOLV_CONF = Path("/etc/resolv.conf")
_MAX_READ = 65536


def architecture(machine: str | None = None) -> str:
    """Go's name of the CPU architecture ("unknown" when Python cannot tell, or Go has none)."""
    name = (platform.machine() if machine is None else machine).strip().lower()
    return GOARCH.get(name, "unknown")


def platform_name(system: str | None = None) -> str:
    """OONI's platform name of the operating system."""
    if system is None:
        system = "android" if hasattr(sys, "getandroidapilevel") else platform.system()
    return PLATFORMS.get(system.strip().lower(), "unknown")


def system_resolver(path: Path = RESOLV_CONF) -> str | None:
    """The first ``nameserver`` address of resolv.conf (a zone index dropped), else None."""
    try:
        with path.open("rb") as fh:
            text = fh.read(_MAX_READ).decode("utf-8", "replace")
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                return str(ipaddress.ip_address(parts[1].partition("%")[0]))
            except ValueError:
                continue
    return None


def resolver_ip(resolvers: Sequence[str], resolv_conf: Path = RESOLV_CONF) -> str | None:
    """The address the first configured resolver's queries go to (see the module's text)."""
    if not resolvers:
        return None
    try:
        spec = parse_resolver(resolvers[0])
    except ValueError:
        return None
    if spec.is_system:
        return system_resolver(resolv_conf)
    try:
        return str(ipaddress.ip_address(spec.address))
    except ValueError:  # a DoH resolver named by its host: not looked up for this
        return None


def host_facts(resolvers: Sequence[str] = ("system",)) -> dict[str, Any]:
    """What the run records of this machine (``summary["host"]``)."""
    return {"architecture": architecture(), "platform": platform_name(),
            "resolver_ip": resolver_ip(resolvers)}
