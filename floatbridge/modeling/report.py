"""Backtest report: JSON, and an HTML page with bar charts (matplotlib PNG when installed, else hand-made SVG)."""

from __future__ import annotations

import html
import json
import os
from typing import Any

METRICS = (("eligible_approved_rate", "approval of eligible merchants (approved limit, per eligible merchant-day)"),
           ("approval_rate", "offer rate at the decision point"), ("loss_rate", "loss rate (charged-off / resolved principal)"),
           ("fee_yield", "fee yield"))


def _groups(summary: dict[str, Any]) -> list[str]:
    return [k for k in summary if not k.startswith("_")]


def svg_bars(title: str, labels: list[str], values: list[float], width: int = 560) -> str:
    """A horizontal bar chart as standalone SVG (percentages)."""
    row, left, pad = 24, 110, 30
    height = pad + row * len(labels) + 10
    top = max(values + [1e-9])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="12"><text x="4" y="16" font-weight="bold">{html.escape(title)}</text>']
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        y = pad + i * row
        w = (width - left - 70) * v / top
        parts.append(f'<text x="4" y="{y + 15}">{html.escape(label)}</text>'
                     f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" fill="#3b6ea5"/>'
                     f'<text x="{left + w + 4:.1f}" y="{y + 15}">{v:.2%}</text>')
    parts.append("</svg>")
    return "".join(parts)


def write(summary: dict[str, Any], folder: str) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    labels = _groups(summary)
    charts = []
    for key, title in METRICS:
        values = [float(summary[g].get(key) or 0.0) for g in labels]
        svg = svg_bars(title, labels, values)
        path = os.path.join(folder, f"{key}.svg")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(svg)
        charts.append(svg)
        try:  # a PNG as well when matplotlib is present
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(6, 0.4 * len(labels) + 1))
            ax.barh(labels, values)
            ax.set_title(title)
            fig.tight_layout()
            fig.savefig(os.path.join(folder, f"{key}.png"))
            plt.close(fig)
        except ImportError:
            pass
    cols = ["eligible", "offered", "eligible_approved_rate", "approval_rate", "loans", "principal", "charged_off", "loss_rate", "fee_yield",
            "open_loans"]
    rows = "".join(
        "<tr><td>" + html.escape(g) + "</td>" + "".join(
            f"<td>{summary[g].get(c, 0.0):.2%}</td>" if isinstance(summary[g].get(c, 0.0), float)
            else f"<td>{summary[g][c]:,}</td>"
            for c in cols) + "</tr>" for g in labels)
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>Floatbridge backtest</title><style>"
            "body{font-family:sans-serif;margin:2em}td,th{padding:4px 8px;text-align:right}td:first-child{text-align:left}"
            "table{border-collapse:collapse}tr:nth-child(even){background:#f2f2f2}</style></head><body>"
            f"<h1>Backtest {html.escape(str(summary.get('_run', {}).get('model_version', '')))}</h1>"
            "<p>Money in minor units (centavos). Loss rate counts loans that were repaid or charged off by the end.</p>"
            "<table><tr><th>group</th>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>" + rows + "</table>"
            + "".join(f"<div>{c}</div>" for c in charts)
            + f"<h2>Run</h2><pre>{html.escape(json.dumps({k: summary[k] for k in summary if k.startswith('_')}, indent=2, default=str))}</pre>"
            "</body></html>")
    html_path = os.path.join(folder, "report.html")
    with open(html_path, "w", encoding="utf-8") as fh:
        fh.write(page)
    json_path = os.path.join(folder, "report.json")
    with open(json_path, "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2, default=str)
    return [json_path, html_path]
