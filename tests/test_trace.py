"""The raw-packet probe ``trace`` on loopback: real servers, real raw sockets, crafted packets.

Every packet goes to 127.0.0.0/8. Tests that need raw sockets are skipped when the process
cannot open one (not root, no CAP_NET_RAW); the path without the capability is tested in a
subprocess whose capability bounding set really lacks CAP_NET_RAW.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP
from servers import (
    LoopbackServer,
    blackhole_port,
    http,
    make_pki,
    refusing_port,
    reset_on_data,
    silent,
)
from unprivileged import needs_raw, raw_sockets_allowed, run_without_net_raw

from blockwatch.analysis.trace import judge_resets, judge_rst, locate, read, rst_fingerprint
from blockwatch.probes import capture, trace
from blockwatch.probes import failures as F
from blockwatch.probes.capture import parse_icmp, parse_tcp
from blockwatch.probes.context import ProbeContext, Timeouts
from blockwatch.probes.model import (
    RawObservation,
    Target,
    observation_from_dict,
    observation_to_dict,
)
from blockwatch.probes.scope import Scope
from blockwatch.probes.tcp import Clock
from blockwatch.probes.trace import MAX_HOPS, TraceProbe

REPO = Path(__file__).resolve().parent.parent




def ctx_for(t: float = 1.0, scope: Scope | None = None, **kw: object) -> ProbeContext:
    return ProbeContext(scope=scope or Scope.loopback(),
                        timeouts=Timeouts(dns=1, tcp=t, tls=t, http=t), **kw)  # type: ignore[arg-type]


def target(port: int, mode: str, host: str = "127.0.0.1", sni: str | None = None) -> Target:
    return Target(service="lab", probe="trace", host=host, port=port, sni=sni,
                  options=(("mode", mode),))


def only_raw(result: object) -> RawObservation:
    raws = [o for o in result.observations if isinstance(o, RawObservation)]  # type: ignore[attr-defined]
    assert len(raws) == 1, result
    return raws[0]


# --- crafted packets --------------------------------------------------------------------------


def synack(ttl: int = 63, ipid: int = 0, df: bool = True) -> bytes:
    return bytes(IP(src="10.201.10.10", dst="10.201.1.2", ttl=ttl, id=ipid,
                    flags="DF" if df else 0)
                 / TCP(sport=443, dport=40000, flags="SA", window=65160, seq=1, ack=2))


def time_exceeded(src: str = "10.201.1.1") -> bytes:
    quoted = bytes(IP(src="10.201.1.2", dst="10.201.10.10", ttl=1, id=4242)
                   / TCP(sport=40000, dport=443, flags="PA", seq=99))[:28]
    return bytes(IP(src=src, dst="10.201.1.2") / ICMP(type=11, code=0) / quoted)


def test_parse_synack_and_rst() -> None:
    seg = parse_tcp(synack())
    assert seg is not None
    assert (seg.src, seg.sport, seg.dport, seg.flags) == ("10.201.10.10", 443, 40000, "SA")
    assert seg.facts() == {"ttl": 63, "ipid": 0, "df": True, "window": 65160}
    rst = parse_tcp(bytes(IP(src="10.201.10.10", dst="10.201.1.2", ttl=248, id=7)
                          / TCP(sport=443, dport=40000, flags="RA", window=0)))
    assert rst is not None and (rst.flags, rst.ttl, rst.ipid, rst.df) == ("RA", 248, 7, False)


def test_parse_time_exceeded_names_the_quoted_flow() -> None:
    msg = parse_icmp(time_exceeded())
    assert msg is not None
    assert (msg.src, msg.type, msg.code) == ("10.201.1.1", 11, 0)
    assert (msg.qdst, msg.qsport, msg.qdport, msg.qid) == ("10.201.10.10", 40000, 443, 4242)


def test_malformed_and_truncated_packets_are_ignored() -> None:
    packets = [synack(), time_exceeded(),
               bytes(IP(src="1.2.3.4", dst="5.6.7.8") / ICMP(type=8) / b"ping")]
    for packet in packets:
        for n in range(len(packet)):  # every truncation
            parse_tcp(packet[:n])
            parse_icmp(packet[:n])
            capture._tcp_key(packet[:n])
        assert parse_tcp(packet[:39]) is None
    assert parse_icmp(time_exceeded()[:40]) is None  # the quote cut before the ports
    assert parse_icmp(bytes(IP() / ICMP(type=8))) is None  # an echo request quotes nothing
    assert parse_tcp(bytes(IP(proto=6) / (b"\x00" * 12))) is None
    assert parse_tcp(bytes(IP(frag=10) / TCP())) is None  # a later fragment
    rng = random.Random(7)
    for _ in range(3000):
        junk = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 80)))
        if rng.random() < 0.5 and junk:
            junk = bytes([0x45]) + junk[1:]  # looks like IPv4: deeper into the parser
        parse_tcp(junk)
        parse_icmp(junk)
        capture._tcp_key(junk)


# --- judging resets ---------------------------------------------------------------------------


LINUX_SYNACK = {"ttl": 63, "ipid": 0, "df": True, "window": 65160}


def rst(ttl: int = 63, ipid: int = 0, df: bool = True, flags: str = "R") -> dict[str, object]:
    return {"ttl": ttl, "ipid": ipid, "df": df, "window": 0, "flags": flags, "after": "data",
            "t": 0.1}


def test_forged_rst_judgement() -> None:
    assert judge_rst(LINUX_SYNACK, rst(ttl=64)) == "ttl 64 vs syn-ack 63"
    assert judge_rst(LINUX_SYNACK, rst(df=False)) == "df 0 vs syn-ack df 1"
    numbered = {"ttl": 50, "ipid": 3100, "df": False, "window": 8192}
    assert judge_rst(numbered, rst(ttl=50, ipid=0, df=False)) == \
        "ip-id 0 without df vs syn-ack ip-id 3100"
    # what a Linux server's own RST looks like: same TTL and DF, a per-connection IP-ID
    assert judge_rst(LINUX_SYNACK, rst(ipid=51234, flags="RA")) is None
    assert judge_rst(numbered, rst(ttl=50, ipid=3107, df=False)) is None
    assert judge_rst(None, rst(ttl=1)) is None  # nothing to compare with
    assert judge_resets(LINUX_SYNACK, [rst(ttl=64), rst(ttl=63, ipid=9)]) == \
        "ttl 64 vs syn-ack 63 (1 of 2)"
    assert judge_resets(LINUX_SYNACK, []) is None


def test_gfw_rst_fingerprints() -> None:
    assert rst_fingerprint(LINUX_SYNACK, [rst(ttl=40, ipid=0, df=False)]) == "gfw_type1"
    assert rst_fingerprint(LINUX_SYNACK, [rst(ttl=40, flags="RA", ipid=i) for i in (1, 2, 3)]) \
        == "gfw_type2"
    assert rst_fingerprint(LINUX_SYNACK, [rst(ttl=248, flags="RA")]) == "gfw_type3"
    assert rst_fingerprint(None, [rst(ttl=248, flags="RA")]) == "gfw_type3"
    # the server's own RST matches nothing, even with IP-ID 0 and no DF, if it agrees
    plain = {"ttl": 63, "ipid": 0, "df": False, "window": 8192}
    assert rst_fingerprint(plain, [rst(ipid=0, df=False)]) is None
    assert rst_fingerprint(LINUX_SYNACK, [rst(ttl=64)]) is None  # the lab's censor: no type


def hop(ttl: int, result: str, frm: str | None = None) -> dict[str, object]:
    return {"ttl": ttl, "result": result, "from": frm}


def test_locate_where_interference_begins() -> None:
    te = "time_exceeded"
    drop = locate([hop(1, te, "10.0.0.1"), hop(2, "silent"), hop(3, "silent"),
                     hop(4, "silent")])
    assert (drop.interference_ttl, drop.interference, drop.last_hop) == (2, "drop", "10.0.0.1")
    # a quiet router at 2, then more routers and a reset at 4
    reset = locate([hop(1, te, "10.0.0.1"), hop(2, "silent"), hop(3, te, "10.0.0.3"),
                      hop(4, "rst", "10.9.9.9")])
    assert (reset.interference_ttl, reset.interference, reset.last_hop) == (4, "rst", "10.0.0.3")
    reached = locate([hop(1, te, "10.0.0.1"), hop(2, "synack", "10.9.9.9")])
    assert (reached.server_ttl, reached.interference_ttl) == (2, None)
    # cut short by the time budget after one silent step: no claim
    cut = locate([hop(1, te, "10.0.0.1"), hop(2, "silent")])
    assert (cut.interference_ttl, cut.interference) == (None, None)
    first = locate([hop(1, "rst", "10.9.9.9")])
    assert (first.interference_ttl, first.last_hop) == (1, None)
    # silence up to MAX_HOPS (the search's end, not the budget's): a drop where it began
    far = locate([*(hop(t, te, f"10.0.0.{t}") for t in range(1, MAX_HOPS - 1)),
                  hop(MAX_HOPS - 1, "silent"), hop(MAX_HOPS, "silent")])
    assert (far.interference_ttl, far.interference) == (MAX_HOPS - 1, "drop")
    assert locate([]) == locate([hop(1, te, "10.0.0.1")])  # nothing to locate


def test_readings_of_version_1_rows_come_from_their_facts() -> None:
    """Trace version 1 stored its own readings beside the facts; they are ignored on load and
    read again from the facts, so a corrected reading corrects old measurements."""
    row = {"layer": "raw", "address": "10.201.10.10", "port": 443, "mode": "tls",
           "sni": "www.google.com", "t0": 0.1, "t": 2.5, "capture": True,
           "synack": {"ttl": 63, "ipid": 0, "df": True, "window": 65160},
           "resets": [{"ttl": 64, "ipid": 0, "df": True, "window": 0, "flags": "R",
                       "after": "data", "t": 0.2}],
           "reply": "rst", "forged_rst": "an old, wrong reading", "rst_fingerprint": "gfw_type3",
           "hops": [{"ttl": 1, "result": "time_exceeded", "from": "10.201.1.1"},
                    {"ttl": 2, "result": "rst", "from": "10.201.10.10"}],
           "interference_ttl": 9, "interference": "drop", "last_hop": None, "server_ttl": None,
           "failure": None}
    o = observation_from_dict(row)
    assert isinstance(o, RawObservation)
    r = read(o)
    assert (r.forged_rst, r.rst_fingerprint) == ("ttl 64 vs syn-ack 63", None)
    assert (r.interference_ttl, r.interference, r.last_hop) == (2, "rst", "10.201.1.1")


def test_raw_observation_round_trip() -> None:
    obs = RawObservation(
        address="10.201.10.10", port=443, mode="tls", sni="www.google.com", t0=0.1, t=2.5,
        capture=True, synack={"ttl": 63, "ipid": 0, "df": True, "window": 65160},
        resets=({"ttl": 64, "ipid": 0, "df": True, "window": 0, "flags": "R", "after": "data",
                 "t": 0.2},),
        reply="rst",
        hops=({"ttl": 1, "result": "time_exceeded", "from": "10.201.1.1"},
              {"ttl": 2, "result": "rst", "from": "10.201.10.10"}))
    stored = json.loads(json.dumps(observation_to_dict(obs)))
    assert stored["layer"] == "raw"
    assert observation_from_dict(stored) == obs
    bare = RawObservation(address="::1", port=80, mode="http", sni=None, t0=0, t=0,
                          capture=False, failure="raw_socket_unavailable")
    assert observation_from_dict(json.loads(json.dumps(observation_to_dict(bare)))) == bare


# --- the probe against loopback servers --------------------------------------------------------


@needs_raw
async def test_answering_server_no_interference(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    async with LoopbackServer(http) as web, \
            LoopbackServer(silent, tls=pki.server_context(pki.valid)) as tls:
        results = await asyncio.gather(
            TraceProbe().observe(target(web.port, "http"), ctx_for()),
            TraceProbe().observe(target(tls.port, "tls", sni="example.test"), ctx_for()),
            TraceProbe().observe(target(web.port, "syn"), ctx_for()))
    for result, reply in zip(results, ("data", "data", "synack"), strict=True):
        assert result.failure is None
        o = only_raw(result)
        assert o.capture and o.reply == reply, o
        assert o.synack is not None and o.synack["ttl"] == 64  # loopback: nothing in between
        assert o.resets == () and read(o).forged_rst is None and read(o).rst_fingerprint is None
        assert o.hops == () and read(o).interference_ttl is None and read(o).interference is None
    assert tls.sni == ["example.test"]  # the ClientHello was real and named the SNI
    assert web.requests and web.requests[0].headers["host"] == f"127.0.0.1:{web.port}"
    assert not capture._CAPTURES  # the shared raw sockets were closed by the last user


@needs_raw
async def test_server_reset_is_not_called_forged() -> None:
    """The server's own kernel RST agrees with its SYN-ACK (TTL, DF), although its IP-ID is a
    per-connection counter and the SYN-ACK's is 0: the rule must not cry wolf."""
    async with LoopbackServer(reset_on_data) as server:
        o = only_raw(await TraceProbe().observe(target(server.port, "http"), ctx_for()))
    assert o.reply == "rst"
    assert o.synack is not None and len(o.resets) == 1
    r = o.resets[0]
    assert "R" in r["flags"] and r["after"] == "data"
    assert (r["ttl"], r["df"]) == (o.synack["ttl"], o.synack["df"])
    assert read(o).forged_rst is None and read(o).rst_fingerprint is None
    # the search then finds the reset at the first hop: the server itself, one hop away
    assert o.hops[0]["result"] == "rst"
    assert (read(o).interference_ttl, read(o).last_hop) == (1, None)


