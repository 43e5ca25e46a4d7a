"""Underwriter figures measured in process: per-worker throughput, paced latency, scoring, memory per merchant.

These run the same core a Faust worker runs (decode, Underwriter.handle with the champion LightGBM model,
encode of what it emits) without the broker, so they are the per-worker ceiling; `underwriter_kafka`
measures the real workers on the broker.
"""

from __future__ import annotations

import time
from typing import Any

from floatbridge.bench.core import NotRun, Sizes


def _uw() -> Any:
    try:
        from services.underwriter import bench as ub
        from services.underwriter.bootstrap import bootstrap
        from services.underwriter.settings import load
    except ImportError as exc:
        raise NotRun(f"underwriter not importable: {exc}") from None
    return ub, bootstrap, load


def throughput(sizes: Sizes) -> dict[str, float]:
    ub, _, _ = _uw()
    raw = ub.workload(sizes.pick(60_000, 1_000))
    raw_eps = ub.raw_rate(raw)
    core_eps, _ = ub.core_rate(raw)
    batched_eps, _ = ub.batched_rate(raw)
    return {"worker_eps": core_eps, "raw_decode_eps": raw_eps, "ratio_to_raw": core_eps / raw_eps,
            "worker_batched_eps": batched_eps, "batched_ratio_to_raw": batched_eps / raw_eps}


def _pct(sorted_vals: list[float], q: float) -> float:
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


def paced(raw: list[bytes], rate: float) -> list[float]:
    """Events offered at `rate`/s; seconds from each event's scheduled arrival to its credit_limit.updated."""
    ub, _, _ = _uw()
    return ub.paced_latencies(raw, rate)  # type: ignore[no-any-return]


def latency(sizes: Sizes) -> dict[str, float]:
    ub, _, _ = _uw()
    seconds = 10 if not sizes.quick else 0.25
    out: dict[str, float] = {}
    pool = ub.workload(int(5_000 * seconds))
    for rate in (1_000, 2_000, 5_000):
        lat = paced(pool[: int(rate * seconds)], rate)
        if not lat:
            raise RuntimeError(f"no credit_limit.updated at {rate} ev/s")
        k = f"{rate // 1000}k"
        out |= {f"p50_ms_{k}": _pct(lat, 0.5) * 1000, f"p99_ms_{k}": _pct(lat, 0.99) * 1000,
                f"p999_ms_{k}": _pct(lat, 0.999) * 1000}
    return out


def scoring(sizes: Sizes) -> dict[str, float]:
    try:
        import numpy as np

        from services.underwriter.adapters.lightgbm_scorer import LightGBMScorer
        from services.underwriter.domain.features import FEATURE_NAMES
        from services.underwriter.settings import DEFAULT_REGISTRY
        scorer = LightGBMScorer.champion(DEFAULT_REGISTRY)
    except Exception as exc:  # no model, or the underwriter is not importable
        raise NotRun(f"no champion model to score with: {exc}") from None
    rng = np.random.default_rng(7)
    rows = [list(map(float, rng.gamma(2.0, 10.0, len(FEATURE_NAMES)))) for _ in range(64)]
    n = sizes.pick(5_000, 200)

    def per_call_us(fn: Any) -> float:
        start = time.perf_counter()
        for i in range(n):
            fn(rows[i % 64])
        return (time.perf_counter() - start) / n * 1e6

    booster = scorer.booster
    full = per_call_us(scorer.score)
    # One thread: a single row gains nothing from OpenMP, and a busy machine makes its threads wait.
    bare = per_call_us(lambda r: booster.predict(np.asarray([r], dtype=np.float64), num_threads=1))
    contrib = per_call_us(lambda r: booster.predict(np.asarray([r], dtype=np.float64), pred_contrib=True,
                                                    num_threads=1))
    return {"score_us": full, "bare_predict_us": bare, "bare_contrib_us": contrib, "ratio_to_bare": full / bare}


def memory(sizes: Sizes) -> dict[str, float]:
    ub, _, _ = _uw()
    held_s, bytes_s = ub.memory_per_merchant(sizes.pick(100_000, 2_000))
    if sizes.quick:  # each call rebuilds its template histories; one tiny size is enough for a smoke run
        return {"held_bytes_100k": held_s, "state_bytes_100k": bytes_s}
    held_l, bytes_l = ub.memory_per_merchant(1_000_000)
    return {"held_bytes_100k": held_s, "state_bytes_100k": bytes_s, "held_bytes_1m": held_l, "state_bytes_1m": bytes_l}
