"""The censor: turns a scenario into the censor namespace's configuration and applies it.

Four real mechanisms, all inside the censor namespace and all replaced as a whole on every
switch, so a scenario change never leaves an old rule behind:

* the ISP resolver (dnsmasq) answers NXDOMAIN, a bogon, a fixed lab poison, or a known forged
  address of a real censor (``KNOWN_FORGED``, in the shipped DNS fingerprints) for blocked names;
* an nftables table ``bwcensor`` drops or resets TCP by address, drops UDP ports, drops a share
  of packets (``numgen``) and redirects a service's HTTP(S) to the censor's block-page proxy
  (the lab's own 451 page, or on port 8081 a copy of Iran's national block page);
* iptables chains ``bw-fwd``/``bw-in`` reset TLS handshakes whose ClientHello names a blocked
  host (``string`` match on the length-prefixed SNI) and queue DNS queries to the injector;
* the injector (``blockwatch.lab.inject``) reads the names to inject from a JSON file;
* the delay line (``blockwatch.lab.delay``) holds a service's packets ``delay_ms`` each way.

Only traffic arriving from the censored client (``down0``) or going back to it is touched.

One method is not the censor's: ``server_down`` is an outage, applied in the *server* namespace
(nftables table ``bwserver``, also replaced as a whole on every switch and gone with the
namespace at ``lab down``): the service's addresses answer everybody, the control client too,
with ICMP host unreachable, as the last router before a dead host does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from blockwatch.lab.scenario import Scenario
from blockwatch.lab.services import NATIONAL_PORT, Catalogue
from blockwatch.lab.topology import CENSOR_DOWN, PUBLIC_RESOLVER, SINKHOLE, run

BOGON = "10.10.34.35"  # private, outside the lab's scope: the probes see it as a bogon
# a public address the Great Firewall's injector answered with (probes/data/fingerprints/dns.json,
# bw.dns.cn_gfw_8.7.198.45): outside the lab's scope, so no probe ever sends it a packet
KNOWN_FORGED = "8.7.198.45"
INJECT_QUEUE = 5
DELAY_QUEUE = 6


def dnsmasq_isp_conf(scenario: Scenario, cat: Catalogue) -> str:
    lines = ["no-resolv", "no-hosts", "bind-interfaces", f"listen-address={CENSOR_DOWN}",
             f"server={PUBLIC_RESOLVER}", "cache-size=0", "user=root", "group=root"]
    for service in scenario.services_with("dns_nxdomain"):
        # an empty server= makes the names "local": nothing to answer with, so NXDOMAIN
        lines += [f"server=/{h}/" for h in cat.hosts_of(service)]
    for method, answer in (("dns_bogon", BOGON), ("dns_poison", SINKHOLE),
                           ("dns_poison_known", KNOWN_FORGED)):
        for service in scenario.services_with(method):
            lines += [f"address=/{h}/{answer}" for h in cat.hosts_of(service)]
    return "\n".join(lines) + "\n"


def _set(name: str, addresses: Iterable[str]) -> str:
    elems = sorted(set(addresses))
    body = f" elements = {{ {', '.join(elems)} }};" if elems else ""
    return f"  set {name} {{ type ipv4_addr;{body} }}\n"


def nft_ruleset(scenario: Scenario, cat: Catalogue) -> str:
    def addrs(method: str) -> list[str]:
        return [a for s in scenario.services_with(method) for a in cat.addresses_of(s)]

    loss = int(scenario.option("loss_percent"))
    glob = int(scenario.option("global_loss_percent"))
    ports = ", ".join(str(p) for p in scenario.option("udp_ports"))
    sets = "".join(_set(n, addrs(m)) for n, m in (
        ("syn_drop", "tcp_syn_drop"), ("rst_syn", "tcp_rst_syn"), ("rst_data", "tcp_rst_data"),
        ("udp_drop", "udp_drop"), ("loss", "packet_loss"), ("blockpage", "http_blockpage"),
        ("blockpage_national", "http_blockpage_national")))
    forward = [
        'iifname "down0" ip daddr @syn_drop tcp flags & (syn|ack) == syn drop',
        'iifname "down0" ip daddr @rst_syn tcp flags & (syn|ack) == syn reject with tcp reset',
        'iifname "down0" ip daddr @rst_data ct state established tcp flags & psh == psh '
        'reject with tcp reset',
        f'iifname "down0" ip daddr @udp_drop udp dport {{ {ports} }} drop' if ports else "",
        f'iifname "down0" ip daddr @loss numgen random mod 100 < {loss} drop' if loss else "",
        f'oifname "down0" ip saddr @loss numgen random mod 100 < {loss} drop' if loss else "",
    ]
    # global loss hits everything the censored client sends (to the servers and to the ISP
    # resolver) and every forwarded packet back; what the censor itself sends (its resolver's
    # answers, forged answers, resets) is not dropped, so a lost packet never hides a method
    everywhere = [f'iifname "down0" numgen random mod 100 < {glob} drop',
                  f'oifname "down0" numgen random mod 100 < {glob} drop'] if glob else []
    rules = "".join(f"    {r}\n" for r in [*everywhere, *forward] if r)
    inp = "".join(f"    {r}\n" for r in everywhere[:1])
    return f"""table inet bwcensor
