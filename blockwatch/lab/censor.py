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
* the ECH filter (``blockwatch.lab.echblock``) resets ClientHellos that carry the ECH
  extension (``ech_block``);
* the injector (``blockwatch.lab.inject``) reads the names to inject from a JSON file;
* the delay line (``blockwatch.lab.delay``) holds a service's packets ``delay_ms`` each way;
* the QUIC SNI filter (``blockwatch.lab.quicsni``) drops QUIC Initials naming a blocked host,
  GFW-style (``quic_sni``); nftables drops UDP/443 to a service's addresses (``quic_drop``).

Only traffic arriving from the censored client (``down0``) or going back to it is touched. Every
address-based method hits a service's IPv6 address as well as its IPv4 ones (nftables ``ip6
daddr`` sets of type ipv6_addr beside the ipv4_addr ones; every iptables rule has its ip6tables
twin), and the DNS methods answer AAAA queries too: NXDOMAIN, a bogon (``BOGON6``), the lab's
IPv6 sinkhole, or nothing (``dns_poison_known``: the forged address is IPv4 only, so AAAA gets
an empty NOERROR answer).

One method is not the censor's: ``server_down`` is an outage, applied in the *server* namespace
(nftables table ``bwserver``, also replaced as a whole on every switch and gone with the
namespace at ``lab down``): the service's addresses answer everybody, the control client too,
with ICMP host unreachable, as the last router before a dead host does. Nor is
``ipv6_broken``: the server's side drops every packet to the service's IPv6 address, for
everybody, while its IPv4 addresses work (a broken AAAA, a known false positive in the field).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from blockwatch.lab.scenario import Scenario
from blockwatch.lab.services import NATIONAL_PORT, Catalogue
from blockwatch.lab.topology import CENSOR_DOWN, PUBLIC_RESOLVER, SINKHOLE, SINKHOLE6, run

BOGON = "10.10.34.35"  # private, outside the lab's scope: the probes see it as a bogon
# a ULA address outside the lab's own /48 (LAB_NET6): a bogon the scope refuses, like BOGON
BOGON6 = "fd0a:10:34::35"
# a public address the Great Firewall's injector answered with (analysis/data/fingerprints/dns.json,
# bw.dns.cn_gfw_8.7.198.45): outside the lab's scope, so no probe ever sends it a packet
KNOWN_FORGED = "8.7.198.45"
INJECT_QUEUE = 5
DELAY_QUEUE = 6
QUIC_SNI_QUEUE = 7
QUIC_RESIDUAL_S = 60  # the GFW's residual blocking of (client, server, port) after a blocked SNI
ECH_QUEUE = 8  # blockwatch.lab.echblock


def dnsmasq_isp_conf(scenario: Scenario, cat: Catalogue) -> str:
    lines = ["no-resolv", "no-hosts", "bind-interfaces", f"listen-address={CENSOR_DOWN}",
             f"server={PUBLIC_RESOLVER}", "cache-size=0", "user=root", "group=root"]
    for service in scenario.services_with("dns_nxdomain"):
        # an empty server= makes the names "local": nothing to answer with, so NXDOMAIN
        lines += [f"server=/{h}/" for h in scenario.hosts(cat, service)]
    # dnsmasq answers a type it was given an address= for and forwards the others (since
    # 2.86): ``local=`` beside it makes them an empty answer (NOERROR, no records) instead
    for method, answers in (("dns_bogon", (BOGON, BOGON6)), ("dns_poison", (SINKHOLE, SINKHOLE6)),
                            ("dns_poison_known", (KNOWN_FORGED,))):
        for service in scenario.services_with(method):
            for h in scenario.hosts(cat, service):
                lines += [*(f"address=/{h}/{a}" for a in answers), f"local=/{h}/"]
    return "\n".join(lines) + "\n"


def _set(name: str, addresses: Iterable[str], kind: str = "ipv4_addr") -> str:
    elems = sorted(set(addresses))
    body = f" elements = {{ {', '.join(elems)} }};" if elems else ""
    return f"  set {name} {{ type {kind};{body} }}\n"


def _sets(pairs: Iterable[tuple[str, str]], scenario: Scenario, cat: Catalogue) -> str:
    """For each (set, method): set ``name`` of the method's services' IPv4 addresses and set
    ``name6`` of their IPv6 addresses."""
    out = []
    for name, method in pairs:
        services = scenario.services_with(method)
        out.append(_set(name, [a for s in services for a in scenario.addresses(cat, s)]))
        out.append(_set(f"{name}6", [a for s in services for a in scenario.addresses6(cat, s)],
                        "ipv6_addr"))
    return "".join(out)


def _both(rule: str) -> list[str]:
    """A rule written for IPv4 (``ip daddr @x``/``ip saddr @x``) and its IPv6 twin (``ip6 daddr
    @x6``)."""
    twin = re.sub(r"\bip (daddr|saddr) @(\w+)", r"ip6 \1 @\g<2>6", rule)
    return [rule, twin]


