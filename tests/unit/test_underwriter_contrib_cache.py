"""Reason codes from remembered per-tree contributions must be LightGBM's pred_contrib of the whole model."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.underwriter.domain.features import FEATURE_NAMES, compute_features
from services.underwriter.domain.reasons import feature_reason
from services.underwriter.domain.state import MerchantState
from services.underwriter.settings import load
from services.underwriter.synthetic import Profile, history

np = pytest.importorskip("numpy")
lgb = pytest.importorskip("lightgbm")

from services.underwriter.adapters.contrib_cache import ContribCache  # noqa: E402
from services.underwriter.adapters.lightgbm_scorer import LightGBMScorer  # noqa: E402

pytestmark = pytest.mark.unit
START = datetime(2025, 1, 1, tzinfo=UTC)
N = len(FEATURE_NAMES)


def merchant_rows() -> list[list[float]]:
    """Feature rows of simulated merchants of every archetype, as of several days of their history."""
    rows = []
    for i, profile in enumerate([Profile(), Profile(refund_rate=0.2), Profile(cancel_rate=0.3),
                                 Profile(chargeback_rate=0.05), Profile(orders_per_day=40.0, buyers=12)]):
        s = MerchantState(f"m{i}")
        events = history(f"m{i}", START, 90, profile)
        for j, e in enumerate(events):
            s.apply(e)
            if j % 25 == 0:
                rows.append(compute_features(s, datetime.fromtimestamp(s.latest, UTC) + timedelta(hours=1)))
    return rows


def random_rows(count: int, seed: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    scale = rng.choice([0.01, 1.0, 100.0, 1e6], size=(count, N))
    return (rng.random((count, N)) * scale).tolist()


def whole_model(scorer: LightGBMScorer, row: list[float]) -> np.ndarray:
    return scorer.booster.predict(np.asarray([row], dtype=np.float64), pred_contrib=True, num_threads=1)[0]


def test_reason_codes_and_pd_from_the_cache_equal_the_whole_model_pred_contrib_on_merchants_and_random_rows() -> None:
    scorer = LightGBMScorer.champion(load().model_registry)
    assert scorer._cache is not None and scorer._cache.usable
    rows = merchant_rows() + random_rows(300, seed=3)
    for _ in range(2):  # the second pass is served from remembered trees
        for row in rows:
            mine = scorer._cache.contributions(row)
            theirs = whole_model(scorer, row)
            assert mine is not None
            np.testing.assert_allclose(mine, theirs, rtol=1e-9, atol=1e-12)
            cached = scorer.score(row)
            top = sorted(((float(c), i) for i, c in enumerate(theirs[:-1]) if c > 0), reverse=True)[:3]
            assert cached.reasons == [feature_reason(FEATURE_NAMES[i], row[i]) for _, i in top]
            expected_pd = scorer.calibration(1.0 / (1.0 + math.exp(-float(np.sum(theirs)))))
            assert abs(cached.pd - min(1.0, max(0.0, expected_pd))) < 1e-12
    assert scorer._cache.hits > scorer._cache.misses


def test_rows_sitting_exactly_on_split_thresholds_go_the_way_lightgbm_sends_them() -> None:
    scorer = LightGBMScorer.champion(load().model_registry)
    cache = scorer._cache
    assert cache is not None
    rng = np.random.default_rng(11)
    feats, thrs = cache._feat.ravel(), cache._thr.ravel()
    for _ in range(40):
        row = [0.0] * N
        for k in rng.choice(len(feats), size=N * 3):
            if thrs[k] != -np.inf:
                row[int(feats[k])] = float(thrs[k] + [0.0, -1e-12, 1e-12][int(k) % 3] * abs(thrs[k]))
        np.testing.assert_allclose(cache.contributions(row), whole_model(scorer, row), rtol=1e-9, atol=1e-12)


def test_a_full_cache_starts_over_and_stays_exact(tmp_path: Path) -> None:
    scorer = LightGBMScorer.champion(load().model_registry)
    trees = scorer.booster.num_trees()
    cache = ContribCache(str(Path(load().model_registry) / scorer.version / "model.txt"), N, trees,
                         max_entries=trees + 5)
    assert cache.usable
    for row in random_rows(30, seed=5):
        np.testing.assert_allclose(cache.contributions(row), whole_model(scorer, row), rtol=1e-9, atol=1e-12)
        assert cache.entries() <= trees + 5


def test_a_cache_whose_split_plan_is_wrong_fails_its_self_check_and_the_scorer_uses_the_whole_model() -> None:
    scorer = LightGBMScorer.champion(load().model_registry)
    trees = scorer.booster.num_trees()
    cache = ContribCache(str(Path(load().model_registry) / scorer.version / "model.txt"), N, trees)
    real = cache._thr.copy()
    cache._thr = np.where(real == -np.inf, real, real * 1.5 + 1.0)  # splits read at the wrong place
    assert cache.verify(lambda row: whole_model(scorer, row)) is False
    assert cache.usable is False and cache.contributions([1.0] * N) is None
    row = random_rows(1, seed=9)[0]
    scorer._cache = cache
    theirs = whole_model(scorer, row)
    top = sorted(((float(c), i) for i, c in enumerate(theirs[:-1]) if c > 0), reverse=True)[:3]
    assert scorer.score(row).reasons == [feature_reason(FEATURE_NAMES[i], row[i]) for _, i in top]


def test_a_model_with_missing_value_splits_is_not_cached(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((400, 3))
    x[rng.random((400, 3)) < 0.3] = np.nan
    y = (np.nan_to_num(x[:, 0]) + rng.random(400) * 0.3 > 0.6).astype(int)
    booster = lgb.train({"objective": "binary", "verbose": -1, "num_leaves": 4, "min_data_in_leaf": 5},
                        lgb.Dataset(x, y), num_boost_round=5)
    path = tmp_path / "model.txt"
    booster.save_model(str(path))
    assert ContribCache(str(path), 3, booster.num_trees()).usable is False