delete table inet bwcensor
table inet bwcensor {{
{sets}  chain forward_filter {{
    type filter hook forward priority 0; policy accept;
{rules}  }}
  chain input_filter {{
    type filter hook input priority 0; policy accept;
{inp}  }}
  chain prerouting_nat {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "down0" ip daddr @blockpage tcp dport 80 redirect to :8080
    iifname "down0" ip daddr @blockpage tcp dport 443 redirect to :8443
    iifname "down0" ip daddr @blockpage_national tcp dport 80 redirect to :{NATIONAL_PORT}
  }}
}}
"""


def server_ruleset(scenario: Scenario, cat: Catalogue) -> str:
    """The server namespace's outages: every packet to a ``server_down`` service's addresses,
    from either client, is answered with ICMP host unreachable (a dead host behind a router)."""
    down = _set("down", [a for s in scenario.services_with("server_down")
                         for a in cat.addresses_of(s)])
    return f"""table inet bwserver
delete table inet bwserver
table inet bwserver {{
{down}  chain input_filter {{
    type filter hook input priority 0; policy accept;
    ip daddr @down reject with icmpx type host-unreachable
  }}
}}
"""


def apply_server(namespace: str, scenario: Scenario, cat: Catalogue) -> None:
    """Put the scenario's outages in place in the server namespace (replacing the old ones)."""
    run(["ip", "netns", "exec", namespace, "nft", "-f", "-"], stdin=server_ruleset(scenario, cat))


def _sni_match(host: str) -> list[str]:
    # the SNI extension carries a 2-byte length before the name: matching it too makes the rule
    # hit this exact name only (no "x.com" inside "xx.com")
    n = len(host)
    return ["-m", "string", "--algo", "bm", "--hex-string", f"|{n >> 8:02x}{n & 0xFF:02x}|{host}"]


def iptables_rules(scenario: Scenario, cat: Catalogue) -> list[list[str]]:
    """Rules for the bw-fwd and bw-in chains (flushed first)."""
    rules: list[list[str]] = []
    for service in scenario.services_with("tls_sni_rst"):
        for h in cat.hosts_of(service):
            rules.append(["-A", "bw-fwd", "-i", "down0", "-p", "tcp", *_sni_match(h),
                          "-j", "REJECT", "--reject-with", "tcp-reset"])
    delayed = ["-j", "NFQUEUE", "--queue-num", str(DELAY_QUEUE), "--queue-bypass"]
    for service in scenario.services_with("delay"):
        for a in cat.addresses_of(service):
            rules.append(["-A", "bw-fwd", "-i", "down0", "-d", a, *delayed])
            rules.append(["-A", "bw-fwd", "-o", "down0", "-s", a, *delayed])
    if scenario.services_with("dns_injection"):
        queue = ["-j", "NFQUEUE", "--queue-num", str(INJECT_QUEUE), "--queue-bypass"]
        rules.append(["-A", "bw-fwd", "-i", "down0", "-p", "udp", "--dport", "53", *queue])
        rules.append(["-A", "bw-in", "-i", "down0", "-p", "udp", "--dport", "53", *queue])
    return rules


def injected_names(scenario: Scenario, cat: Catalogue) -> dict[str, object]:
    names = [h for s in scenario.services_with("dns_injection") for h in cat.hosts_of(s)]
    return {"answer": SINKHOLE, "names": sorted(set(names))}


def setup_iptables(namespace: str) -> None:
    """Create our two chains and jump to them once (idempotent)."""
    for chain, hook in (("bw-fwd", "FORWARD"), ("bw-in", "INPUT")):
        ipt = ["ip", "netns", "exec", namespace, "iptables", "-w"]
        if run([*ipt, "-L", chain, "-n"], check=False).returncode != 0:
            run([*ipt, "-N", chain])
        if run([*ipt, "-C", hook, "-j", chain], check=False).returncode != 0:
            run([*ipt, "-A", hook, "-j", chain])


def apply(namespace: str, scenario: Scenario, cat: Catalogue, directory: Path) -> None:
    """Put the scenario's nftables, iptables and injector config in place (the ISP resolver
    is restarted by the caller, which owns processes)."""
    run(["ip", "netns", "exec", namespace, "nft", "-f", "-"], stdin=nft_ruleset(scenario, cat))
    ipt = ["ip", "netns", "exec", namespace, "iptables", "-w"]
    for chain in ("bw-fwd", "bw-in"):
        run([*ipt, "-F", chain])
    for rule in iptables_rules(scenario, cat):
        run([*ipt, *rule])
    # the injector and the delay line re-read their file when it changes: never half a file
    for name, content in (("inject.json", injected_names(scenario, cat)),
                          ("delay.json", {"delay_ms": int(scenario.option("delay_ms"))})):
        target = directory / name
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(content), encoding="utf-8")
        tmp.replace(target)
