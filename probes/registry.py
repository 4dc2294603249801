"""The probe registry: a new probe is one module plus one line here."""

from __future__ import annotations

from probes.context import Probe
from probes.dns import DNSProbe
from probes.http import HTTPProbe
from probes.ikev2 import IKEv2Probe
from probes.l2tp import L2TPProbe
from probes.openvpn import OpenVPNProbe
from probes.pptp import PPTPProbe
from probes.tcp import TCPProbe
from probes.tls import TLSProbe
from probes.tor import TorProbe
from probes.trace import TraceProbe
from probes.wireguard import WireGuardProbe

PROBES: dict[str, Probe] = {
    "dns": DNSProbe(),
    "tcp": TCPProbe(),
    "tls": TLSProbe(),
    "http": HTTPProbe(),
    "openvpn": OpenVPNProbe(),
    "ikev2": IKEv2Probe(),
    "wireguard": WireGuardProbe(),
    "pptp": PPTPProbe(),
    "l2tp": L2TPProbe(),
    "tor": TorProbe(),
    "trace": TraceProbe(),
}
