"""Reads the queries out of the committed dashboards and alert rules, so tests and the report check
exactly what Grafana and Prometheus will run."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS_DIR = REPO_ROOT / "deploy" / "grafana" / "dashboards"
RULES_DIR = REPO_ROOT / "deploy" / "prometheus" / "rules"

# Grafana macros that Prometheus does not know; substituted before a query is sent outside Grafana.
_MACRO = re.compile(r"\$\{?(__rate_interval|__interval|__range)\}?")


@dataclass(frozen=True, slots=True)
class PanelQuery:
    dashboard: str
    panel: str
    panel_type: str
    ref_id: str
    expr: str
    legend: str
    unit: str
    description: str

    @property
    def where(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref_id}"


@dataclass(frozen=True, slots=True)
class RuleExpr:
    file: str
    group: str
    name: str  # alert or record name
    kind: str  # "alert" or "record"
    expr: str
    for_: str
    labels: dict[str, str]
    annotations: dict[str, str]

    @property
    def where(self) -> str:
        return f"{self.file} / {self.group} / {self.name}"


def load_dashboards(directory: Path = DASHBOARDS_DIR) -> dict[str, dict[str, Any]]:
    """File name -> dashboard JSON, sorted by file name."""
    files = sorted(directory.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no dashboard JSON files in {directory}")
    out: dict[str, dict[str, Any]] = {}
    for path in files:
        try:
            out[path.name] = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: invalid JSON: {exc}") from exc
    return out


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every non-row panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def panel_queries(dashboard: dict[str, Any]) -> list[PanelQuery]:
    title = str(dashboard.get("title", "?"))
    out = []
    for panel in iter_panels(dashboard):
        unit = str(panel.get("fieldConfig", {}).get("defaults", {}).get("unit", ""))
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if not expr or target.get("hide"):
                continue
            out.append(
                PanelQuery(
                    dashboard=title,
                    panel=str(panel.get("title", "")),
                    panel_type=str(panel.get("type", "")),
                    ref_id=str(target.get("refId", "")),
                    expr=str(expr),
                    legend=str(target.get("legendFormat", "")),
                    unit=unit,
                    description=str(panel.get("description", "")),
                )
            )
    return out


def all_panel_queries(directory: Path = DASHBOARDS_DIR) -> list[PanelQuery]:
    return [q for d in load_dashboards(directory).values() for q in panel_queries(d)]


def load_rules(directory: Path = RULES_DIR) -> list[RuleExpr]:
    import yaml  # dev/test dependency only; the services never parse rule files

    files = sorted([*directory.glob("*.yml"), *directory.glob("*.yaml")])
    if not files:
        raise FileNotFoundError(f"no rule files in {directory}")
    out = []
    for path in files:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for group in doc.get("groups", []):
            for rule in group.get("rules", []):
                kind = "alert" if "alert" in rule else "record"
                out.append(
                    RuleExpr(
                        file=path.name,
                        group=str(group.get("name", "")),
                        name=str(rule.get(kind, "")),
                        kind=kind,
                        expr=str(rule.get("expr", "")).strip(),
                        for_=str(rule.get("for", "0s")),
                        labels={str(k): str(v) for k, v in (rule.get("labels") or {}).items()},
                        annotations={str(k): str(v) for k, v in (rule.get("annotations") or {}).items()},
                    )
                )
    return out


def render_expr(expr: str, rate_interval: str = "1m", interval: str = "15s", range_: str = "1h") -> str:
    """Replace Grafana's $__rate_interval / $__interval / $__range so Prometheus can run the query."""
    values = {"__rate_interval": rate_interval, "__interval": interval, "__range": range_}
    return _MACRO.sub(lambda m: values[m.group(1)], expr)


def metric_names(expr: str) -> set[str]:
    """floatbridge_* metric names an expression reads (for cross-checking against the services)."""
    return set(re.findall(r"\b(floatbridge_[a-z0-9_]+)\b", expr))
