"""HTML report of an embedded run: summary table and charts (inline SVG, no dependencies)."""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any

from floatbridge.embedded.svg import bar_chart, line_chart
from services.common.money import CURRENCY_EXPONENTS


def _days(daily: list[dict[str, Any]], key: str, scale: float = 1.0) -> list[tuple[float, float]]:
    return [(i, row[key] / scale) for i, row in enumerate(daily)]


def _archetype_loss(result: Any) -> dict[str, float]:
    truth = result.truth or {}
    merchants = truth.get("merchants", truth)
    if isinstance(merchants, list):
        merchants = {m["merchant_id"]: m for m in merchants}
    arche = {m: v.get("archetype", "?") for m, v in merchants.items()} if isinstance(merchants, dict) else {}
    lent: dict[str, int] = {}
    lost: dict[str, int] = {}
    for loan in result.engine.tally.loans.values():
        a = arche.get(loan["merchant"], "unknown")
        lent[a] = lent.get(a, 0) + loan["principal"]
        if loan["state"] == "charged_off":
            lost[a] = lost.get(a, 0) + loan["principal"]
    return {a: 100.0 * lost.get(a, 0) / v for a, v in sorted(lent.items()) if v}


def render(result: Any, rows: list[tuple[str, str]]) -> str:
    t = result.engine.tally
    daily = t.daily
    # Money charts are in the run's first currency (a mixed-currency replay's others are in the summary).
    cur = t.currency or "BRL"
    unit, scale = f"({cur})", float(10 ** CURRENCY_EXPONENTS.get(cur, 2))
    charts = [
        line_chart("Sum of credit limits", {"limits": _days(daily, "limits", scale)}, "day", unit),
        line_chart("Offers and acceptances (cumulative)",
                   {"offers": _days(daily, "offers"), "loans": _days(daily, "accepted")}, "day"),
        line_chart("Disbursed (cumulative) and outstanding",
                   {"disbursed": _days(daily, "disbursed", scale), "outstanding": _days(daily, "outstanding", scale)},
                   "day", unit),
        line_chart("Delinquent loans and charge-offs",
                   {"delinquent now": _days(daily, "delinquent"), "charged off": _days(daily, "charged_off")},
                   "day"),
    ]
    if result.truth:
        charts.append(bar_chart("Loss by archetype (charged-off principal / disbursed)", _archetype_loss(result), "%"))
    # A few merchants' timelines: the borrowers with the most decisions, and reason codes.
    picks = sorted(t.timelines, key=lambda m: (-(m in t.borrowers), -len(t.timelines[m]), m))[:4]
    timelines = []
    for m in picks:
        pts = []
        for when, etype, amount, _ in t.timelines[m]:
            if etype == "credit_limit.updated":
                ts = datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp() / 86400
                pts.append((ts, amount / 100))
        events = "".join(
            f"<tr><td>{escape(w)}</td><td>{escape(e)}</td><td>{a / 100:,.2f}</td><td>{escape(r)}</td></tr>"
            for w, e, a, r in t.timelines[m][-12:]
        )
        timelines.append(
            line_chart(f"Merchant {m}: limit over time", {"limit": pts}, "day (epoch)")
            + f"<table><tr><th>time</th><th>event</th><th>amount</th><th>reasons / loan</th></tr>{events}</table>"
        )
    table = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    notes = "".join(f"<p>{escape(n)}</p>" for n in result.notes)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{escape(result.title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} th{{text-align:left;padding-right:1em}}
td,th{{font-size:13px}} figure{{margin:1em 0}} .chart{{background:#fafafa;border:1px solid #eee}}</style></head>
<body><h1>{escape(result.title)}</h1><table>{table}</table>{notes}
<h2>Portfolio</h2>{''.join(charts)}<h2>Merchant timelines</h2>{''.join(timelines)}</body></html>"""
