"""`floatbridge report`: the dashboards' panels as static HTML with inline SVG charts, for machines
without Grafana. Panels and queries are read from the committed dashboard JSON."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from floatbridge.observability.promapi import PrometheusClient, PrometheusError, Series
from floatbridge.observability.queries import (
    DASHBOARDS_DIR,
    PanelQuery,
    load_dashboards,
    panel_queries,
    render_expr,
)

_DURATION = re.compile(r"^(\d+)(s|m|h|d|w)$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_LEGEND = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
MAX_POINTS = 240


def parse_duration(text: str) -> int:
    m = _DURATION.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"invalid duration {text!r}: use a positive number and s/m/h/d/w, e.g. 30m or 6h")
    return int(m.group(1)) * _SECONDS[m.group(2)]


def step_for(range_seconds: int) -> int:
    return max(1, range_seconds // MAX_POINTS)


def legend(fmt: str, labels: dict[str, str], expr: str) -> str:
    if fmt and fmt != "__auto":
        return _LEGEND.sub(lambda m: labels.get(m.group(1), ""), fmt)
    shown = {k: v for k, v in labels.items() if k != "__name__"}
    return ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) or expr[:60]


def format_value(value: float, unit: str) -> str:
    if unit == "percentunit":
        return f"{value * 100:.2f}%"
    if unit == "percent":
        return f"{value:.2f}%"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if abs(value) < 1 else f"{value:,.2f} s"
    if unit.startswith("currency"):
        return f"{value:,.2f} {unit.removeprefix('currency')}"
    return f"{value:,.4g}"


@dataclass
class PanelResult:
    title: str
    description: str
    unit: str
    panel_type: str
    series: dict[str, list[tuple[float, float]]]
    errors: list[str]


def fetch_panel(
    client: PrometheusClient, queries: list[PanelQuery], start: float, end: float, step: int
) -> PanelResult:
    first = queries[0]
    series: dict[str, list[tuple[float, float]]] = {}
    errors: list[str] = []
    rate = f"{max(4 * step, 60)}s"  # like Grafana: at least four scrape steps
    for q in queries:
        expr = render_expr(q.expr, rate_interval=rate, interval=f"{step}s", range_=f"{int(end - start)}s")
        try:
            result: list[Series] = client.query_range(expr, start, end, step)
        except PrometheusError as exc:
            errors.append(f"{q.ref_id}: {exc}")
            continue
        for s in result:
            series[legend(q.legend, s.labels, q.expr)] = s.points
    return PanelResult(first.panel, first.description, first.unit, first.panel_type, series, errors)


def render_panel(panel: PanelResult, start: float) -> str:
    from floatbridge.embedded.svg import bar_chart, line_chart

    head = f"<h2>{escape(panel.title)}</h2><p class='desc'>{escape(panel.description)}</p>"
    errs = "".join(f"<p class='err'>query failed: {escape(e)}</p>" for e in panel.errors)
    if panel.panel_type in ("stat", "gauge", "bargauge"):
        latest = {name: pts[-1][1] for name, pts in panel.series.items() if pts}
        body = bar_chart(panel.title, latest) + "".join(
            f"<p class='stat'>{escape(n)}: <b>{escape(format_value(v, panel.unit))}</b></p>" for n, v in latest.items()
        )
    else:
        # minutes from the start of the range keep the x axis readable
        rel = {n: [((t - start) / 60.0, v) for t, v in pts] for n, pts in panel.series.items()}
        body = line_chart(panel.title, rel, x_label="minutes", y_label=f"({panel.unit})" if panel.unit else "")
    return f"<section>{head}{errs}{body}</section>"


_CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:1400px}section{display:inline-block;vertical-align:top;"
    "width:660px;margin:0 1em 1em 0}.desc{color:#555;font-size:12px;min-height:3em}.err{color:#b00}"
    "figcaption{font-size:12px;color:#333}"
)


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{escape(title)}</h1>{body}</body></html>")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "dashboard"


def render_dashboard(client: PrometheusClient, dashboard: dict[str, Any], range_seconds: int, now: float) -> str:
    start, step = now - range_seconds, step_for(range_seconds)
    by_panel: dict[str, list[PanelQuery]] = {}
    for q in panel_queries(dashboard):
        by_panel.setdefault(q.panel, []).append(q)
    sections = [render_panel(fetch_panel(client, qs, start, now, step), start) for qs in by_panel.values()]
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    intro = f"<p>Range: last {range_seconds // 60} min ending {stamp}, step {step}s, source {escape(client.base_url)}</p>"
    return _page(str(dashboard.get("title", "Dashboard")), intro + "".join(sections))


def render_report(
    prometheus_url: str,
    out: Path,
    range_seconds: int,
    dashboards_dir: Path = DASHBOARDS_DIR,
    timeout: float = 15.0,
    now: float | None = None,
) -> list[Path]:
    """Writes one HTML page per dashboard plus index.html; returns the paths written."""
    client = PrometheusClient(prometheus_url, timeout=timeout)
    dashboards = load_dashboards(dashboards_dir)
    if not client.ready():
        raise PrometheusError(f"Prometheus at {prometheus_url} is not ready (GET /-/ready failed)")
    now = time.time() if now is None else now
    out.mkdir(parents=True, exist_ok=True)
    written, links = [], []
    for dashboard in dashboards.values():
        title = str(dashboard.get("title", "Dashboard"))
        path = out / f"{_slug(title)}.html"
        path.write_text(render_dashboard(client, dashboard, range_seconds, now), encoding="utf-8")
        written.append(path)
        links.append(f"<li><a href='{escape(path.name)}'>{escape(title)}</a></li>")
    index = out / "index.html"
    index.write_text(_page("Floatbridge report", f"<ul>{''.join(links)}</ul>"), encoding="utf-8")
    return [index, *written]