def nft_ruleset(scenario: Scenario, cat: Catalogue) -> str:
    loss = int(scenario.option("loss_percent"))
    glob = int(scenario.option("global_loss_percent"))
    ports = ", ".join(str(p) for p in scenario.option("udp_ports"))
    sets = _sets((
        ("syn_drop", "tcp_syn_drop"), ("rst_syn", "tcp_rst_syn"), ("rst_data", "tcp_rst_data"),
        ("udp_drop", "udp_drop"), ("loss", "packet_loss"), ("blockpage", "http_blockpage"),
        ("quic_drop", "quic_drop"),
        ("blockpage_national", "http_blockpage_national")), scenario, cat)
    forward = [r for rule in (
        'iifname "down0" ip daddr @syn_drop tcp flags & (syn|ack) == syn drop',
        'iifname "down0" ip daddr @rst_syn tcp flags & (syn|ack) == syn reject with tcp reset',
        'iifname "down0" ip daddr @rst_data ct state established tcp flags & psh == psh '
        'reject with tcp reset',
        f'iifname "down0" ip daddr @udp_drop udp dport {{ {ports} }} drop' if ports else "",
        'iifname "down0" ip daddr @quic_drop udp dport 443 drop',
        f'iifname "down0" ip daddr @loss numgen random mod 100 < {loss} drop' if loss else "",
        f'oifname "down0" ip saddr @loss numgen random mod 100 < {loss} drop' if loss else "",
    ) if rule for r in _both(rule)]
    # global loss hits everything the censored client sends (to the servers and to the ISP
    # resolver) and every forwarded packet back; what the censor itself sends (its resolver's
    # answers, forged answers, resets) is not dropped, so a lost packet never hides a method
    everywhere = [f'iifname "down0" numgen random mod 100 < {glob} drop',
                  f'oifname "down0" numgen random mod 100 < {glob} drop'] if glob else []
    rules = "".join(f"    {r}\n" for r in [*everywhere, *forward] if r)
    inp = "".join(f"    {r}\n" for r in everywhere[:1])
    nat = "".join(f"    {r}\n" for rule in (
        'iifname "down0" ip daddr @blockpage tcp dport 80 redirect to :8080',
        'iifname "down0" ip daddr @blockpage tcp dport 443 redirect to :8443',
        f'iifname "down0" ip daddr @blockpage_national tcp dport 80 redirect to :{NATIONAL_PORT}',
    ) for r in _both(rule))
    return _table("bwcensor", sets, (
        ("forward_filter", "type filter hook forward priority 0", rules),
        ("input_filter", "type filter hook input priority 0", inp),
        ("prerouting_nat", "type nat hook prerouting priority dstnat", nat)))


def _table(name: str, sets: str, chains: tuple[tuple[str, str, str], ...]) -> str:
    """An nftables ``inet`` table that replaces any earlier one of that name as a whole:
    ``chains`` are (name, hook line, rule lines)."""
    body = "".join(f"  chain {chain} {{\n    {hook}; policy accept;\n{rules}  }}\n"
                   for chain, hook, rules in chains)
    return (f"table inet {name}\ndelete table inet {name}\n"
            f"table inet {name} {{\n{sets}{body}}}\n")


def server_ruleset(scenario: Scenario, cat: Catalogue) -> str:
    """The server namespace's outages: every packet to a ``server_down`` service's addresses
    (IPv4 and IPv6), from either client, is answered with ICMP host unreachable (a dead host
    behind a router); every packet to an ``ipv6_broken`` service's IPv6 address is dropped (a
    broken AAAA: silence), while its IPv4 addresses answer."""
    sets = _sets((("down", "server_down"),), scenario, cat)
    sets += _set("v6_broken", [a for s in scenario.services_with("ipv6_broken")
                               for a in scenario.addresses6(cat, s)], "ipv6_addr")
    rules = "".join(f"    {r}\n" for r in [
        *_both("ip daddr @down reject with icmpx type host-unreachable"),
        "ip6 daddr @v6_broken drop"])
    return _table("bwserver", sets, (
        ("input_filter", "type filter hook input priority 0", rules),))


def apply_server(namespace: str, scenario: Scenario, cat: Catalogue) -> None:
    """Put the scenario's outages in place in the server namespace (replacing the old ones)."""
    run(["ip", "netns", "exec", namespace, "nft", "-f", "-"], stdin=server_ruleset(scenario, cat))


def _sni_match(host: str) -> list[str]:
    # the SNI extension carries a 2-byte length before the name: matching it too makes the rule
    # hit this exact name only (no "x.com" inside "xx.com")
    n = len(host)
    return ["-m", "string", "--algo", "bm", "--hex-string", f"|{n >> 8:02x}{n & 0xFF:02x}|{host}"]


IPTABLES = ("iptables", "ip6tables")