@needs_raw
async def test_injected_reset_is_called_forged() -> None:
    """A RST+ACK crafted with GFW type III's IP TTL 248, injected into a live loopback flow
    next to hostile junk; the server then answers normally."""

    async def inject_then_answer(_s: LoopbackServer, reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        host, port = writer.get_extra_info("sockname")[:2]
        peer = writer.get_extra_info("peername")[1]
        tcp = TCP(sport=port, dport=peer, flags="RA", seq=12345, ack=1, window=0)
        forged = bytes(IP(src=host, dst="127.0.0.1", ttl=248, flags="DF") / tcp)
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
            # hostile junk first: a RST cut inside its header, garbage where TCP should be
            for junk in (forged[:24], forged[:20] + b"\xff" * 9, forged[:20]):
                raw.sendto(junk, ("127.0.0.1", 0))
            raw.sendto(forged, ("127.0.0.1", 0))
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read(1)

    async with LoopbackServer(inject_then_answer) as server:
        o = only_raw(await TraceProbe().observe(target(server.port, "http"), ctx_for()))
    assert o.reply == "data"  # the forged RST's sequence number missed: the flow lived on
    assert [(r["ttl"], r["df"], r["flags"], r["after"]) for r in o.resets] == \
        [(248, True, "RA", "data")]
    assert read(o).forged_rst == "ttl 248 vs syn-ack 64"
    assert read(o).rst_fingerprint == "gfw_type3"
    assert read(o).interference == "rst"  # every attempt meets a reset: the search stops at once


@needs_raw
async def test_silent_port_is_a_drop_from_the_first_hop() -> None:
    with blackhole_port() as port:
        o = only_raw(await TraceProbe().observe(target(port, "syn"), ctx_for(0.4)))
    assert o.reply == "timeout" and o.synack is None and o.resets == ()
    assert [h["result"] for h in o.hops] == ["silent"] * 3
    assert (read(o).interference_ttl, read(o).interference, read(o).last_hop) == (1, "drop", None)


@needs_raw
async def test_server_that_takes_the_data_but_never_answers_is_not_a_drop() -> None:
    async with LoopbackServer(silent) as server:
        o = only_raw(await TraceProbe().observe(target(server.port, "http"), ctx_for(0.4)))
    assert o.reply == "timeout" and o.synack is not None
    assert o.hops == ({"ttl": 1, "result": "acked", "from": "127.0.0.1"},)
    assert (read(o).server_ttl, read(o).interference_ttl, read(o).interference) == (1, None, None)


@needs_raw
async def test_refused_port_crafted_syn_meets_the_reset() -> None:
    with refusing_port() as port:
        o = only_raw(await TraceProbe().observe(target(port, "tls", sni="x.test"), ctx_for()))
    assert o.reply == "refused" and o.synack is None
    assert [r["after"] for r in o.resets] == ["syn"] and read(o).forged_rst is None
    assert o.hops == ({"ttl": 1, "result": "rst", "from": "127.0.0.1"},)
    assert (read(o).interference_ttl, read(o).interference) == (1, "rst")


@needs_raw
async def test_crafted_syn_search_reaches_a_listening_server() -> None:
    async with LoopbackServer(http) as server:
        cap = capture.acquire()
        try:
            found = await trace.search(cap, ctx_for(), "127.0.0.1", server.port, syn=True,
                                       payload=b"", clock=Clock(),
                                       deadline=asyncio.get_running_loop().time() + 10)
        finally:
            capture.release(cap)
    assert found == ({"ttl": 1, "result": "synack", "from": "127.0.0.1"},)
    assert (locate(found).server_ttl, locate(found).interference_ttl) == (1, None)
    assert not capture._CAPTURES


@needs_raw
async def test_many_concurrent_traces_keep_their_flows_apart() -> None:
    async with LoopbackServer(http) as ok, LoopbackServer(reset_on_data) as bad:
        ports = [ok.port, bad.port] * 10
        results = await asyncio.gather(*(TraceProbe().observe(target(p, "http"), ctx_for())
                                         for p in ports))
    for port, result in zip(ports, results, strict=True):
        o = only_raw(result)
        if port == ok.port:
            assert (o.reply, o.resets, o.hops) == ("data", (), ()), o
        else:
            assert o.reply == "rst" and len(o.resets) == 1 and read(o).forged_rst is None, o
    assert not capture._CAPTURES


async def test_address_outside_scope_sends_nothing() -> None:
    sniff = None
    if raw_sockets_allowed():
        sniff = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        sniff.setblocking(False)
    try:
        async with LoopbackServer(http, host="127.0.0.2") as server:
            result = await TraceProbe().observe(
                target(server.port, "syn", host="127.0.0.2"),
                ctx_for(scope=Scope.from_entries(["127.0.0.1/32"])))
            await asyncio.sleep(0.05)
        assert (result.failure, result.operation) == (F.OUT_OF_SCOPE, "connect")
        o = only_raw(result)
        assert (o.capture, o.failure, o.hops, o.reply) == (False, F.OUT_OF_SCOPE, (), None)
        assert server.accepted == 0
        if sniff is not None:  # not even a crafted SYN reached the address
            seen = []
            while True:
                try:
                    seg = parse_tcp(sniff.recv(256))
                except BlockingIOError:
                    break
                if seg is not None:
                    seen.append(seg)
            assert not [s for s in seen if s.dst == "127.0.0.2" and s.dport == server.port]
    finally:
        if sniff is not None:
            sniff.close()


async def test_proxy_and_ipv6_are_refused_cleanly() -> None:
    async with LoopbackServer(http) as server:
        proxied = await TraceProbe().observe(target(server.port, "http"),
                                             ctx_for(proxy="socks5://127.0.0.1:1"))
    assert (proxied.failure, proxied.observations) == (trace.PROXY_UNSUPPORTED, ())
    assert server.accepted == 0
    v6 = await TraceProbe().observe(target(80, "http", host="::1"), ctx_for())
    assert (v6.failure, v6.operation) == (trace.IPV6_UNSUPPORTED, "raw_capture")
    assert only_raw(v6).capture is False


NO_RAW_SCRIPT = textwrap.dedent("""
    import asyncio, json, logging, socket, sys
    from blockwatch.probes.context import ProbeContext, Timeouts
    from blockwatch.probes.model import Target, observation_to_dict
    from blockwatch.probes.scope import Scope
    from blockwatch.probes.trace import TraceProbe

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP).close()
        raise SystemExit("this process can still open raw sockets")
    except PermissionError:
        pass
    accepted = []

    async def main():
        async def handler(r, w):
            accepted.append(1)
            w.close()
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        ctx = ProbeContext(scope=Scope.loopback(), timeouts=Timeouts(tcp=1, tls=1, http=1))
        t = Target(service="x", probe="trace", host="127.0.0.1", port=port, sni="example.com",
                   options=(("mode", "tls"),))
        result = await TraceProbe().observe(t, ctx)
        await asyncio.sleep(0.1)
        server.close()
        print(json.dumps({"failure": result.failure, "operation": result.operation,
                          "accepted": len(accepted),
                          "observations": [observation_to_dict(o) for o in result.observations]}))

    asyncio.run(main())
""")


def test_without_cap_net_raw_the_probe_says_so_and_sends_nothing() -> None:
    done = run_without_net_raw(NO_RAW_SCRIPT, REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "CAP_NET_RAW" in done.stderr  # the warning says what is missing
    out = json.loads(done.stdout)
    assert (out["failure"], out["operation"]) == (F.RAW_UNAVAILABLE, "raw_capture")
    assert out["accepted"] == 0  # nothing was sent at all
    [o] = out["observations"]
    assert (o["layer"], o["capture"], o["failure"]) == ("raw", False, "raw_socket_unavailable")
    assert (o["synack"], o["resets"], o["hops"], o["reply"]) == (None, [], [], None)


# --- blockwatch trace (the command) -----------------------------------------------------------


def blockwatch_trace(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "loopback.toml"
    cfg.write_text('[probes]\nscope = ["127.0.0.0/8"]\n[timeouts]\ntcp = 1\ntls = 1\nhttp = 1\n')
    exe = Path(sys.executable).with_name("blockwatch")
    return subprocess.run([str(exe), "trace", *args, "--config", str(cfg)], capture_output=True,
                          text=True, timeout=60, cwd=REPO, check=False)


@needs_raw
def test_trace_command_prints_the_findings_and_stores_nothing(tmp_path: Path) -> None:
    import http.server
    import threading

    class Quiet(http.server.ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass  # the trace leaves with a RST: that is expected, not worth a traceback

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = Quiet(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = str(server.server_address[1])
        as_json = blockwatch_trace(tmp_path, "127.0.0.1", "--port", port, "--json")
        table = blockwatch_trace(tmp_path, "127.0.0.1", "--port", port, "--mode", "syn")
    finally:
        server.shutdown()
        server.server_close()
    assert as_json.returncode == 0, as_json.stderr
    out = json.loads(as_json.stdout)
    assert (out["target"], out["failure"]) == (f"127.0.0.1:{port}", None)
    [o] = out["observations"]
    assert (o["mode"], o["reply"], o["hops"]) == ("http", "data", [])
    [reading] = out["readings"]  # the analysis's reading of those facts, beside them
    assert (reading["forged_rst"], reading["interference"]) == (None, None)
    assert reading["server_distance"] == 1  # loopback: the SYN-ACK's IP TTL is 64
    assert table.returncode == 0 and "synack" in table.stdout and "syn-ack" in table.stdout
    # no database, no file at all: only the config the test wrote
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["loopback.toml"]


def test_trace_command_refuses_an_address_outside_the_scope(tmp_path: Path) -> None:
    done = blockwatch_trace(tmp_path, "10.1.2.3", "--port", "80", "--json")
    assert done.returncode == 2, done.stderr
    assert json.loads(done.stdout)["failure"] == F.OUT_OF_SCOPE
