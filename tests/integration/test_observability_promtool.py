"""promtool checks the committed Prometheus config and rules, and runs the alert unit tests."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from floatbridge.observability.queries import REPO_ROOT, load_rules

pytestmark = pytest.mark.integration

PROM_DIR = REPO_ROOT / "deploy" / "prometheus"


@pytest.fixture(scope="module")
def promtool_bin(request: pytest.FixtureRequest) -> str:
    """FLOATBRIDGE_TEST_PROMTOOL (the conftest fixture) when set, else promtool on PATH."""
    on_path = shutil.which("promtool")
    if os.environ.get("FLOATBRIDGE_TEST_PROMTOOL") or not on_path:
        return str(request.getfixturevalue("promtool"))
    return on_path


def _run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=PROM_DIR)


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-embedded.yml"])
def test_prometheus_config_and_its_rules_are_valid(promtool_bin: str, config: str) -> None:
    res = _run(promtool_bin, "check", "config", config)
    assert res.returncode == 0, res.stdout + res.stderr


def test_alert_rule_unit_tests_pass(promtool_bin: str) -> None:
    tests = sorted(str(p.relative_to(PROM_DIR)) for p in (PROM_DIR / "tests").glob("*.yml"))
    assert tests
    res = _run(promtool_bin, "test", "rules", *tests)
    assert res.returncode == 0, res.stdout + res.stderr


def _tested_alerts() -> tuple[set[str], set[str]]:
    """(alerts with a firing case, alerts with a silent case) across all promtool test files."""
    firing, silent = set(), set()
    for path in (PROM_DIR / "tests").glob("*.yml"):
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    return firing, silent


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    alerts = {r.name for r in load_rules() if r.kind == "alert"}
    firing, silent = _tested_alerts()
    assert alerts - firing == set(), f"alerts never tested firing: {sorted(alerts - firing)}"
    assert alerts - silent == set(), f"alerts never tested silent: {sorted(alerts - silent)}"


def test_unit_tests_only_name_existing_alerts() -> None:
    firing, silent = _tested_alerts()
    assert (firing | silent) - {r.name for r in load_rules()} == set()


