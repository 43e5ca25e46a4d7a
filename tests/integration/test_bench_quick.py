"""`floatbridge bench --quick` on tiny sizes against the local stack, so the suite never rots: every
expected figure is a number or carries an explicit reason why it was not run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from floatbridge.bench.suite import BENCHMARKS
from floatbridge.cli import main

pytestmark = pytest.mark.integration


@pytest.mark.timeout(600)
def test_quick_bench_reports_every_figure_or_why_not(kafka_bootstrap: str, pg_url: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOATBRIDGE_BENCH_KAFKA", kafka_bootstrap)
    monkeypatch.setenv("FLOATBRIDGE_BENCH_DATABASE_URL", pg_url)
    assert main(["bench", "--quick", "--repeat", "1", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "benchmarks" / "results.json").read_text())
    assert doc["quick"] is True and doc["machine"]["cores"] >= 1
    for bench in BENCHMARKS:
        figures = doc["benchmarks"][bench.name]["figures"]
        for fig in bench.figures:
            entry = figures[fig.key]
            if "not_run" in entry:
                assert entry["not_run"].strip(), f"{bench.name}.{fig.key} not run without a reason"
            else:
                assert isinstance(entry["median"], int | float), f"{bench.name}.{fig.key}"
    # The stack is up in this test, so the broker-backed benchmarks must really run.
    assert "median" in doc["benchmarks"]["ingest"]["figures"]["http_eps"]
    assert "median" in doc["benchmarks"]["accept"]["figures"]["p99_ms"]
    assert "| ingest |" in (tmp_path / "BENCHMARKS.md").read_text()
