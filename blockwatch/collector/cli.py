"""``blockwatch collector ...``: serve submissions, manage the vantages' tokens.

The collector's database is ``--db URL`` or the config's ``[storage] url`` (PostgreSQL for many
vantages: ``postgresql+psycopg://collector@localhost/blockwatch``; SQLite works for a few).
"""

from __future__ import annotations

import argparse
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
    serve.add_argument("--port", type=int, default=8471)
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
    lst = tsub.add_parser("list", help="every vantage and whether its token is valid")
    db(lst)
    rev = tsub.add_parser("revoke", help="refuse a vantage's token from now on")
    db(rev)
    rev.add_argument("name")
    return {"collector": cmd_collector}


def _open(args: argparse.Namespace) -> Any:
    from blockwatch.config import load_config
    from blockwatch.storage import open_store

    url = args.db or load_config(args.config).storage_url()
    return open_store(url)


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
                             "pip install 'blockwatch[collector]'") from None
        store = _open(args)
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
                token = tokens.add(store, args.name, country=args.country, asn=args.asn)
            except tokens.TokenError as exc:
                raise UsageError(str(exc)) from None
            print(f"vantage {args.name}: token (shown once, keep it in the vantage's "
                  f"token_file):\n{token}")
        elif args.token_command == "list":
            for v in tokens.listed(store):
                state = "valid" if v.revoked_at is None else f"revoked {v.revoked_at:%Y-%m-%d}"
                print(f"{v.name}\t{v.country or '-'}\t{v.asn or '-'}\t"
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