def iptables_rules(scenario: Scenario, cat: Catalogue, family: int = 4) -> list[list[str]]:
    """Rules for the bw-fwd and bw-in chains (flushed first) of iptables (``family`` 4) or
    ip6tables (6). The DNS injector is IPv4 only: the lab's resolvers listen on IPv4."""
    rules: list[list[str]] = []
    for service in scenario.services_with("tls_sni_rst"):
        for h in scenario.hosts(cat, service):
            rules.append(["-A", "bw-fwd", "-i", "down0", "-p", "tcp", *_sni_match(h),
                          "-j", "REJECT", "--reject-with", "tcp-reset"])
    rules += _ech_rules(scenario, cat, family)
    delayed = ["-j", "NFQUEUE", "--queue-num", str(DELAY_QUEUE), "--queue-bypass"]
    for service in scenario.services_with("delay"):
        for a in (scenario.addresses(cat, service) if family == 4
                  else scenario.addresses6(cat, service)):
            rules.append(["-A", "bw-fwd", "-i", "down0", "-d", a, *delayed])
            rules.append(["-A", "bw-fwd", "-o", "down0", "-s", a, *delayed])
    if any(scenario.services_with("quic_sni")):
        # every datagram of the censored client to UDP/443 passes the QUIC SNI filter
        rules.append(["-A", "bw-fwd", "-i", "down0", "-p", "udp", "--dport", "443", "-j",
                      "NFQUEUE", "--queue-num", str(QUIC_SNI_QUEUE), "--queue-bypass"])
    if family == 4 and scenario.services_with("dns_injection"):
        queue = ["-j", "NFQUEUE", "--queue-num", str(INJECT_QUEUE), "--queue-bypass"]
        rules.append(["-A", "bw-fwd", "-i", "down0", "-p", "udp", "--dport", "53", *queue])
        rules.append(["-A", "bw-in", "-i", "down0", "-p", "udp", "--dport", "53", *queue])
    return rules


def _ech_rules(scenario: Scenario, cat: Catalogue, family: int) -> list[list[str]]:
    """``ech_block``: the client's segments to the service's port 443 holding the bytes fe 0d
    go to the ECH filter (``blockwatch.lab.echblock``), which marks the ClientHellos that really
    carry the ECH extension and repeats them; marked packets meet the reset first."""
    services = scenario.services_with("ech_block")
    if not services:
        return []
    from blockwatch.lab.echblock import ECH_MARK

    rules = [["-A", "bw-fwd", "-i", "down0", "-p", "tcp", "-m", "mark", "--mark",
              str(ECH_MARK), "-j", "REJECT", "--reject-with", "tcp-reset"]]
    queue = ["-j", "NFQUEUE", "--queue-num", str(ECH_QUEUE), "--queue-bypass"]
    for service in services:
        for a in (scenario.addresses(cat, service) if family == 4
                  else scenario.addresses6(cat, service)):
            rules.append(["-A", "bw-fwd", "-i", "down0", "-d", a, "-p", "tcp", "--dport", "443",
                          "-m", "string", "--algo", "bm", "--hex-string", "|fe0d|", *queue])
    return rules


def injected_names(scenario: Scenario, cat: Catalogue) -> dict[str, object]:
    names = [h for s in scenario.services_with("dns_injection") for h in scenario.hosts(cat, s)]
    return {"answer": SINKHOLE, "answer6": SINKHOLE6, "names": sorted(set(names))}


def setup_iptables(namespace: str) -> None:
    """Create our two chains (iptables and ip6tables) and jump to them once (idempotent)."""
    for tool in IPTABLES:
        ipt = ["ip", "netns", "exec", namespace, tool, "-w"]
        for chain, hook in (("bw-fwd", "FORWARD"), ("bw-in", "INPUT")):
            if run([*ipt, "-L", chain, "-n"], check=False).returncode != 0:
                run([*ipt, "-N", chain])
            if run([*ipt, "-C", hook, "-j", chain], check=False).returncode != 0:
                run([*ipt, "-A", hook, "-j", chain])


def apply(namespace: str, scenario: Scenario, cat: Catalogue, directory: Path) -> None:
    """Put the scenario's nftables, iptables and injector config in place (the ISP resolver
    is restarted by the caller, which owns processes)."""
    run(["ip", "netns", "exec", namespace, "nft", "-f", "-"], stdin=nft_ruleset(scenario, cat))
    for family, tool in zip((4, 6), IPTABLES, strict=True):
        ipt = ["ip", "netns", "exec", namespace, tool, "-w"]
        for chain in ("bw-fwd", "bw-in"):
            run([*ipt, "-F", chain])
        for rule in iptables_rules(scenario, cat, family):
            run([*ipt, *rule])
    # the injector and the delay line re-read their file when it changes: never half a file
    quic_names = sorted({h for s in scenario.services_with("quic_sni")
                         for h in scenario.hosts(cat, s)})
    for name, content in (("inject.json", injected_names(scenario, cat)),
                          ("quicsni.json", {"names": quic_names,
                                            "residual_s": QUIC_RESIDUAL_S}),
                          ("delay.json", {"delay_ms": int(scenario.option("delay_ms"))})):
        target = directory / name
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(content), encoding="utf-8")
        tmp.replace(target)
