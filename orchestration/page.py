"""The Lamina page as HTML: pure functions of a summary
(``lamina.orchestration.summary.collect_summary``); no scripts, every value
escaped, a section that is not available says why."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.2rem;color:#1b1f24;max-width:72rem}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem;border-bottom:1px solid #ccd}
table{border-collapse:collapse;margin:.4rem 0}td,th{border:1px solid #dde;padding:.2rem .5rem;
text-align:left;font-size:.9rem}th{background:#f3f4f8}.na{color:#8a4b00}.alert{color:#b00020}
.muted{color:#667}code{font-size:.85rem}
"""


def _e(value: Any) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        return html.escape(f"{value:.4g}")
    if isinstance(value, Mapping):
        return html.escape(", ".join(f"{k}={_fmt(v)}" for k, v in value.items())) or "&ndash;"
    return html.escape(str(value))


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _unavailable(section: Mapping[str, Any]) -> str | None:
    if section.get("available"):
        return None
    return f'<p class="na">not available: {_e(section.get("reason", "unknown"))}</p>'


def render_master(s: Mapping[str, Any]) -> str:
    na = _unavailable(s)
    if na:
        return na
    rows = [(v["version"], v["time"], v["operation"], v["rows_added"], v["rows_total"])
            for v in s["versions"]]
    return (f"<p>{_e(s['uri'])}: latest version <b>{_e(s['latest_version'])}</b>, "
            f"{_e(s['rows'])} rows in {_e(s['files'])} files</p>"
            + _table(["version", "committed", "operation", "rows added", "rows after"], rows))


def render_tile_store(s: Mapping[str, Any]) -> str:
    na = _unavailable(s)
    if na:
        return na
    rows = []
    for g in s["groups"]:
        if not g["published"]:
            rows.append((g["group"], "nothing published yet", None, None, None))
        else:
            rows.append((g["group"], g["cutoff"], g["batch_version"], g["horizon"],
                         g["published_at"]))
    return (f"<p>store: {_e(s['kind'])}</p>"
            + _table(["view group", "batch cutoff", "batch version", "answers until",
                      "published"], rows))


def render_registry(s: Mapping[str, Any]) -> str:
    na = _unavailable(s)
    if na:
        return na
    champion = (f"version <b>{_e(s['champion'])}</b> ({_e(s['champion_metrics'])})"
                if s["champion"] is not None else "none yet")
    rows = []
    for m in s["history"]:
        backtest = m.get("backtest") or {}
        rows.append((m["time"], m["action"], m["version"], m["previous"], m["reason"],
                     m["metrics"], m["previous_metrics"], backtest.get("candidate"),
                     backtest.get("champion")))
    history = (_table(["when", "move", "version", "previous champion", "why",
                       "metrics (version)", "metrics (previous)", "backtest (version)",
                       "backtest (champion)"], rows)
               if rows else '<p class="muted">no promotions yet</p>')
    return (f"<p>model {_e(s['model'])}: {_e(s['versions'])} versions; champion "
            f"{champion}</p>" + history)


def render_drift(s: Mapping[str, Any]) -> str:
    na = _unavailable(s)
    if na:
        return na
    verdict = ('<b class="alert">ALERT</b>' if s["alert"] else "no alert")
    rows = [(f["feature"], f["psi"], f["status"], "yes" if f["drifted"] else "no")
            for f in s["features"]]
    reasons = "".join(f"<li>{_e(r)}</li>" for r in s["reasons"])
    return (f"<p>{verdict} (model {_e(s['model_version'])}, written {_e(s['written_at'])})</p>"
            f"<ul>{reasons}</ul>" + _table(["feature", "PSI", "status", "drifted"], rows))


def render_consistency(s: Mapping[str, Any]) -> str:
    na = _unavailable(s)
    if na:
        return na
    rows = [(f["feature"], f["mismatch_rate"], f["mismatches"], f["attributed"])
            for f in s["features"]]
    unexplained = s.get("unexplained")
    verdict = ("" if unexplained is None else
               f'<b class="alert">{_e(unexplained)} unexplained</b>, ' if unexplained
               else "0 unexplained, ")
    return (f"<p>{verdict}{_e(s['events'])} events, written {_e(s['written_at'])}</p>"
            + _table(["feature", "mismatch rate", "mismatches", "attributed to"], rows))


def render_speed(s: Mapping[str, Any]) -> str:
    na = _unavailable(s)
    if na:
        return na
    if s["dlq_messages"] is None:
        dlq = f'<span class="na">not available: {_e(s["dlq_reason"])}</span>'
    else:
        dlq = f"<b>{_e(s['dlq_messages'])}</b> messages"
    out = f"<p>dead-letter topic {_e(s['dlq_topic'])}: {dlq}</p>"
    if s["metrics"] is None:
        out += f'<p class="na">lag: not available: {_e(s["metrics_reason"])}</p>'
    else:
        out += _table(["metric", "value"], sorted(s["metrics"].items()))
    return out


SECTIONS = (
    ("master", "Master dataset", render_master),
    ("tile_store", "Batch views in the tile store", render_tile_store),
    ("registry", "Champion and promotion history", render_registry),
    ("drift", "Drift per feature", render_drift),
    ("consistency", "Consistency report (online vs offline features)", render_consistency),
    ("speed", "Speed layer: lag and dead letters", render_speed),
)


def render_page(summary: Mapping[str, Any], *, user: str = "") -> str:
    """The whole page for a summary from ``collect_summary``; a section
    missing from it is shown as not available."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Lamina</title>"
             f"<style>{_STYLE}</style></head><body><h1>Lamina</h1>"
             f"<p class='muted'>home {_e(summary.get('home'))}; generated "
             f"{_e(summary.get('generated_at'))}"
             + (f" for {_e(user)}" if user else "")
             + "; as JSON: <a href='api/summary'>api/summary</a></p>"]
    for key, title, render in SECTIONS:
        section = summary.get(key) or {"available": False, "reason": "not collected"}
        parts.append(f"<section id='{key}'><h2>{html.escape(title)}</h2>{render(section)}"
                     "</section>")
    parts.append("</body></html>")
    return "".join(parts)
