"""The demo's HTML report: one self-contained page, plots inline.

``render_report(data, path)`` writes ``path`` (and nothing else): plots are
SVG drawn with matplotlib's non-interactive backend and embedded in the
page, so the file opens anywhere, offline, and can be archived as it is.
It is a pure function of ``ReportData``; the demo gathers the data.

What each plot shows (every series may be empty: its panel then says that
nothing was measured rather than drawing an empty axis):

* **scores** -- the distribution of the scores each model version gave;
* **live ROC AUC** -- per event-time window, the AUC of the scores against
  the labels that have arrived, with the drift and the champion swap marked;
* **consumer lag** -- the speed layer's total lag over the run;
* **produce-to-score latency** -- its distribution, with p50 and p99;
* **served lookups** -- the serving layer's lookup latencies.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: One point of the live AUC: (window end in epoch ms, AUC, model version).
AucPoint = tuple[int, float, str]


@dataclass(frozen=True)
class ReportData:
    """What the demo measured. Times are epoch milliseconds (event time)
    unless a name says seconds; latencies are milliseconds."""

    title: str
    #: Key facts, shown as a table in this order (e.g. "champion": "v2").
    summary: Mapping[str, str] = field(default_factory=dict)
    #: (step, seconds it took), in order.
    steps: Sequence[tuple[str, float]] = ()
    #: Model version -> the scores it gave.
    scores: Mapping[str, Sequence[float]] = field(default_factory=dict)
    auc: Sequence[AucPoint] = ()
    #: Named moments on the AUC plot, e.g. {"drift": ms, "swap to v2": ms}.
    marks: Mapping[str, int] = field(default_factory=dict)
    #: (seconds since the speed layer started, total lag in records).
    lag: Sequence[tuple[float, int]] = ()
    score_latency_ms: Sequence[float] = ()
    lookup_latency_ms: Sequence[float] = ()


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by the nearest-rank rule, or None
    for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0-100")
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def render_report(data: ReportData, path: Path) -> Path:
    """Write the report for ``data`` to ``path`` (parents created) and
    return the path."""
    sections = [
        _table("Summary", list(data.summary.items())),
        _table("Steps", [(name, f"{seconds:.1f} s") for name, seconds in data.steps]),
        _figure("Score distribution by model version", "scores", _plot_scores, data),
        _figure("Live ROC AUC as labels arrive", "auc", _plot_auc, data),
        _figure("Speed-layer consumer lag", "lag", _plot_lag, data),
        _figure("Produce-to-score latency", "score-latency",
                lambda ax, d: _plot_latency(ax, d.score_latency_ms), data),
        _figure("Served lookup latency", "lookup-latency",
                lambda ax, d: _plot_latency(ax, d.lookup_latency_ms), data),
    ]
    title = html.escape(data.title)
    page = (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title}</title><style>{_CSS}</style></head>\n"
            f"<body><h1>{title}</h1>\n" + "\n".join(sections) + "\n</body></html>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


_CSS = ("body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{padding:.2em .8em;border-bottom:1px solid #ddd;"
        "text-align:left}section{margin:2em 0}.empty{color:#a00}")


def _table(heading: str, rows: list[tuple[str, str]]) -> str:
    if not rows:
        return (f"<section><h2>{html.escape(heading)}</h2>"
                "<p class=\"empty\">nothing recorded</p></section>")
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in rows)
    return f"<section><h2>{html.escape(heading)}</h2><table>{body}</table></section>"


def _figure(heading: str, ident: str, plot: Any, data: ReportData) -> str:
    import matplotlib

    matplotlib.use("Agg")  # no display; must come before pyplot is imported
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 3.2))
    try:
        empty_reason = plot(axes, data)
        if empty_reason:
            return (f"<section id=\"{ident}\"><h2>{html.escape(heading)}</h2>"
                    f"<p class=\"empty\">{html.escape(empty_reason)}</p></section>")
        figure.tight_layout()
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg")
    finally:
        pyplot.close(figure)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML prolog: the SVG is inline
    return f"<section id=\"{ident}\"><h2>{html.escape(heading)}</h2>{svg}</section>"


def _plot_scores(axes: Any, data: ReportData) -> str | None:
    series = {version: list(s) for version, s in data.scores.items() if len(s)}
    if not series:
        return "no scores were recorded"
    for version, scores in sorted(series.items()):
        axes.hist(scores, bins=40, range=(0.0, 1.0), alpha=0.5,
                  label=f"{version} ({len(scores):,} scores)")
    axes.set_xlabel("score")
    axes.set_ylabel("events")
    axes.set_yscale("log")
    axes.legend()
    return None


def _plot_auc(axes: Any, data: ReportData) -> str | None:
    if not data.auc:
        return "no window had both fraud and legitimate labels yet"
    by_version: dict[str, list[tuple[datetime, float]]] = {}
    for end_ms, auc, version in data.auc:
        by_version.setdefault(version, []).append((_utc(end_ms), auc))
    for version, points in sorted(by_version.items()):
        axes.plot(*zip(*points, strict=True), marker="o", label=version)
    for name, at_ms in data.marks.items():
        axes.axvline(_utc(at_ms), linestyle="--", color="grey")
        axes.annotate(name, (_utc(at_ms), 0.05), rotation=90, fontsize=8)
    # From 0: a drifted model can rank worse than chance (the dotted line).
    axes.axhline(0.5, linestyle=":", color="grey")
    axes.set_ylim(0.0, 1.02)
    axes.set_xlabel("event time (UTC), window end")
    axes.figure.autofmt_xdate()
    axes.set_ylabel("ROC AUC")
    axes.legend()
    return None


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _plot_lag(axes: Any, data: ReportData) -> str | None:
    if not data.lag:
        return "no lag was sampled"
    axes.plot(*zip(*data.lag, strict=True))
    axes.set_xlabel("seconds since the speed layer started")
    axes.set_ylabel("records behind")
    return None


def _plot_latency(axes: Any, latencies: Sequence[float]) -> str | None:
    if not latencies:
        return "no latency was measured"
    values = [max(v, 0.01) for v in latencies]  # log axis; a 0 ms sample is < 10 us
    axes.hist(values, bins=50)
    for q in (50, 99):
        at = percentile(values, q) or 0.0  # values is not empty
        axes.axvline(at, linestyle="--", color="black")
        axes.annotate(f"p{q} {at:.1f} ms", (at, 0), rotation=90, fontsize=8,
                      xytext=(3, 10), textcoords="offset points")
    axes.set_xlabel("milliseconds")
    axes.set_ylabel("count")
    return None
