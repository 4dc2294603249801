"""Issue #13 (3), from one vantage: where every address of our own answer fails, the TCP probe
also connects to the control resolver's addresses (asked anyway by the dns probe), as OONI's
web_connectivity does. They connect, ours do not: the DNS answer is the problem, blocked at dns
without a control vantage, and never at tcp. Real DNS servers and a real listener on loopback."""

from __future__ import annotations

from dns_server import Behaviour, DNSServer
from judging import judge_run
from servers import LoopbackServer, silent

from blockwatch.probes.context import ProbeContext, Timeouts
from blockwatch.probes.dns import DNSProbe
from blockwatch.probes.model import Service, Target, TCPObservation
from blockwatch.probes.resolvers import parse_resolver
from blockwatch.probes.runner import run_probe
from blockwatch.probes.scope import Scope
from blockwatch.probes.tcp import TCPProbe

NEWS = Service(name="news", title="News", category="news", domains=("news.test",))


def ctx(tested: str, control: str, controls: bool = True) -> ProbeContext:
    return ProbeContext(scope=Scope.loopback(), timeouts=Timeouts(dns=1, tcp=1),
                        lookup_resolver=parse_resolver(tested),
                        control_resolvers=(parse_resolver(control),) if controls else ())


async def test_the_control_resolvers_addresses_are_tried_and_corroborate_dns() -> None:
    async with LoopbackServer(silent) as web:
        # ours: an address where nothing listens on that port; the control's: the real server
        with DNSServer({"news.test": Behaviour(addresses=("127.0.1.9",))}) as tested, \
                DNSServer({"news.test": Behaviour(addresses=("127.0.0.1",))}) as control:
            c = ctx(tested.udp, control.udp)
            ms = [await run_probe(DNSProbe(), Target(service="news", probe="dns",
                                                     host="news.test", resolver=r), c,
                                  run_id="r", vantage="home")
                  for r in (tested.udp, control.udp)]
            tcp = await run_probe(TCPProbe(), Target(service="news", probe="tcp",
                                                     host="news.test", port=web.port), c,
                                  run_id="r", vantage="home")
            asked = tested.count("news.test") + control.count("news.test")
    tried = [o for o in tcp.observations if isinstance(o, TCPObservation)]
    assert [(o.address, o.failure is None, o.answer_of) for o in tried] == [
        ("127.0.1.9", False, None), ("127.0.0.1", True, control.udp)]
    assert tcp.failure == "connection_refused"  # our answer decides the measurement, alone
    assert asked == 4  # A and AAAA at each resolver: the TCP probe shared the dns probe's
    out = judge_run([*ms, tcp], {"news": NEWS}, [control.udp], local_networks=["127.0.0.0/8"])
    dns_v = next(v for v in out if v.measurement_id == ms[0].id)
    assert (dns_v.verdict, dns_v.rule_id) == ("dns_blocked", "dns.inconsistent.corroborated")
    service = next(v for v in out if v.measurement_id is None)
    assert (service.verdict, service.layer) == ("blocked", "dns"), service


async def test_nothing_more_is_tried_when_ours_connect_or_without_controls() -> None:
    async with LoopbackServer(silent) as web:
        with DNSServer({"news.test": Behaviour(addresses=("127.0.0.1",))}) as tested, \
                DNSServer({"news.test": Behaviour(addresses=("127.0.0.2",))}) as control:
            target = Target(service="news", probe="tcp", host="news.test", port=web.port)
            fine = await TCPProbe().observe(target, ctx(tested.udp, control.udp))
    assert fine.failure is None
    assert [o.answer_of for o in fine.observations if isinstance(o, TCPObservation)] == [None]
    with DNSServer({"news.test": Behaviour(addresses=("127.0.1.9",))}) as tested, \
            DNSServer({"news.test": Behaviour(addresses=("127.0.0.1",))}) as control:
        target = Target(service="news", probe="tcp", host="news.test", port=web.port)
        alone = await TCPProbe().observe(target, ctx(tested.udp, control.udp, controls=False))
    assert alone.failure is not None and control.count("news.test") == 0
