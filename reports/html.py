"""The HTML report: one self-contained file (inline CSS and SVG, no script, no network).

From the top: the headline (what is blocked where, at which layer, since when, against which
reported dates), the comparison with reported events, the change points, one section per
service (a timeline chart with labelled axes, its runs by verdict and layer, its reported
events),
the method, and at the bottom the details a reader rarely needs first (database, configuration
hashes, software versions of every vantage). A section with nothing to show says why.

Every string from the database or an events file is HTML-escaped and made printable (``_e``).
Charts are in ``reports.charts``.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from blockwatch.probes.textsafe import printable
from blockwatch.reports.analysis import comparison
from blockwatch.reports.changes import DEFAULT_MIN_SWEEPS, SeriesResult
from blockwatch.reports.charts import X_LABEL, chart, y_label
from blockwatch.reports.compare import Comparison
from blockwatch.reports.events import Event
from blockwatch.reports.headline import Line, analyse, layer_text
from blockwatch.reports.timeline import VERDICTS, Timeline
from blockwatch.storage import Store
from blockwatch.storage.queries import (
    NO_FILTERS,
    Bucket,
    Filters,
    VantageInfo,
    vantages,
)

ORDER = {v: i for i, v in enumerate(VERDICTS)}
LABEL_COLOURS = {"agrees": "#2e7d32", "observed before report": "#1565c0",
                 "observed later": "#ef6c00", "not observed": "#6a1b9a", "no data": "#757575",
                 "not covered": "#9e9e9e"}
# the chart bucket for the span of the data: at most ~730 buckets, never one bucket for all
AUTO_BUCKETS: tuple[tuple[dt.timedelta, Bucket], ...] = (
    (dt.timedelta(days=730), "week"), (dt.timedelta(days=14), "day"),
    (dt.timedelta(hours=6), "hour"))

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;
background:#fafafa}
main{max-width:1200px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:32px 0 8px;border-bottom:2px solid #ddd}
h3{font-size:17px;margin:20px 0 6px}
table{border-collapse:collapse;margin:8px 0;background:#fff;font-size:14px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}
.label{color:#fff;border-radius:4px;padding:1px 6px;white-space:nowrap}
.muted{color:#666;font-size:13px}.chart svg{width:100%;height:auto;background:#fff}
.service{background:#fff;border:1px solid #e0e0e0;border-radius:6px;padding:8px 16px;margin:16px 0}
#headline{background:#fff;border:2px solid #d32f2f;border-radius:6px;padding:4px 16px 8px}
#headline h2{border:0;margin-top:8px}.empty{color:#555;font-style:italic}
"""


@dataclass(frozen=True, slots=True)
class ReportInput:
    title: str
    database: str
    generated_at: dt.datetime
    timeline: Timeline
    results: Sequence[SeriesResult]
    lines: Sequence[Line]
    comparisons: Sequence[Comparison]
    events: Sequence[Event]
    vantages: Sequence[VantageInfo]
    min_sweeps: int


def render(r: ReportInput) -> str:
    services = sorted({s.service for s in r.timeline.series})
    first = min((v.first for v in r.vantages), default=None)
    last = max((v.last for v in r.vantages), default=None)
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8>"
             f"<title>{_e(r.title)}</title><style>{CSS}</style></head><body><main>",
             f"<h1>{_e(r.title)}</h1><p class=muted>runs from {_t(first)} to {_t(last)} UTC · "
             f"{len(services)} services, {len(r.vantages)} vantages · generated "
             f"{r.generated_at:%Y-%m-%d %H:%M} UTC · database and configurations in "
             "<a href='#details'>Details</a></p>",
             _headline(r), _comparisons(r), _changes(r.results, r.min_sweeps)]
    if not services:
        parts.append("<h2>Timelines</h2><p class=empty>No run matches the selection (services, "
                     "vantages, dates): there is nothing to draw.</p>")
    for service in services:
        parts.append(_service(r, service))
    parts += [_method(r.min_sweeps), _details(r), "</main></body></html>"]
    return "\n".join(parts)


