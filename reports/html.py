"""The HTML report: one self-contained file (inline CSS and SVG, no script, no network) with a
timeline chart per service, the change points, the comparison with reported events, the
per-layer breakdown and how the runs were configured.

Every string from the database or an events file is HTML-escaped. Charts are drawn with
matplotlib's Agg/SVG backends (no display needed), text kept as text so it stays sharp and
searchable.
"""

from __future__ import annotations

import datetime as dt
import html
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from blockwatch.probes.textsafe import mathtext, printable
from blockwatch.reports.analysis import change_points, comparison
from blockwatch.reports.changes import DEFAULT_MIN_SWEEPS, SeriesResult
from blockwatch.reports.compare import Comparison
from blockwatch.reports.events import Event
from blockwatch.reports.timeline import STEP, Series, Timeline, timeline
from blockwatch.storage import Store
from blockwatch.storage.queries import (
    NO_FILTERS,
    Bucket,
    Filters,
    LayerCount,
    VantageInfo,
    layer_counts,
    vantages,
)

COLOURS = {"ok": "#4caf50", "blocked": "#d32f2f", "partial": "#f57c00", "down": "#9e9e9e",
           "inconclusive": "#c5cae9", "network_unavailable": "#6d4c41"}
LABEL_COLOURS = {"agrees": "#2e7d32", "observed before report": "#1565c0",
                 "observed later": "#ef6c00", "not observed": "#6a1b9a", "no data": "#757575",
                 "not covered": "#9e9e9e"}

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
"""


@dataclass(frozen=True, slots=True)
class ReportInput:
    title: str
    database: str
    generated_at: dt.datetime
    timeline: Timeline
    results: Sequence[SeriesResult]
    comparisons: Sequence[Comparison]
    events: Sequence[Event]
    layers: Sequence[LayerCount]
    vantages: Sequence[VantageInfo]
    min_sweeps: int


def render(r: ReportInput) -> str:
    services = sorted({s.service for s in r.timeline.series})
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8>"
             f"<title>{_e(r.title)}</title><style>{CSS}</style></head><body><main>",
             f"<h1>{_e(r.title)}</h1><p class=muted>database {_e(r.database)} · generated "
             f"{r.generated_at:%Y-%m-%d %H:%M} UTC · times in UTC · {len(services)} services, "
             f"{len(r.vantages)} vantages</p>",
             _vantages(r.vantages), _changes(r.results), _comparisons(r.comparisons)]
    for service in services:
        parts.append(_service(r, service))
    parts.append(_method(r.min_sweeps))
    parts.append("</main></body></html>")
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


def _vantages(vs: Sequence[VantageInfo]) -> str:
    rows = [(_e(v.vantage), _e(v.country or "?"), str(v.runs), _t(v.first), _t(v.last),
             _e(", ".join(f"{k} {n}" for k, n in v.statuses.items())),
             _e(", ".join(v.software_versions)), _e(", ".join(h[:12] for h in v.config_hashes)))
            for v in vs]
    return ("<h2>How the runs were configured</h2>" + _table(
        ("vantage", "country", "runs", "first run", "last run", "run status",
         "blockwatch version", "config hash"), rows, num=(2,)))


def _changes(results: Sequence[SeriesResult]) -> str:
    rows = []
    for res in results:
        for c in res.changes:
            rows.append((_e(c.service), _e(c.vantage), _e(c.kind), _t(c.last_before),
                         _t(c.first_after), f"{c.window_hours:.1f} h", f"{c.confidence:.2f}",
                         str(c.sweeps_before), str(c.sweeps_after)))
    body = _table(("service", "vantage", "change", "last sweep before", "first sweep after",
                   "window", "confidence", "sweeps before", "sweeps after"), rows,
                  num=(5, 6, 7, 8)) if rows else "<p>No change of state was detected.</p>"
    steady = [f"{_e(r.service)} @ {_e(r.vantage)}" for r in r_blocked(results)]
    note = (f"<p class=muted>Blocked from the first sweep: {', '.join(steady)}</p>"
            if steady else "")
    return "<h2>Change points</h2>" + body + note


def r_blocked(results: Sequence[SeriesResult]) -> list[SeriesResult]:
    return [r for r in results if r.initial == "blocked"]


def _comparisons(cs: Sequence[Comparison]) -> str:
    if not cs:
        return ("<h2>Observed vs reported</h2><p>No reported event matches a vantage's "
                "country.</p>")
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
    return "<h2>Observed vs reported</h2>" + _table(
        ("service", "event", "reported", "vantage", "observed window", "Δ days", "label",
         "source"), rows, num=(5,)) + (
        f"<p class=muted>Reported but never measured (no data): {_e(', '.join(unmeasured))}"
        "</p>" if unmeasured else "")


def _service(r: ReportInput, service: str) -> str:
    series = [s for s in r.timeline.series if s.service == service]
    changes = [c for res in r.results if res.service == service for c in res.changes]
    events = [e for e in r.events if e.service == service]
    parts = [f"<section class=service><h2>{_e(service)}</h2>",
             f"<div class=chart>{chart(series, r.timeline, changes, events)}</div>"]
    layers = [lc for lc in r.layers if lc.service == service]
    if layers:
        parts.append("<h3>Per layer (current measurement verdicts)</h3>" + _layers(layers))
    if events:
        parts.append("<h3>Reported events</h3>" + _table(
            ("date", "country", "event", "mechanism", "source", "notes"),
            ((_e(e.date_text), _e(e.country), _e(e.event), _e(e.mechanism),
              _e(f"{e.source} ({e.source_date}) {e.reference}"), _e(e.notes)) for e in events)))
    parts.append("</section>")
    return "".join(parts)


def _layers(layers: Sequence[LayerCount]) -> str:
    verdicts = sorted({lc.verdict for lc in layers})
    table: dict[tuple[str, str], dict[str, int]] = {}
    for lc in layers:
        table.setdefault((lc.vantage, lc.probe), {})[lc.verdict] = lc.count
    rows = [(_e(v), _e(p), *(str(c.get(x, 0)) for x in verdicts))
            for (v, p), c in sorted(table.items())]
    return _table(("vantage", "layer", *verdicts), rows,
                  num=tuple(range(2, 2 + len(verdicts))))


def chart(series: Sequence[Series], tl: Timeline, changes: Sequence[object],
          events: Sequence[Event]) -> str:
    """One panel per vantage: stacked bars of verdict counts per bucket; gaps stay empty;
    detected changes as solid lines, reported events as dashed ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"
    fig, axes = plt.subplots(len(series), 1, figsize=(11, 1.5 + 1.3 * len(series)),
                             sharex=True, squeeze=False)
    step = STEP[tl.bucket]
    for ax, s in zip(axes[:, 0], series, strict=True):
        # step areas, one path per verdict: small SVG whatever the number of buckets
        x = [c.start for c in s.cells]
        if x:
            x.append(x[-1] + step)
        bottom = [0] * len(x)
        for verdict in tl.verdicts:
            ys = [c.counts[verdict] for c in s.cells]
            if any(ys):
                ys.append(ys[-1])
                top = [b + y for b, y in zip(bottom, ys, strict=True)]
                ax.fill_between(x, bottom, top, step="post", linewidth=0,
                                color=COLOURS.get(verdict, "#000"), label=mathtext(verdict))
                bottom = top
        for c in changes:
            if getattr(c, "vantage", None) == s.vantage:
                ax.axvline(c.first_after, color="#000", linewidth=1.4)  # type: ignore[attr-defined]
        for e in events:
            start, _ = e.interval()
            if start is not None and x and x[0] <= start <= x[-1] + dt.timedelta(days=1):
                ax.axvline(start, color="#1565c0", linestyle="--", linewidth=1.2)
        ax.set_ylabel(mathtext(s.vantage), rotation=0, ha="right", va="center", fontsize=11)
        ax.set_yticks([])
        ax.spines[["top", "right", "left"]].set_visible(False)
    handles: dict[str, Any] = {}
    for ax in axes[:, 0]:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    labels = list(handles)
    fig.legend(list(handles.values()), labels, loc="upper center", ncol=len(labels) + 1,
               frameon=False, fontsize=10)
    loc = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
    axes[-1, 0].xaxis.set_major_locator(loc)
    axes[-1, 0].xaxis.set_major_formatter(
        mdates.ConciseDateFormatter(loc))  # type: ignore[no-untyped-call]
    fig.text(0.01, 0.01, f"runs per {tl.bucket}; black line: detected change; blue dashes: "
             "reported date; blank: no runs", fontsize=9, color="#555")
    fig.tight_layout(rect=(0, 0.04, 1, 0.92))
    buf = io.StringIO()
    fig.savefig(buf, format="svg",
                metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def _method(k: int) -> str:
    return (
        "<h2>Method</h2><p>Each run's service verdict is a state: <b>ok</b>; <b>blocked</b> "
        "(blocked or partial); or no evidence (down, inconclusive, network unavailable), which "
        "is skipped. A state is established after "
        f"{k} consecutive agreeing sweeps; a change point is a switch of established state, "
        "placed where the most sweeps agree with it. Its window runs from the last sweep in "
        "the old state to the first sweep in the new one; its confidence is the share of the "
        f"conclusive sweeps within {2 * k} on either side that agree with it. Reported dates "
        "agree when the window overlaps the reported day, month or year widened by one day."
        "</p>")


def report_html(store: Store, events: Sequence[Event], filters: Filters = NO_FILTERS,
                bucket: Bucket | None = None, min_sweeps: int = DEFAULT_MIN_SWEEPS,
                title: str = "blockwatch report") -> str:
    """Gather everything from ``store`` and render the page. ``bucket`` None: days, or weeks
    when the runs span more than two years."""
    infos = [v for v in vantages(store) if not filters.vantages or v.vantage in filters.vantages]
    if bucket is None:
        span = (max(v.last for v in infos) - min(v.first for v in infos)) if infos else None
        bucket = "week" if span and span > dt.timedelta(days=730) else "day"
    results = change_points(store, filters, min_sweeps)
    tl = timeline(store, bucket, filters)
    shown = {s.service for s in tl.series}
    country_set = {v.country for v in infos}
    relevant = [e for e in events if e.service in shown and e.country in country_set]
    return render(ReportInput(
        title=title, database=store.url, generated_at=dt.datetime.now(dt.UTC), timeline=tl,
        results=results,
        comparisons=comparison(store, events, filters, min_sweeps, results=results),
        events=relevant, layers=layer_counts(store, filters), vantages=infos,
        min_sweeps=min_sweeps))
