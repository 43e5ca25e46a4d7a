"""The benchmark runner: medians, goal ratios, honest 'not run' reasons, JSON and Markdown output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from floatbridge.bench import suite
from floatbridge.bench.core import Benchmark, Figure, NotRun, Sizes, run_suite, to_json, to_markdown, write

pytestmark = pytest.mark.unit


def _quiet(_: str) -> None:
    return None


def _counter_bench() -> Benchmark:
    values = iter([100.0, 300.0, 200.0])
    return Benchmark("fake", "Fake", lambda s: {"eps": next(values), "ms": 50.0}, (
        Figure("eps", "throughput", "ev/s", 400), Figure("ms", "latency", "ms", 200, higher_is_better=False)),
        warmup=False)


def test_figures_are_medians_of_the_repetitions_with_goal_ratios() -> None:
    doc = to_json(run_suite([_counter_bench()], Sizes(), 3, _quiet), Sizes(), 3)
    eps = doc["benchmarks"]["fake"]["figures"]["eps"]
    assert eps["median"] == 200.0 and eps["runs"] == [100.0, 300.0, 200.0]
    assert eps["goal_ratio"] == pytest.approx(0.5) and eps["goal_met"] is False
    latency = doc["benchmarks"]["fake"]["figures"]["ms"]
    assert latency["goal_ratio"] == pytest.approx(4.0) and latency["goal_met"] is True  # 200 ms limit / 50 ms


def test_missing_component_is_reported_as_not_run_never_as_a_number() -> None:
    def unavailable(_: Sizes) -> dict[str, float]:
        raise NotRun("no Kafka broker reachable")

    bench = Benchmark("kafkaish", "Needs Kafka", unavailable, (Figure("eps", "throughput", "ev/s", 1),))
    doc = to_json(run_suite([bench], Sizes(quick=True), 3, _quiet), Sizes(quick=True), 3)
    fig = doc["benchmarks"]["kafkaish"]["figures"]["eps"]
    assert "median" not in fig and fig["not_run"] == "no Kafka broker reachable"
    assert "not run: no Kafka broker reachable" in to_markdown(doc, "floatbridge bench")


def test_a_crashing_benchmark_is_reported_and_the_others_still_run() -> None:
    def broken(_: Sizes) -> dict[str, float]:
        raise ZeroDivisionError("boom")

    outcomes = run_suite([Benchmark("broken", "Broken", broken, (Figure("x", "x", "x"),), warmup=False),
                          _counter_bench()], Sizes(), 1, _quiet)
    assert outcomes[0].not_run == "failed: ZeroDivisionError: boom"
    assert outcomes[1].median("eps") == 100.0


def test_expensive_benchmarks_are_capped_at_their_repetition_limit() -> None:
    calls: list[int] = []
    bench = Benchmark("slow", "Slow", lambda s: calls.append(1) or {"s": 1.0}, (Figure("s", "s", "s"),),
                      max_repeat=1, warmup=False)
    run_suite([bench], Sizes(), 3, _quiet)
    assert len(calls) == 1


def test_write_produces_markdown_table_and_json_with_machine_facts(tmp_path: Path) -> None:
    doc = to_json(run_suite([_counter_bench()], Sizes(), 1, _quiet), Sizes(), 1)
    md, js = write(doc, tmp_path, "floatbridge bench --repeat 1")
    data = json.loads(js.read_text())
    for key in ("cpu_model", "cores", "ram_bytes", "python", "kafka_python", "lightgbm", "date"):
        assert key in data["machine"]
    text = md.read_text()
    assert "| fake | throughput | 100 | ev/s | ≥ 400 | 0.25 | **no** | 1 |" in text


def test_only_selects_known_benchmarks_and_names_unknown_ones() -> None:
    assert [b.name for b in suite.select(["ingest", "olist"])] == ["ingest", "olist"]
    with pytest.raises(ValueError, match="unknown benchmark.*nope"):
        suite.select(["nope"])


def test_every_issue_goal_is_in_the_catalog() -> None:
    goals = {(b.name, f.key): f.goal for b in suite.BENCHMARKS for f in b.figures if f.goal is not None}
    assert goals[("ingest", "http_eps")] == 20_000 and goals[("ingest", "ratio_to_raw")] == 0.5
    assert goals[("underwriter", "worker_eps")] == 10_000 and goals[("underwriter", "ratio_to_raw")] == 0.5
    assert goals[("latency", "p99_ms_2k")] == 200 and goals[("accept", "p99_ms")] == 100
    assert goals[("memory", "held_bytes_1m")] == 4096 and goals[("embedded", "events_per_second")] == 50_000
    assert goals[("olist", "seconds")] == 60 and goals[("embedded", "seconds")] == 120


def test_only_run_keeps_the_other_benchmarks_of_the_previous_results(tmp_path: Path) -> None:
    from floatbridge.bench.core import merge_previous

    first = to_json(run_suite([_counter_bench()], Sizes(), 1, _quiet), Sizes(), 1)
    write(first, tmp_path, "floatbridge bench")
    other = Benchmark("other", "Other", lambda s: {"x": 1.0}, (Figure("x", "x", "x"),), warmup=False)
    second = to_json(run_suite([other], Sizes(), 1, _quiet), Sizes(), 1)
    merged = merge_previous(second, tmp_path / "benchmarks" / "results.json")
    assert list(merged["benchmarks"]) == ["fake", "other"]
    assert merged["benchmarks"]["fake"]["figures"]["eps"]["median"] == 100.0