def _e(value: object) -> str:
    """Text for the page: no markup (HTML-escaped), no control character (``printable``)."""
    return html.escape(printable("" if value is None else str(value)))


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], num: Sequence[int] = ()) -> str:
    out = ["<table><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(
            f"<td class=num>{c}</td>" if i in num else f"<td>{c}</td>"
            for i, c in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _t(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def _empty(text: str) -> str:
    return f"<p class=empty>{text}</p>"


def _countries(r: ReportInput) -> dict[str, str | None]:
    return {v.vantage: v.country for v in r.vantages}


def _where(vantage: str, country: str | None) -> str:
    return f"{_e(vantage)} ({_e(country)})" if country else _e(vantage)


def _headline(r: ReportInput) -> str:
    countries = _countries(r)
    blocked = [ln for ln in r.lines if ln.status == "blocked"]
    unconfirmed = [ln for ln in r.lines if ln.status == "unconfirmed"]
    ended = [ln for ln in r.lines if ln.status == "ended"]
    last = max((ln.last_at for ln in r.lines), default=None)
    out = ["<section id=headline><h2>What is blocked where</h2>"]
    if blocked:
        svc = sorted({ln.service for ln in blocked})
        where = sorted({_where(ln.vantage, countries.get(ln.vantage)) for ln in blocked})
        out.append(f"<p><b>As of the last sweep ({_t(last)} UTC), {len(svc)} service"
                   f"{'s are' if len(svc) != 1 else ' is'} blocked</b> ({_e(', '.join(svc))}) "
                   f"at {', '.join(where)}.</p>")
        out.append(_table(("service", "where (vantage, country)", "layer", "blocked since (UTC)",
                           "last seen blocked", "reported dates (events dataset)"),
                          ((_e(ln.service), _where(ln.vantage, countries.get(ln.vantage)),
                            _e(layer_text(ln)), _since(ln), _t(ln.last_blocked),
                            _reported(r, ln, countries.get(ln.vantage))) for ln in blocked)))
    elif r.lines:
        out.append(_empty(f"Nothing is blocked as of the last sweep ({_t(last)} UTC): no "
                          f"service has {r.min_sweeps} consecutive blocked sweeps still "
                          "standing at any vantage."))
    else:
        out.append(_empty("No service verdicts match the selection, so nothing can be said "
                          "about blocking."))
    if unconfirmed:
        out.append(f"<h3>Not confirmed</h3><p>Blocked in some sweeps, but never in {r.min_sweeps}"
                   " consecutive ones, so no state is established (see Method):</p>" + _table(
                       ("service", "where (vantage, country)", "blocked sweeps", "layer",
                        "last sweep"),
                       ((_e(ln.service), _where(ln.vantage, countries.get(ln.vantage)),
                         f"{ln.blocked_sweeps} of {ln.conclusive}", _e(layer_text(ln)),
                         f"{_t(ln.last_at)} {_e(ln.last_verdict)}") for ln in unconfirmed),
                       num=(2,)))
    if ended:
        items = ", ".join(f"{_e(ln.service)} @ {_e(ln.vantage)} (blocked "
                          f"{_t(ln.since)} → {_t(ln.end.first_after if ln.end else None)})"
                          for ln in ended)
        out.append(f"<p class=muted>Blocking that ended: {items}.</p>")
    out.append("</section>")
    return "".join(out)


def _since(ln: Line) -> str:
    if ln.onset is None:
        return f"{_t(ln.since)} <span class=muted>(our first sweep: it may be older)</span>"
    return (f"{_t(ln.onset.first_after)} <span class=muted>(after {_t(ln.onset.last_before)},"
            f" confidence {ln.onset.confidence:.2f})</span>")


def _reported(r: ReportInput, ln: Line, country: str | None) -> str:
    if not country:
        return "<span class=muted>vantage without a country: set [vantage] country</span>"
    labels = {c.event.id: c for c in r.comparisons if c.vantage == ln.vantage}
    found = []
    for e in r.events:
        if e.service == ln.service and e.country == country:
            c = labels.get(e.id)
            verdict = "" if c is None else (
                f" <span class=label style='background:{LABEL_COLOURS.get(c.label, '#555')}'>"
                f"{_e(c.label)}</span>")
            found.append(f"{_e(e.event)} {_e(e.date_text)}{verdict}")
    return "<br>".join(found) or f"<span class=muted>none for {_e(country)}</span>"


def _changes(results: Sequence[SeriesResult], k: int) -> str:
    rows = []
    for res in results:
        for c in res.changes:
            rows.append((_e(c.service), _e(c.vantage), _e(c.kind), _t(c.last_before),
                         _t(c.first_after), f"{c.window_hours:.1f} h", f"{c.confidence:.2f}",
                         str(c.sweeps_before), str(c.sweeps_after)))
    if rows:
        body = _table(("service", "vantage", "change", "last sweep before", "first sweep after",
                       "window", "confidence", "sweeps before", "sweeps after"), rows,
                      num=(5, 6, 7, 8))
    else:
        most = max((res.conclusive for res in results), default=0)
        rule = (f"A state is established by {k} consecutive agreeing conclusive sweeps (ok or "
                f"blocked; --min-sweeps), and a change point is a switch from one established "
                f"state to the other")
        body = _empty(
            f"No change of state was detected. {rule}, so a series needs at least {2 * k} "
            f"conclusive sweeps to show one; the longest series here has {most}."
            if most < 2 * k else
            f"No change of state was detected: {rule}, and no series switched.")
    steady = [f"{_e(res.service)} @ {_e(res.vantage)}" for res in results
              if res.initial == "blocked"]
    note = (f"<p class=muted>Blocked from the first sweep: {', '.join(steady)}</p>"
            if steady else "")
    return "<h2>Change points</h2>" + body + note


def _comparisons(r: ReportInput) -> str:
    cs = r.comparisons
    if not cs:
        known = sorted({c for c in _countries(r).values() if c})
        why = ("no vantage has a country (set <code>country</code> in the config's "
               "<code>[vantage]</code> table), and reported events are matched by country"
               if not known else
               f"the events dataset has no blocking or unblocking event for a shown service in "
               f"{_e(', '.join(known))}")
        return f"<h2>Observed vs reported</h2>{_empty(f'Nothing to compare: {why}.')}"
    rows = []
    unmeasured = sorted({f"{c.event.service} @ {c.vantage}" for c in cs if c.window_end is None
                         and c.label == "no data"})
    for c in cs:
        if c.window_end is None and c.label == "no data":
            continue  # listed in one line below the table
        colour = LABEL_COLOURS.get(c.label, "#555")
        rows.append((_e(c.event.service), _e(c.event.event), _e(c.event.date_text),
                     _e(c.vantage), f"{_t(c.window_start)} → {_t(c.window_end)}",
                     "" if c.diff_days is None else f"{c.diff_days:+.1f}",
                     f"<span class=label style='background:{colour}'>{_e(c.label)}</span>",
                     _e(c.event.source) + (f"<br><span class=muted>{_e(c.note)}</span>"
                                           if c.note else "")))
    table = _table(("service", "event", "reported", "vantage", "observed window", "Δ days",
                    "label", "source"), rows, num=(5,)) if rows else _empty(
        "No reported event falls within the measured sweeps.")
    return "<h2>Observed vs reported</h2>" + table + (
        f"<p class=muted>Reported but never measured (no data): {_e(', '.join(unmeasured))}"
        "</p>" if unmeasured else "")


def _service(r: ReportInput, service: str) -> str:
    series = [s for s in r.timeline.series if s.service == service]
    changes = [c for res in r.results if res.service == service for c in res.changes]
    events = [e for e in r.events if e.service == service]
    parts = [f"<section class=service><h2>{_e(service)}</h2>",
             f"<div class=chart role=img aria-label='{_e(service)}: "
             f"{_e(y_label(r.timeline.bucket))} by {_e(X_LABEL)}'>"
             f"{chart(series, r.timeline, changes, events)}</div>"]
    lines = [ln for ln in r.lines if ln.service == service]
    parts.append("<h3>Runs by verdict and layer</h3>" + (_layers(lines) if lines else _empty(
        "No service verdict of this service matches the selection.")))
    parts.append("<h3>Reported events</h3>")
    if events:
        parts.append(_table(
            ("date", "country", "event", "mechanism", "source", "notes"),
            ((_e(e.date_text), _e(e.country), _e(e.event), _e(e.mechanism),
              _e(f"{e.source} ({e.source_date}) {e.reference}"), _e(e.notes)) for e in events)))
    else:
        known = sorted({c for c in _countries(r).values() if c})
        parts.append(_empty(
            f"The events dataset has no event for {_e(service)} in "
            f"{_e(', '.join(known))}." if known else
            "No vantage has a country, so no reported event can be matched."))
    parts.append("</section>")
    return "".join(parts)


def _layers(lines: Sequence[Line]) -> str:
    """Per vantage and service verdict: runs, and the layers the verdicts named."""
    rows = []
    for ln in lines:
        totals: dict[str, int] = {}
        named: dict[str, list[str]] = {}
        for verdict, layer, n in ln.by_layer:
            totals[verdict] = totals.get(verdict, 0) + n
            if layer:
                named.setdefault(verdict, []).append(f"{_e(layer)} {n:,}")
        order = sorted(totals, key=lambda v: (ORDER.get(v, len(ORDER)), v))
        rows += [(_e(ln.vantage), _e(v), f"{totals[v]:,}", ", ".join(named.get(v, [])) or "-")
                 for v in order]
    return _table(("vantage", "service verdict", "runs", "layer named (runs)"), rows,
                  num=(2,)) + ("<p class=muted>Measurement-level counts (each probe's verdicts) "
                               "are in <code>blockwatch export</code> and "
                               "<code>reports.load()</code>.</p>")


def _method(k: int) -> str:
    return (
        "<h2>Method</h2><p>Each run's service verdict is a state: <b>ok</b>; <b>blocked</b> "
        "(blocked or partial); or no evidence (down, inconclusive, network unavailable), which "
        "is skipped. A state is established after "
        f"{k} consecutive agreeing sweeps; a change point is a switch of established state, "
        "placed where the most sweeps agree with it. Its window runs from the last sweep in "
        "the old state to the first sweep in the new one; its confidence is the share of the "
        f"conclusive sweeps within {2 * k} on either side that agree with it. Reported dates "
        "agree when the window overlaps the reported day, month or year widened by one day. "
        "The headline lists a service as blocked at a vantage when its last established state "
        "there is blocked; its layers are those named by the blocked sweeps since then.</p>")


def _details(r: ReportInput) -> str:
    rows = [(_e(v.vantage), _e(v.country or "?"), str(v.runs), _t(v.first), _t(v.last),
             _e(", ".join(f"{k} {n}" for k, n in v.statuses.items())),
             _e(", ".join(v.software_versions)), _e(", ".join(h[:12] for h in v.config_hashes)))
            for v in r.vantages]
    runs = _table(("vantage", "country", "runs", "first run", "last run", "run status",
                   "blockwatch version", "config hash"), rows, num=(2,)) if rows else _empty(
        "No run matches the selection.")
    return (f"<h2 id=details>Details</h2><p class=muted>database {_e(r.database)} · generated "
            f"{r.generated_at:%Y-%m-%d %H:%M:%S} UTC · chart bucket: {_e(r.timeline.bucket)} · "
            f"a state needs {r.min_sweeps} sweeps</p><h3>How the runs were configured</h3>"
            + runs)


def auto_bucket(infos: Sequence[VantageInfo], filters: Filters) -> Bucket:
    """The chart bucket for the span of the runs shown: week beyond two years, day beyond two
    weeks, hour beyond six hours, else minute."""
    if not infos:
        return "day"
    first = max([min(v.first for v in infos), *([filters.since] if filters.since else [])])
    last = min([max(v.last for v in infos), *([filters.until] if filters.until else [])])
    for longer_than, bucket in AUTO_BUCKETS:
        if last - first > longer_than:
            return bucket
    return "minute"


def report_html(store: Store, events: Sequence[Event], filters: Filters = NO_FILTERS,
                bucket: Bucket | None = None, min_sweeps: int = DEFAULT_MIN_SWEEPS,
                title: str = "blockwatch report") -> str:
    """Gather everything from ``store`` and render the page (``bucket`` None: ``auto_bucket``)."""
    infos = [v for v in vantages(store) if not filters.vantages or v.vantage in filters.vantages]
    found = analyse(store, filters, min_sweeps, bucket or auto_bucket(infos, filters))
    results, lines, tl = found.results, found.lines, found.timeline
    shown = {s.service for s in tl.series}
    country_set = {v.country for v in infos}
    relevant = [e for e in events if e.service in shown and e.country in country_set]
    return render(ReportInput(
        title=title, database=store.url, generated_at=dt.datetime.now(dt.UTC), timeline=tl,
        results=results, lines=lines,
        comparisons=comparison(store, events, filters, min_sweeps, results=results),
        events=relevant, vantages=infos,
        min_sweeps=min_sweeps))
