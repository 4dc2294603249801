"""``blockwatch trace HOST [--port N] [--sni NAME] [--mode tls|http|syn]``: the raw-packet probe
once, by hand, with the config's scope and timeouts; the findings are printed, nothing is stored.

Guarantees:

- The same consent rule as ``blockwatch run`` (a scope that reaches public addresses needs it),
  the same scope check before any packet (``probes/trace.py``), no database opened.
- Exit 0 when the trace ran (whatever it found, a failed name lookup included); 2 when nothing
  could be traced on our side: no CAP_NET_RAW, the address is outside the scope, or a SOCKS
  proxy is configured (raw packets would bypass it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from blockwatch.cli import EXIT_OK, EXIT_USAGE, load_config

if TYPE_CHECKING:
    from blockwatch.probes.model import RawObservation

Handler = Callable[[argparse.Namespace], int]


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> dict[str, Handler]:
    tr = sub.add_parser("trace", help="raw-packet evidence for one host: forged resets and the "
                                      "hop where interference begins (needs CAP_NET_RAW)")
    common(tr)
    tr.add_argument("host", metavar="HOST", help="a host name or an IPv4 address")
    tr.add_argument("-p", "--port", type=int, metavar="N",
                    help="TCP port (default: 443 for --mode tls, else 80)")
    tr.add_argument("--sni", metavar="NAME", help="server name in the ClientHello (default: HOST)")
    tr.add_argument("-m", "--mode", choices=("tls", "http", "syn"), default=None,
                    help="what follows the handshake: a ClientHello (tls), GET / (http) or "
                         "nothing (syn); default: tls on port 443 or with --sni, else http")
    tr.add_argument("--json", action="store_true", help="print the observations as JSON")
    tr.add_argument("-y", "--yes", action="store_true",
                    help="I have read `blockwatch consent` and agree")
    return {"trace": cmd_trace}


def _target(args: argparse.Namespace) -> Any:
    from blockwatch.probes.model import Target

    mode = args.mode or ("tls" if args.sni or args.port in (None, 443) else "http")
    port = args.port or (443 if mode == "tls" else 80)
    if not 0 < port < 65536:
        from blockwatch.cli import UsageError

        raise UsageError(f"--port {port} is not a TCP port")
    sni = (args.sni or args.host) if mode == "tls" else None
    return Target(service="cli", probe="trace", host=args.host, port=port, sni=sni,
                  options=(("mode", mode),))


def cmd_trace(args: argparse.Namespace) -> int:
    from blockwatch import app
    from blockwatch.probes import failures as F
    from blockwatch.probes import trace
    from blockwatch.probes.model import RawObservation, observation_to_dict
    from blockwatch.probes.registry import PROBES
    from blockwatch.probes.runner import run_probe
    from blockwatch.schedule_cli import check_consent

    cfg = load_config(args.config)
    target = _target(args)
    refused = check_consent(cfg, args.yes)
    if refused is not None:
        return refused
    ctx = app.probe_context(cfg)
    import asyncio

    m = asyncio.run(run_probe(PROBES["trace"], target, ctx, run_id="", vantage=cfg.vantage.name))
    if args.json:
        from dataclasses import asdict

        from blockwatch.analysis.trace import read

        print(json.dumps({"target": target.key, "failure": m.failure,
                          "failed_operation": m.failed_operation,
                          "observations": [observation_to_dict(o) for o in m.observations],
                          # the analysis's readings of each raw observation's facts
                          "readings": [asdict(read(o)) for o in m.observations
                                       if isinstance(o, RawObservation)]}))
    else:
        for o in m.observations:
            if isinstance(o, RawObservation):
                _print(o)
        if m.failure:
            print(f"trace {target.key}: {m.failure} ({m.failed_operation})", file=sys.stderr)
    if m.failure == F.RAW_UNAVAILABLE:
        print(f"blockwatch: {trace.RAW_UNAVAILABLE_MESSAGE}", file=sys.stderr)
    ours = (F.RAW_UNAVAILABLE, F.OUT_OF_SCOPE, trace.PROXY_UNSUPPORTED, trace.IPV6_UNSUPPORTED)
    return EXIT_USAGE if m.failure in ours else EXIT_OK


def _facts(packet: dict[str, Any] | None) -> str:
    if not packet:
        return "-"
    text = f"ttl {packet['ttl']}  ip-id {packet['ipid']}  df {int(bool(packet['df']))}  " \
           f"win {packet['window']}"
    if "flags" in packet:
        text = f"{packet['flags']} after {packet['after']} at {packet['t']:.3f}s  " + text
    return text


def _print(o: RawObservation) -> None:
    from rich.table import Table

    from blockwatch.analysis.trace import read
    from blockwatch.term import console as term_console

    console = term_console()
    head = Table(title=f"trace {o.address}:{o.port}  mode {o.mode}"
                       + (f"  sni {o.sni}" if o.sni else ""), show_header=False)
    head.add_column("what", style="bold")
    head.add_column("seen")
    if not o.capture:
        head.add_row("capture", f"[red]none[/red] ({o.failure})")
        console.print(head)
        return
    head.add_row("reply", o.reply or "-")
    head.add_row("syn-ack", _facts(o.synack))
    for i, r in enumerate(o.resets):
        head.add_row("rst" if i == 0 else "", _facts(r))
    reading = read(o)  # the analysis's reading of the facts above
    head.add_row("forged rst", f"[red]{reading.forged_rst}[/red]" if reading.forged_rst else "no")
    if reading.rst_fingerprint:
        head.add_row("rst fingerprint", reading.rst_fingerprint)
    if reading.interference:
        after = f" after hop {reading.last_hop}" if reading.last_hop else ""
        head.add_row("interference", f"[red]{reading.interference} from TTL "
                                     f"{reading.interference_ttl}{after}[/red]")
    elif o.hops:
        head.add_row("interference", "not located")
    if reading.server_ttl:
        head.add_row("server reached", f"at TTL {reading.server_ttl}")
    console.print(head)
    if o.hops:
        hops = Table(title="TTL-limited search")
        for col in ("ttl", "result", "from"):
            hops.add_column(col)
        for h in o.hops:
            hops.add_row(str(h["ttl"]), h["result"], h["from"] or "")
        console.print(hops)
