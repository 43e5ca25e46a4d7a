"""The benchmark runner: warm-up, repetitions, medians, limits, machine facts, JSON and Markdown output.

A benchmark is a function `run(sizes) -> {figure key: number}`; it raises NotRun(reason) when what it
measures cannot run here (no broker, no model, no data), and the suite records that reason instead of a number.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any


class NotRun(Exception):
    """The component a benchmark measures is not available; the message says why."""


@dataclass(frozen=True)
class Sizes:
    """Workload sizes; `quick` shrinks everything so the suite runs in a test."""

    quick: bool = False

    def pick(self, full: int, quick: int) -> int:
        return quick if self.quick else full


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    goal: float | None = None  # the limit from the issues, if any
    higher_is_better: bool = True

    def ratio(self, value: float) -> float | None:
        """How the figure stands against its goal: >= 1.0 means the goal is met."""
        if self.goal is None or value is None:
            return None
        if self.higher_is_better:
            return value / self.goal
        return self.goal / value if value > 0 else float("inf")


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    run: Callable[[Sizes], dict[str, float]]
    figures: tuple[Figure, ...]
    max_repeat: int | None = None  # long, stable runs (a full replay) are measured fewer times
    warmup: bool = True
    notes: str = ""


@dataclass
class Outcome:
    bench: Benchmark
    runs: list[dict[str, float]] = field(default_factory=list)
    not_run: str | None = None
    seconds: float = 0.0

    def median(self, key: str) -> float | None:
        vals = [r[key] for r in self.runs if isinstance(r.get(key), int | float)]
        return float(statistics.median(vals)) if vals else None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    return {
        "cpu_model": _cpu_model(), "cores": os.cpu_count(), "ram_bytes": _ram_bytes(),
        "python": sys.version.split()[0], "platform": platform.platform(),
        "kafka_python": _version("kafka-python"), "lightgbm": _version("lightgbm"),
        "orjson": _version("orjson"), "fastapi": _version("fastapi"), "uvicorn": _version("uvicorn"),
        "date": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
        # Other work on the machine skews every wall-clock figure: the 1-minute load average says how much.
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def run_one(bench: Benchmark, sizes: Sizes, repeat: int, log: Callable[[str], None]) -> Outcome:
    out = Outcome(bench)
    n = repeat if bench.max_repeat is None else max(1, min(repeat, bench.max_repeat))
    start = time.perf_counter()
    try:
        if bench.warmup and not sizes.quick:  # quick mode is a smoke run: its figures mean nothing anyway
            log(f"[{bench.name}] warm-up")
            bench.run(Sizes(quick=True))
        for i in range(n):
            log(f"[{bench.name}] run {i + 1}/{n}")
            figures = bench.run(sizes)
            out.runs.append(figures)
            log(f"[{bench.name}]   " + ", ".join(f"{k}={v:,.3f}" for k, v in figures.items()))
    except NotRun as exc:
        out.not_run = str(exc) or "not available"
    except Exception as exc:  # a broken benchmark is reported, not hidden, and the others still run
        out.not_run = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        log(traceback.format_exc())
    if not out.runs and out.not_run is None:
        out.not_run = "produced no figures"
    out.seconds = time.perf_counter() - start
    return out


def run_suite(benches: Sequence[Benchmark], sizes: Sizes, repeat: int,
              log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> list[Outcome]:
    return [run_one(b, sizes, repeat, log) for b in benches]


def to_json(outcomes: Sequence[Outcome], sizes: Sizes, repeat: int) -> dict[str, Any]:
    doc: dict[str, Any] = {"machine": machine_info(), "quick": sizes.quick, "repeat": repeat, "benchmarks": {}}
    for o in outcomes:
        figs: dict[str, Any] = {}
        for f in o.bench.figures:
            med = o.median(f.key)
            entry: dict[str, Any] = {"label": f.label, "unit": f.unit, "goal": f.goal,
                                     "higher_is_better": f.higher_is_better}
            if med is None:
                entry["not_run"] = o.not_run or "figure not produced"
            else:
                ratio = f.ratio(med)
                entry.update(median=med, runs=[r.get(f.key) for r in o.runs],
                             goal_ratio=ratio, goal_met=None if ratio is None else ratio >= 1.0)
            figs[f.key] = entry
        doc["benchmarks"][o.bench.name] = {"title": o.bench.title, "repetitions": len(o.runs),
                                           "date": doc["machine"]["date"],
                                           "seconds": round(o.seconds, 2), "not_run": o.not_run,
                                           "notes": o.bench.notes, "figures": figs}
    return doc


def merge_previous(doc: dict[str, Any], previous: Path) -> dict[str, Any]:
    """Keep the entries of benchmarks not run this time from an earlier results file of the same mode."""
    try:
        old = json.loads(previous.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return doc
    if old.get("quick") != doc["quick"]:
        return doc
    merged = {name: entry for name, entry in old.get("benchmarks", {}).items() if name not in doc["benchmarks"]}
    merged |= doc["benchmarks"]
    order = [b for b in old.get("benchmarks", {})] + [b for b in doc["benchmarks"] if b not in old.get("benchmarks", {})]
    return doc | {"benchmarks": {name: merged[name] for name in order}}


def _num(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit in ("ev/s", "bytes", "rows/s", "calls/s"):
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:,.2f}"


def to_markdown(doc: dict[str, Any], command: str) -> str:
    m = doc["machine"]
    ram = f"{m['ram_bytes'] / 2**30:.0f} GiB" if m.get("ram_bytes") else "?"
    lines = [
        "# Floatbridge benchmarks", "",
        f"Produced by `{command}` on {m['date']}: {m['cpu_model']}, {m['cores']} cores, {ram} RAM, "
        f"load average {m.get('load_average_1m')}, Python {m['python']}, kafka-python {m['kafka_python']}, LightGBM {m['lightgbm']}. "
        f"Each figure is the median of the repetitions shown (after a warm-up run); raw figures are in "
        f"`benchmarks/results.json`." + (" QUICK MODE: tiny sizes, figures are not meaningful." if doc["quick"] else ""),
        "",
        "Goal ratio: the figure against its limit, oriented so that >= 1.00 means the goal is met "
        "(for a ceiling such as latency it is limit / figure).", "",
        "| benchmark | figure | median | unit | goal | ratio | met | runs |",
        "|---|---|---:|---|---:|---:|---|---:|",
    ]
    for name, b in doc["benchmarks"].items():
        for f in b["figures"].values():
            goal = "-" if f["goal"] is None else ("≥ " if f["higher_is_better"] else "≤ ") + _num(f["goal"], f["unit"])
            if "not_run" in f:
                lines.append(f"| {name} | {f['label']} | not run: {f['not_run']} | {f['unit']} | {goal} | - | - | 0 |")
                continue
            ratio = "-" if f["goal_ratio"] is None else f"{f['goal_ratio']:.2f}"
            met = "-" if f["goal_met"] is None else ("yes" if f["goal_met"] else "**no**")
            lines.append(f"| {name} | {f['label']} | {_num(f['median'], f['unit'])} | {f['unit']} | {goal} | "
                         f"{ratio} | {met} | {b['repetitions']} |")
    notes = [(n, b["notes"]) for n, b in doc["benchmarks"].items() if b["notes"]]
    if notes:
        lines += ["", "## What each benchmark measures", ""]
        lines += [f"- **{n}**: {text}" for n, text in notes]
    return "\n".join(lines) + "\n"


def write(doc: dict[str, Any], out_dir: Path, command: str, extra_md: str = "") -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "benchmarks").mkdir(exist_ok=True)
    jpath = out_dir / "benchmarks" / "results.json"
    jpath.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    mpath = out_dir / "BENCHMARKS.md"
    mpath.write_text(to_markdown(doc, command) + extra_md, encoding="utf-8")
    return mpath, jpath
