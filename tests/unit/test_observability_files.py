"""The committed dashboards and rules are well-formed, documented, and only read metrics the code exports."""

from __future__ import annotations

import re

import pytest

from floatbridge.observability.queries import (
    REPO_ROOT,
    iter_panels,
    load_dashboards,
    load_rules,
    metric_names,
    panel_queries,
    render_expr,
)

pytestmark = pytest.mark.unit

DS_VAR = "${DS_PROMETHEUS}"
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created", "_info")
# Derived from the exporters' sources: every floatbridge_* string (incl. f"{NS}_x" with NS = "floatbridge_y").
_SOURCES = [*sorted((REPO_ROOT / "services").rglob("*.py")), REPO_ROOT / "floatbridge" / "observability" / "lag.py"]


def _base(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def exported_metric_names() -> set[str]:
    names: set[str] = set()
    for path in _SOURCES:
        text = path.read_text(encoding="utf-8")
        consts = dict(re.findall(r'^(\w+)\s*=\s*"(floatbridge_\w+)"', text, flags=re.M))
        for name, value in consts.items():
            text = text.replace("{" + name + "}", value)
        names |= {_base(n) for n in re.findall(r'["\'](floatbridge_[a-z0-9_]+)["\']', text)}
    return names


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict]:  # type: ignore[type-arg]
    return load_dashboards()


def test_there_are_operations_risk_and_webhook_dashboards(dashboards: dict[str, dict]) -> None:  # type: ignore[type-arg]
    titles = {d["title"] for d in dashboards.values()}
    assert titles == {"Floatbridge / Operations", "Floatbridge / Risk and portfolio",
                      "Floatbridge / Webhooks and integrations"}
    assert len({d["uid"] for d in dashboards.values()}) == 3


def test_every_panel_has_title_unit_description_and_templated_datasource(dashboards: dict[str, dict]) -> None:  # type: ignore[type-arg]
    problems = []
    for name, dash in dashboards.items():
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        assert variables["DS_PROMETHEUS"]["type"] == "datasource", name
        for panel in iter_panels(dash):
            where = f"{name}: {panel.get('title')!r}"
            if not panel.get("title") or not panel.get("description"):
                problems.append(f"{where}: missing title or description")
            if not panel.get("fieldConfig", {}).get("defaults", {}).get("unit"):
                problems.append(f"{where}: missing unit")
            if panel.get("datasource", {}).get("uid") != DS_VAR:
                problems.append(f"{where}: datasource not {DS_VAR}")
            if not panel.get("targets") or any(t.get("datasource", {}).get("uid") != DS_VAR for t in panel["targets"]):
                problems.append(f"{where}: no targets, or a target not on {DS_VAR}")
    assert not problems, "\n".join(problems)


def test_panel_ids_are_unique_and_panels_do_not_overlap(dashboards: dict[str, dict]) -> None:  # type: ignore[type-arg]
    for name, dash in dashboards.items():
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), name
        cells: set[tuple[int, int]] = set()
        for p in dash["panels"]:
            g = p["gridPos"]
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & mine, f"{name}: {p['title']} overlaps another panel"
            assert g["x"] + g["w"] <= 24
            cells |= mine


def test_dashboards_and_rules_read_only_metrics_the_code_exports(dashboards: dict[str, dict]) -> None:  # type: ignore[type-arg]
    exported = exported_metric_names()
    used = {(_base(m), q.where) for d in dashboards.values() for q in panel_queries(d) for m in metric_names(q.expr)}
    used |= {(_base(m), r.where) for r in load_rules() for m in metric_names(r.expr)}
    unknown = sorted(f"{where}: {m}" for m, where in used if m not in exported)
    assert not unknown, "metrics no service exports:\n" + "\n".join(unknown)


def test_every_alert_has_severity_summary_and_a_runbook_section() -> None:
    runbook = (REPO_ROOT / "docs" / "runbook.md").read_text(encoding="utf-8")
    headings = {m.lower() for m in re.findall(r"^#+\s+(Floatbridge\w+)", runbook, flags=re.M)}
    for rule in (r for r in load_rules() if r.kind == "alert"):
        assert rule.labels.get("severity") in {"page", "ticket"}, rule.where
        assert rule.annotations.get("summary"), rule.where
        anchor = rule.annotations.get("runbook_url", "").split("#")[-1]
        assert anchor == rule.name.lower() and anchor in headings, f"{rule.where}: no runbook section"


def test_grafana_macros_are_replaced_for_prometheus() -> None:
    expr = "rate(x[$__rate_interval]) + rate(y[${__interval}]) + increase(z[$__range])"
    assert render_expr(expr, rate_interval="1m", interval="15s", range_="6h") == \
        "rate(x[1m]) + rate(y[15s]) + increase(z[6h])"


def test_metric_harvest_finds_the_lag_exporter_metric() -> None:
    assert "floatbridge_kafka_consumer_lag_messages" in exported_metric_names()
