"""The HTML report's timeline chart: one panel per vantage, stacked verdict counts per bucket.

Drawn with matplotlib's Agg/SVG backends (no display needed), text kept as SVG text so that it
stays sharp, searchable and readable by a browser or a test. Every axis says what it measures:
the y axis counts runs per bucket (``runs per hour``), the x axis is the time in UTC, clipped
to the buckets that hold data (three minutes of runs are drawn as three minutes, not as a day).
Names from the database pass through ``mathtext`` (drawn, never parsed as formulas).
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Sequence
from typing import Any

from blockwatch.probes.textsafe import mathtext
from blockwatch.reports.changes import ChangePoint
from blockwatch.reports.events import Event
from blockwatch.reports.timeline import STEP, Series, Timeline

COLOURS = {"ok": "#4caf50", "blocked": "#d32f2f", "partial": "#f57c00", "down": "#9e9e9e",
           "inconclusive": "#c5cae9", "network_unavailable": "#6d4c41"}
X_LABEL = "time (UTC)"


def y_label(bucket: str) -> str:
    """The y axis's label: what one unit of bar height is."""
    return f"runs per {bucket}"


def span(tl: Timeline) -> tuple[dt.datetime, dt.datetime] | None:
    """The x axis's limits: the start of the first bucket with runs to the end of the last."""
    if not tl.buckets:
        return None
    return tl.buckets[0], tl.buckets[-1] + STEP[tl.bucket]


def chart(series: Sequence[Series], tl: Timeline, changes: Sequence[ChangePoint],
          events: Sequence[Event]) -> str:
    """One panel per vantage: stacked areas of verdict counts per bucket; gaps stay empty;
    detected changes as solid lines, reported events (inside the data's span) as dashed
    ones. Returns the ``<svg>`` element."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    plt.rcParams["svg.fonttype"] = "none"
    # margins in inches, not tight_layout (which draws the figure once more to measure it)
    height = 1.5 + 1.6 * len(series)
    fig, axes = plt.subplots(len(series), 1, figsize=(11, height), sharex=True,
                             squeeze=False, gridspec_kw={"hspace": 0.45})
    fig.subplots_adjust(left=0.9 / 11, right=1 - 0.25 / 11, top=1 - 0.65 / height,
                        bottom=0.95 / height)
    step = STEP[tl.bucket]
    limits = span(tl)
    for ax, s in zip(axes[:, 0], series, strict=True):
        ax.xaxis_date(tz=dt.UTC)
        _panel(ax, s, tl, step)
        for c in changes:
            if c.vantage == s.vantage:
                ax.axvline(c.first_after, color="#000", linewidth=1.4)
        for e in events:
            start, _ = e.interval()
            if start is not None and limits and limits[0] <= start <= limits[1]:
                ax.axvline(start, color="#1565c0", linestyle="--", linewidth=1.2)
        ax.set_title(mathtext(s.vantage), loc="left", fontsize=11)
        ax.set_ylabel(y_label(tl.bucket), fontsize=10)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=3, integer=True, min_n_ticks=2))
        ax.set_ylim(bottom=0)
        ax.spines[["top", "right"]].set_visible(False)
    if limits:
        axes[-1, 0].set_xlim(*limits)
    handles: dict[str, Any] = {}
    for ax in axes[:, 0]:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    fig.legend(list(handles.values()), list(handles), loc="upper center",
               ncol=len(handles) + 1, frameon=False, fontsize=10)
    loc = mdates.AutoDateLocator(minticks=3, maxticks=9)  # type: ignore[no-untyped-call]
    bottom = axes[-1, 0]
    bottom.xaxis.set_major_locator(loc)
    bottom.xaxis.set_major_formatter(
        mdates.ConciseDateFormatter(loc))  # type: ignore[no-untyped-call]
    bottom.set_xlabel(X_LABEL, fontsize=10)
    fig.text(0.01, 0.08 / height, f"bar height: runs per {tl.bucket}, stacked by the "
             "service's verdict; black line: detected change; blue dashes: reported date; "
             "blank: no runs",
             fontsize=9, color="#555")
    buf = io.StringIO()
    fig.savefig(buf, format="svg",
                metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def _panel(ax: Any, s: Series, tl: Timeline, step: dt.timedelta) -> None:
    """Step areas, one path per verdict: a small SVG whatever the number of buckets (x as
    matplotlib date numbers, converted once)."""
    import matplotlib.dates as mdates

    if not s.cells:
        return
    x = list(mdates.date2num(  # type: ignore[no-untyped-call]
        [c.start for c in s.cells] + [s.cells[-1].start + step]))
    bottom = [0] * len(x)
    for verdict in tl.verdicts:
        ys = [c.counts[verdict] for c in s.cells]
        if any(ys):
            ys.append(ys[-1])
            top = [b + y for b, y in zip(bottom, ys, strict=True)]
            ax.fill_between(x, bottom, top, step="post", linewidth=0,
                            color=COLOURS.get(verdict, "#000"), label=mathtext(verdict))
            bottom = top
