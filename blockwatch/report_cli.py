"""``blockwatch report timeline|changes|compare|html|events`` and ``blockwatch query``.

Registered through ``blockwatch.cli.EXTENSIONS``. Reports and ``query`` open the configured
database (or ``--db``) read-only at the driver level, as it is (a read-only copy can be read;
nothing is migrated, written or created); ``query`` runs one SQL statement. Bad input (an events
file, a date, SQL that is wrong) exits 2 with one line saying what is wrong; a query refused
because it would write, and a database problem, exit 3.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from blockwatch.cli import EXIT_OK, UsageError, _reading, load_config, open_reading
from blockwatch.probes.textsafe import cell as text_cell
from blockwatch.probes.textsafe import csv_cell, json_safe

FORMATS = ("table", "csv", "json")
TABLE_LIMIT = 200


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]
             ) -> dict[str, Callable[[argparse.Namespace], int]]:
    rep = sub.add_parser("report", help="timelines, change points, comparison with reported "
                                        "events, HTML report")
    rsub = rep.add_subparsers(dest="report_command", required=True, metavar="REPORT")
    tl = rsub.add_parser("timeline", help="verdict counts per service x vantage per bucket")
    tl.add_argument("--bucket", choices=("hour", "day", "week"), default="day",
                    help="one row per service and vantage per hour, day (default) or week")
    ch = rsub.add_parser("changes", help="onsets and ends of blocking, with windows")
    cmp_ = rsub.add_parser("compare", help="observed onsets vs reported events")
    html = rsub.add_parser("html", help="write one self-contained HTML report")
    html.add_argument("-o", "--output", metavar="FILE", required=True,
                      help="the HTML file to write")
    html.add_argument("--bucket", choices=("minute", "hour", "day", "week"), default=None,
                      help="chart bucket (default: from the span of the runs: minute up to "
                           "6 hours, hour up to 14 days, day up to two years, then week)")
    html.add_argument("--title", default="blockwatch report",
                      help="the page's title (default: blockwatch report)")
    ev = rsub.add_parser("events", help="list the reported events (built-in and --events)")
    for p in (tl, ch, cmp_, html):
        _data_options(p, common)
    for p in (ch, cmp_, html):
        p.add_argument("--min-sweeps", type=int, default=5, metavar="K",
                       help="consistent sweeps needed to establish a state (default 5)")
    for p in (cmp_, html, ev):
        p.add_argument("--events", action="append", default=[], metavar="FILE",
                       help="an events CSV of your own (repeatable)")
        p.add_argument("--no-builtin-events", action="store_true",
                       help="use only the --events files")
    for p in (tl, ch, cmp_, ev):
        p.add_argument("-f", "--format", choices=FORMATS, default="table",
                       help="a table for people (default), csv or json for programs")
        p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    ev.add_argument("-s", "--service", action="append", metavar="NAME",
                    help="only events about this service (repeatable)")
    ev.add_argument("--country", metavar="CC", help="only events in this country (ISO code)")

    q = sub.add_parser("query", help="run one read-only SQL statement")
    common(q)
    q.add_argument("sql", metavar="SQL", help='e.g. "SELECT vantage, count(*) FROM runs '
                                              'GROUP BY vantage"')
    q.add_argument("--db", metavar="URL", help="database URL or SQLite path (default: config)")
    q.add_argument("-f", "--format", choices=FORMATS, default="table",
                   help="a table for people (default), csv or json for programs")
    q.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    q.add_argument("--limit", type=int, default=TABLE_LIMIT,
                   help=f"rows shown in a table (default {TABLE_LIMIT}; csv/json: all)")
    return {"report": cmd_report, "query": cmd_query}


def _data_options(p: argparse.ArgumentParser,
                  common: Callable[[argparse.ArgumentParser], None]) -> None:
    common(p)
    _reading(p)  # --db, --vantage, --service, --since, --until: as every reading command
    p.add_argument("--category", action="append", metavar="CODE",
                   help="only services of this category, e.g. a test list's NEWS (repeatable)")


def cmd_report(args: argparse.Namespace) -> int:
    handler = {"timeline": _timeline, "changes": _changes, "compare": _compare,
               "html": _html, "events": _events}[args.report_command]
    return handler(args)


# --- plumbing ---------------------------------------------------------------------------------


def _url(args: argparse.Namespace) -> str:
    if getattr(args, "db", None):
        return str(args.db)
    return str(load_config(getattr(args, "config", None)).storage_url())


@contextmanager
def _store(args: argparse.Namespace) -> Iterator[Any]:
    store = open_reading(_url(args))  # read-only, as it is
    try:
        yield store
    finally:
        store.close()


def _filters(args: argparse.Namespace) -> Any:
    from blockwatch.storage.queries import Filters

    return Filters(services=args.service, vantages=args.vantage, since=args.since,
                   until=args.until, categories=args.category)


def _min_sweeps(args: argparse.Namespace) -> int:
    if args.min_sweeps < 1:
        raise UsageError("--min-sweeps must be at least 1")
    return int(args.min_sweeps)


def _load_events(args: argparse.Namespace) -> list[Any]:
    from blockwatch.reports.events import EventsError, load_events

    try:
        return load_events(args.events, builtin=not args.no_builtin_events)
    except EventsError as exc:
        raise UsageError(f"bad events file:\n{exc}") from None


@contextmanager
def _out(args: argparse.Namespace) -> Iterator[TextIO]:
    if not getattr(args, "output", None):
        yield sys.stdout
        return
    try:
        fh = open(args.output, "w", encoding="utf-8", newline="")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror}") from None
    with fh:
        yield fh


def _emit(args: argparse.Namespace, title: str, columns: Sequence[str],
          rows: Iterable[Sequence[Any]], limit: int | None = None) -> None:
    with _out(args) as fh:
        if args.format == "csv":  # text from the network: printable, never a formula
            w = csv.writer(fh)
            w.writerow([csv_cell(c) for c in columns])
            for row in rows:
                w.writerow(["" if v is None else csv_cell(v) for v in row])
        elif args.format == "json":
            fh.write("[")
            for i, row in enumerate(rows):
                fh.write(",\n" if i else "\n")
                fh.write(json_safe(json.dumps(dict(zip(columns, row, strict=True)),
                                              default=str, ensure_ascii=False)))
            fh.write("\n]\n")
        else:
            _table(fh, title, columns, rows, limit)


def _table(fh: TextIO, title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]],
           limit: int | None) -> None:
    from rich.table import Table

    from blockwatch.term import console as term_console

    table = Table(title=text_cell(title))
    for c in columns:
        table.add_column(text_cell(c), overflow="fold")
    shown = more = 0
    for row in rows:
        if limit is not None and shown >= limit:
            more += 1
            continue
        table.add_row(*(text_cell(v) for v in row))  # data, never markup or an escape
        shown += 1
    console = term_console(fh)  # the terminal's width; a pipe or file: $COLUMNS or wide
    console.print(table)
    if more:
        console.print(f"... {more} more rows (use --format csv or json for all, or --limit)")


def _t(value: dt.datetime | None) -> str | None:
    from blockwatch.storage.types import iso_utc

    return iso_utc(value) if value else None


# --- the reports ----------------------------------------------------------------------------


def _timeline(args: argparse.Namespace) -> int:
    from blockwatch.reports.timeline import collapsed, rows, timeline

    with _store(args) as store:
        tl = timeline(store, args.bucket, _filters(args))
    if args.format != "table":
        records = list(rows(tl))
        cols = list(records[0]) if records else ["bucket", "service", "vantage", "runs",
                                                  "state"]
        _emit(args, "", cols, (list(r.values()) for r in records))
        return EXIT_OK
    shown = [v for v in tl.verdicts if any(c.counts[v] for s in tl.series for c in s.cells)]

    def table_rows() -> Iterator[list[Any]]:
        fmt = "%Y-%m-%d %H:00" if args.bucket == "hour" else "%Y-%m-%d"
        for s in tl.series:
            for first, last, cell in collapsed(s):
                when = first.strftime(fmt) if first == last else (
                    f"{first.strftime(fmt)} .. {last.strftime(fmt)}")
                if cell is None:
                    yield [s.service, s.vantage, when, 0, "gap (no runs)", *([""] * len(shown))]
                else:
                    yield [s.service, s.vantage, when, cell.runs, cell.state,
                           *(cell.counts[v] or "" for v in shown)]

    _emit(args, f"verdicts per {args.bucket} (UTC)",
          ["service", "vantage", args.bucket, "runs", "state", *shown], table_rows())
    return EXIT_OK


def _changes(args: argparse.Namespace) -> int:
    from blockwatch.reports.analysis import change_points

    with _store(args) as store:
        results = change_points(store, _filters(args), _min_sweeps(args))
    cols = ["service", "vantage", "change", "last_before", "first_after", "window_h",
            "confidence", "sweeps_before", "sweeps_after"]
    rows = [[c.service, c.vantage, c.kind, _t(c.last_before), _t(c.first_after),
             round(c.window_hours, 2), c.confidence, c.sweeps_before, c.sweeps_after]
            for r in results for c in r.changes]
    rows += [[r.service, r.vantage, "blocked from start", None, _t(r.first), None, None, None,
              None] for r in results if r.initial == "blocked"]
    _emit(args, f"change points ({len(results)} series; state needs {args.min_sweeps} sweeps)",
          cols, rows)
    if not rows and args.format == "table":  # an empty table says why (on stderr: not data)
        print("no change point: " + (
            f"a state is established by {args.min_sweeps} consecutive agreeing sweeps (ok, or "
            "blocked/partial) of a service from a vantage, and none of the "
            f"{len(results)} series changed or started blocked (--min-sweeps N to ask for "
            "fewer)" if results else "no run matches the selection"), file=sys.stderr)
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    from blockwatch.reports.analysis import comparison

    events = _load_events(args)
    with _store(args) as store:
        found = comparison(store, events, _filters(args), _min_sweeps(args))
    records = [c.record() for c in found]
    cols = ["event_id", "service", "country", "event", "reported", "precision", "vantage",
            "observed_from", "observed_by", "diff_days", "label", "confidence", "source",
            "note"]
    if args.format == "table":
        cols = ["service", "event", "reported", "vantage", "observed_from", "observed_by",
                "diff_days", "label", "note"]
    _emit(args, "observed vs reported", cols, ([r[c] for c in cols] for r in records))
    return EXIT_OK


def _html(args: argparse.Namespace) -> int:
    from blockwatch.reports.html import report_html

    events = _load_events(args)
    with _store(args) as store:
        page = report_html(store, events, _filters(args), args.bucket, _min_sweeps(args),
                           title=args.title)
    try:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(page)
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror}") from None
    print(f"report written to {args.output} ({len(page) // 1024} KiB)", file=sys.stderr)
    return EXIT_OK


def _events(args: argparse.Namespace) -> int:
    events = _load_events(args)
    wanted = {s.lower() for s in args.service or ()}
    events = [e for e in events if (not wanted or e.service in wanted)
              and (not args.country or e.country == args.country.upper())]
    cols = ["id", "service", "country", "event", "date", "precision", "end_date",
            "mechanism", "source", "source_date", "reference", "confidence", "notes"]
    if args.format == "table":
        cols = ["id", "service", "country", "event", "date", "source", "confidence"]

    def value(e: Any, c: str) -> Any:
        if c == "date":
            return e.date_text if args.format == "table" else e.date.isoformat()
        v = getattr(e, c)
        return v.isoformat() if isinstance(v, dt.date) else v

    _emit(args, f"{len(events)} reported events", cols,
          ([value(e, c) for c in cols] for e in events))
    return EXIT_OK


# --- query ------------------------------------------------------------------------------------


def cmd_query(args: argparse.Namespace) -> int:
    from blockwatch.storage.errors import QueryError, hide_password
    from blockwatch.storage.readonly import read_only_engine, read_only_query

    url = _url(args)
    engine = read_only_engine(url)
    try:
        result = read_only_query(engine, args.sql, where=hide_password(url))
        _emit(args, "", result.columns, result.rows,
              limit=max(args.limit, 0) if args.format == "table" else None)
    except QueryError as exc:  # the statement is wrong: bad input (2), not the database (3)
        raise UsageError(f"bad query: {exc}") from None
    finally:
        engine.dispose()
    return EXIT_OK
