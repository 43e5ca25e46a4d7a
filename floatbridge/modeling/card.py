"""The model card: a human summary of one registry version (markdown, no plotting library needed)."""

from __future__ import annotations

from typing import Any

GOALS = (
    ("AUC", "auc", ">=", 0.85),
    ("KS", "ks", ">=", 0.50),
    ("Expected calibration error", "ece", "<=", 0.02),
)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def _bar(v: float, scale: float, width: int = 30) -> str:
    return "#" * max(0, min(width, int(round(v / scale * width)))) if scale > 0 else ""


def model_card(meta: dict[str, Any]) -> str:
    m = meta["metrics"]
    t = m["test"]
    lines = [
        f"# Model card: {meta['version']}", "",
        f"LightGBM binary classifier of default ({meta['objective']}), isotonic-calibrated on a held-out "
        "window. Features are computed by the underwriter's serving code (services/underwriter/domain/features.py).", "",
        "## Data", "",
        f"- events replayed: {meta['events']:,}; data hash `{meta['data_hash'][:16]}`",
    ]
    for name, w in meta["windows"].items():
        lines.append(f"- {name}: {w['start']} .. {w['end']} ({w['rows']} snapshots)")
    lines += ["", "## Held-out test metrics", "", "| metric | model | scorecard (logistic) | goal | met |", "|---|---|---|---|---|"]
    card = m["baseline_scorecard"]
    for label, key, op, goal in GOALS:
        ok = t[key] >= goal if op == ">=" else t[key] <= goal
        lines.append(f"| {label} | {_fmt(t[key])} | {_fmt(card[key])} | {op} {goal} | {'yes' if ok else 'NO'} |")
    lines.append(f"| Brier | {_fmt(t['brier'])} | {_fmt(card['brier'])} | | |")
    lines.append(f"| default rate (test) | {_fmt(t['default_rate'])} | | | |")
    lines.append(f"| PSI train vs test (PD) | {_fmt(m['psi_train_vs_test'])} | | < 0.25 | |")
    la, eq = m["lending_at_70pct"], m["equal_volume_vs_rule"]
    lines += [
        "", "## Lending outcomes on the test window (advance = 80% of open receivables)", "",
        f"- at {la['approval']:.0%} approval: loss {la['loss_rate']:.2%} of principal (goal <= 1.5%)",
        f"- rule-based advance to everyone: loss {m['baseline_rule_advance']['loss_rate']:.2%} of principal",
        f"- at equal volume ({eq['volume'] / 100:,.2f}): the rule-based advance (50% of the model's advance, i.e. 40% "
        f"of open receivables, to everyone eligible) loses {eq['rule_loss_rate']:.2%}; the model, lending its full "
        f"advance to the lowest-PD {eq['model_approval']:.0%}, loses {eq['model_loss_rate']:.2%}: "
        f"{eq['loss_reduction']:.0%} less (goal >= 30%)",
        "", "## Calibration (test, equal-count bins)", "", "```",
        f"{'predicted':>10} {'observed':>10} {'n':>6}",
    ]
    top = max([r["observed"] for r in m["calibration_table"]] + [r["predicted"] for r in m["calibration_table"]] + [1e-9])
    for r in m["calibration_table"]:
        lines.append(f"{r['predicted']:>10.4f} {r['observed']:>10.4f} {r['n']:>6}  P|{_bar(r['predicted'], top)}")
        lines.append(f"{'':>29}  O|{_bar(r['observed'], top)}")
    lines += ["```", "", "## Feature importance (gain, top 12)", "", "| feature | gain |", "|---|---|"]
    for name, gain in sorted(meta["feature_importance_gain"].items(), key=lambda kv: -kv[1])[:12]:
        lines.append(f"| {name} | {gain:,.1f} |")
    lines += [
        "", "## Known limits", "",
        "- Trained on simulated marketplace history (floatbridge simulate); the archetype mix and the timings",
        "  are assumptions, so metrics on real data will differ. Retrain on replayed production events.",
        "- Labels come from a hypothetical advance per weekly snapshot (label_policy in metadata.json); loans the",
        "  merchant actually took change its behaviour and are not modelled (no reject inference).",
        "- Snapshots whose default deadline falls after the history ends are censored (dropped).",
        "- Monotone constraints: " + ", ".join(
            f"{k} ({'+' if v > 0 else '-'})" for k, v in sorted(meta.get("monotone_constraints", {}).items())),
        "",
    ]
    return "\n".join(lines)


def archetype_table(rows: list[tuple[str, int, float]]) -> str:
    """Per-archetype test results: rows of (archetype, label, pd)."""
    groups: dict[str, list[tuple[int, float]]] = {}
    for a, y, p in rows:
        groups.setdefault(a, []).append((y, p))
    cut = sorted(p for _, _, p in rows)[max(0, int(len(rows) * 0.7) - 1)] if rows else 0.0
    lines = ["", "## Test window by archetype (simulator truth)", "",
             "| archetype | snapshots | default rate | mean PD | approved at 70% cut-off |", "|---|---|---|---|---|"]
    for a, items in sorted(groups.items()):
        n = len(items)
        lines.append(f"| {a} | {n} | {sum(y for y, _ in items) / n:.2%} | {sum(p for _, p in items) / n:.2%} | "
                     f"{sum(p <= cut for _, p in items) / n:.0%} |")
    return "\n".join(lines) + "\n"
