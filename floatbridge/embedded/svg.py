"""Tiny dependency-free SVG charts for the HTML reports."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _scale(lo: float, hi: float, out_lo: float, out_hi: float):  # type: ignore[no-untyped-def]
    span = (hi - lo) or 1.0
    return lambda v: out_lo + (v - lo) * (out_hi - out_lo) / span


def line_chart(
    title: str,
    series: dict[str, Sequence[tuple[float, float]]],
    x_label: str = "",
    y_label: str = "",
    width: int = 640,
    height: int = 260,
) -> str:
    """Lines over a shared x axis; series maps a name to (x, y) points."""
    pts = [p for s in series.values() for p in s]
    if not pts:
        return f"<figure><figcaption>{escape(title)}</figcaption><p>no data</p></figure>"
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(0.0, min(p[1] for p in pts)), max(p[1] for p in pts)
    sx, sy = _scale(x0, x1, 50, width - 10), _scale(y0, y1 or 1.0, height - 30, 10)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="chart">',
             f'<line x1="50" y1="{height-30}" x2="{width-10}" y2="{height-30}" stroke="#999"/>',
             f'<line x1="50" y1="10" x2="50" y2="{height-30}" stroke="#999"/>',
             f'<text x="4" y="16" font-size="10">{y1:,.0f}</text>',
             f'<text x="4" y="{height-32}" font-size="10">{y0:,.0f}</text>',
             f'<text x="50" y="{height-12}" font-size="10">{escape(x_label)} {x0:,.0f} .. {x1:,.0f}</text>']
    for i, (name, s) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
        parts.append(f'<text x="{width-160}" y="{20+14*i}" font-size="11" fill="{color}">{escape(name)}</text>')
    parts.append("</svg>")
    return f"<figure><figcaption>{escape(title)} {escape(y_label)}</figcaption>{''.join(parts)}</figure>"


def bar_chart(title: str, bars: dict[str, float], unit: str = "", width: int = 640) -> str:
    if not bars:
        return f"<figure><figcaption>{escape(title)}</figcaption><p>no data</p></figure>"
    top = max(max(bars.values()), 1e-12)
    row = 22
    height = row * len(bars) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="chart">']
    for i, (name, value) in enumerate(bars.items()):
        w = max(0.0, value) / top * (width - 260)
        y = 5 + i * row
        parts.append(f'<text x="0" y="{y+14}" font-size="11">{escape(name)}</text>')
        parts.append(f'<rect x="140" y="{y}" width="{w:.1f}" height="{row-6}" fill="{PALETTE[i % len(PALETTE)]}"/>')
        parts.append(f'<text x="{145+w:.1f}" y="{y+14}" font-size="11">{value:,.4g}{escape(unit)}</text>')
    parts.append("</svg>")
    return f"<figure><figcaption>{escape(title)}</figcaption>{''.join(parts)}</figure>"
