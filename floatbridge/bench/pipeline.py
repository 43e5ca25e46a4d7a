"""Acceptance latency, the embedded engine (demo, Olist replay) and model training time."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from floatbridge.bench import infra
from floatbridge.bench.core import NotRun, Sizes


def accept(sizes: Sizes) -> dict[str, float]:
    db, kafka = infra.database(), infra.kafka()
    if db is None:
        raise NotRun("no PostgreSQL reachable")
    if kafka is None:
        raise NotRun("no Kafka broker reachable")
    from services.disbursement import bench as db_bench

    res = db_bench.run(db, kafka, sizes.pick(300, 20), 20)
    return {"p50_ms": res["published_p50_ms"], "p99_ms": res["published_p99_ms"],
            "outbox_p50_ms": res["outbox_p50_ms"], "outbox_p99_ms": res["outbox_p99_ms"]}


def demo(sizes: Sizes) -> dict[str, float]:
    try:
        from floatbridge.embedded.runner import demo as run_demo
    except ImportError as exc:
        raise NotRun(f"embedded engine not importable: {exc}") from None
    out = Path(tempfile.mkdtemp(prefix="fb-bench-demo-"))
    try:
        merchants, days = (200, 90) if not sizes.quick else (5, 10)
        t0 = time.perf_counter()
        result = run_demo(merchants, days, 7, out, progress=False)
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"events_per_second": result.events_per_second, "seconds": wall, "events": float(result.events)}


def olist(sizes: Sizes) -> dict[str, float]:
    data = infra.olist_data()
    if data is None:
        raise NotRun("Olist data not found (../shared/data/olist or FLOATBRIDGE_OLIST_DATA)")
    try:
        from floatbridge.embedded.runner import replay_olist
    except ImportError as exc:
        raise NotRun(f"embedded engine not importable: {exc}") from None
    out = Path(tempfile.mkdtemp(prefix="fb-bench-olist-"))
    try:
        t0 = time.perf_counter()
        result = replay_olist(data, out, limit_orders=None if not sizes.quick else 300, progress=False)
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"seconds": wall, "events": float(result.events), "events_per_second": result.events / wall}


def training(sizes: Sizes) -> dict[str, float]:
    """LightGBM with the project's training parameters on synthetic rows of the real feature width."""
    try:
        import lightgbm as lgb
        import numpy as np

        from floatbridge.modeling.train import TrainConfig, lgb_params
        from services.underwriter.domain.features import FEATURE_NAMES
    except ImportError as exc:
        raise NotRun(f"modeling pipeline not importable: {exc}") from None
    rows = sizes.pick(1_000_000, 20_000)
    cfg = TrainConfig()
    rng = np.random.default_rng(cfg.seed)
    width = len(FEATURE_NAMES)
    x = rng.gamma(2.0, 10.0, size=(rows, width))
    # A label with real signal in a few columns, so boosting runs its rounds as on real data (~5% defaults).
    logit = -3.2 + 0.04 * (x[:, 0] - 20) - 0.03 * (x[:, 1] - 20) + 0.02 * (x[:, 2] - 20)
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    cut = int(rows * 0.8)
    params = lgb_params(cfg)
    rounds = cfg.max_rounds if not sizes.quick else 20
    t0 = time.perf_counter()
    train_set = lgb.Dataset(x[:cut], y[:cut], feature_name=list(FEATURE_NAMES), free_raw_data=False)
    valid_set = lgb.Dataset(x[cut:], y[cut:], reference=train_set)
    booster = lgb.train(params, train_set, num_boost_round=rounds, valid_sets=[valid_set],
                        callbacks=[lgb.early_stopping(cfg.early_stopping, verbose=False)])
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rows": float(rows), "rounds": float(booster.current_iteration()),
            "features": float(width)}
