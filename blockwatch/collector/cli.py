"""``blockwatch collector ...``: serve submissions, manage the vantages' tokens.

The collector's database is ``--db URL`` or the config's ``[storage] url`` (PostgreSQL for many
vantages: ``postgresql+psycopg://collector@localhost/blockwatch``; SQLite works for a few).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> dict[str, Handler]:
    col = sub.add_parser("collector", help="the collector: many vantages, one database")
    csub = col.add_subparsers(dest="collector_command", required=True, metavar="ACTION")

    def db(p: argparse.ArgumentParser) -> None:
        common(p)
        p.add_argument("--db", metavar="URL", help="the collector's database (default: the "
                       "config's [storage] url)")

    serve = csub.add_parser("serve", help="accept submissions over HTTP(S)")
    db(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                       "127.0.0.1: put a TLS reverse proxy in front, or give --certfile)")
    serve.add_argument("--port", type=int, default=8471, help="TCP port (default 8471)")
    serve.add_argument("--certfile", help="TLS certificate (PEM) to serve HTTPS directly")
    serve.add_argument("--keyfile", help="its private key (PEM)")
    serve.add_argument("--rate", type=float, default=20.0,
                       help="submissions a second per token, on average (default 20)")

    tok = csub.add_parser("token", help="add, list or revoke a vantage's token")
    tsub = tok.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    add = tsub.add_parser("add", help="a new vantage; its token is printed once")
    db(add)
    add.add_argument("name", help="the vantage's name (what its runs are stored under)")
    add.add_argument("--country", help="ISO country code (e.g. IR); replaces the runs' own")
    add.add_argument("--asn", type=int, help="autonomous system number; replaces the runs' own")
    add.add_argument("--control", action="store_true",
                     help="a control vantage (outside the censored networks, e.g. a VPS "
                          "abroad): its measurements judge the other vantages' runs")
    lst = tsub.add_parser("list", help="every vantage and whether its token is valid")
    db(lst)
    rev = tsub.add_parser("revoke", help="refuse a vantage's token from now on")
    db(rev)
    rev.add_argument("name", help="the token's name (see `collector token list`)")
    sub_ = sub.add_parser("submit", help="send the outbox to the collector now")
    common(sub_)
    sub_.add_argument("--retry-rejected", action="store_true",
                      help="also send again the runs the collector refused (e.g. after a new "
                           "token)")
    box = sub.add_parser("outbox", help="the runs waiting for the collector, and those it "
                         "refused")
    common(box)
    box.add_argument("--db", metavar="URL", help="database URL or SQLite path (default: the "
                     "config's [storage] url)")
    return {"collector": cmd_collector, "submit": cmd_submit, "outbox": cmd_outbox}


def _vantage_store(args: argparse.Namespace) -> tuple[Any, Any]:
    from blockwatch.cli import UsageError
    from blockwatch.config import ConfigError, load_config
    from blockwatch.storage import open_store

    cfg = load_config(args.config)
    from blockwatch.collector.outbox import sending_of

    try:
        sending = sending_of(cfg)
    except ValueError as exc:
        raise ConfigError(f"{cfg.source}: collector: {exc}") from None
    if sending is None:
        raise UsageError("no collector: set [collector] url and token_file in the config")
    return sending, open_store(cfg.storage_url())


def cmd_submit(args: argparse.Namespace) -> int:
    """Send everything now; exit 0 when the outbox is empty, 8 when some wait or were
    refused."""
    from blockwatch.collector.outbox import entries, flush

    sending, store = _vantage_store(args)
    try:
        report = flush(store, sending, force=True, retry_rejected=args.retry_rejected)
        aside = [e for e in entries(store) if e.state == "rejected"]
    finally:
        store.close()
    print(f"{len(report.sent)} run(s) sent ({report.batches} batches); {report.pending} "
          f"waiting; {len(report.rejected)} refused now; {len(aside)} set aside in all")
    for run, why in report.retry.items():
        print(f"  waiting {run[:13]}: {why}")
    for run, why in report.rejected.items():
        print(f"  refused {run[:13]}: {why}")
    if aside and not report.rejected:
        print("  `blockwatch outbox` lists the runs set aside; --retry-rejected sends them again")
    return 0 if not (report.retry or aside) else 8


def cmd_outbox(args: argparse.Namespace) -> int:
    from blockwatch.cli import read_stored, reading_url
    from blockwatch.collector.outbox import entries
    from blockwatch.probes.textsafe import one_line as printable

    rows, _ = read_stored(reading_url(args), entries)
    if not rows:
        print("the outbox is empty")
        return 0
    for e in rows:
        line = (f"{e.run_id[:13]}  {e.state:8}  queued {e.queued_at:%Y-%m-%d %H:%M}  "
                f"{e.batches_sent} batch(es) sent, {e.attempts} failed tries")
        if e.state == "pending":
            line += f", next {e.next_attempt_at:%Y-%m-%d %H:%M}"
        if e.last_error:
            line += f"  ({printable(e.last_error)})"
        print(line)
    return 0


def _open(args: argparse.Namespace, *, pre_ping: bool = True,
          pool_size: int | None = None) -> Any:
    from blockwatch.config import load_config
    from blockwatch.storage import open_store

    url = args.db or load_config(args.config).storage_url()
    return open_store(url, pre_ping=pre_ping, pool_size=pool_size)


def cmd_collector(args: argparse.Namespace) -> int:
    from blockwatch.cli import UsageError
    from blockwatch.collector import tokens

    if args.collector_command == "serve":
        if bool(args.certfile) != bool(args.keyfile):
            raise UsageError("--certfile and --keyfile go together")
        if not 0 < args.rate <= 10_000:
            raise UsageError("--rate: a number of submissions a second, above 0")
        try:
            from blockwatch.collector.app import serve
        except ImportError as exc:
            raise UsageError(f"the collector needs its extra packages ({exc.name}): "
                             "pip install 'blockwatch-censorship[collector]'") from None
        from blockwatch.collector.app import POOL

        # pre_ping off: the service tries again itself (app.run)
        store = _open(args, pre_ping=False, pool_size=POOL)
        try:
            serve(store, args.host, args.port, certfile=args.certfile, keyfile=args.keyfile,
                  rate=args.rate, burst=max(3 * args.rate, 10))
        finally:
            store.close()
        return 0
    store = _open(args)
    try:
        if args.token_command == "add":
            try:
                token = tokens.add(store, args.name, country=args.country, asn=args.asn,
                                   control=args.control)
            except tokens.TokenError as exc:
                raise UsageError(str(exc)) from None
            # the token alone on stdout: `... token add NAME > NAME.token` is a token_file
            print(f"vantage {args.name}: token (shown once, keep it in the vantage's "
                  "token_file):", file=sys.stderr)
            print(token)
        elif args.token_command == "list":
            for v in tokens.listed(store):
                state = "valid" if v.revoked_at is None else f"revoked {v.revoked_at:%Y-%m-%d}"
                print(f"{v.name}\t{v.country or '-'}\t{v.asn or '-'}\t"
                      f"{'control' if v.control else 'vantage'}\t"
                      f"added {v.created_at:%Y-%m-%d}\t{state}")
        else:
            try:
                tokens.revoke(store, args.name)
            except tokens.TokenError as exc:
                raise UsageError(str(exc)) from None
            print(f"vantage {args.name}: token revoked")
    finally:
        store.close()
    return 0
