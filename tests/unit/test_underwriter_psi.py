"""Score PSI: the pure math, the rolling window and the gauge wired from the champion's metadata."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from floatbridge.modeling.score_reference import score_reference
from services.underwriter.adapters.metrics import UnderwriterMetrics
from services.underwriter.bootstrap import bootstrap
from services.underwriter.domain.policy import PolicySettings
from services.underwriter.domain.psi import RollingPSI, ScoreReference, psi, reference_from_scores, shares_of
from services.underwriter.domain.scoring import FixedScorer
from services.underwriter.settings import DEFAULT_REGISTRY, UnderwriterSettings

pytestmark = pytest.mark.unit


def _training_pds(n: int = 5000, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [rng.betavariate(1.2, 30) for _ in range(n)]


def test_identical_distributions_have_psi_near_zero() -> None:
    ref = reference_from_scores(_training_pds(), bins=10)
    assert len(ref.shares) == 10
    assert psi(ref.shares, shares_of(_training_pds(seed=2), ref)) < 0.02


def test_pds_shifted_upwards_have_psi_above_alert_threshold() -> None:
    ref = reference_from_scores(_training_pds(), bins=10)
    shifted = [min(1.0, p * 2.5) for p in _training_pds(seed=2)]
    assert psi(ref.shares, shares_of(shifted, ref)) > 0.2


def test_psi_formula_matches_hand_computation() -> None:
    expected = 0.3 * math.log(0.8 / 0.5) + (-0.3) * math.log(0.2 / 0.5)
    assert psi([0.5, 0.5], [0.8, 0.2]) == pytest.approx(expected)


def test_psi_rejects_share_vectors_of_different_lengths() -> None:
    with pytest.raises(ValueError, match="same non-zero length"):
        psi([0.5, 0.5], [1.0])


def test_reference_with_shares_not_summing_to_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        ScoreReference.from_json({"edges": [0.0, 0.5, 1.0], "shares": [0.5, 0.6]})


def test_scores_outside_reference_edges_count_in_end_bins() -> None:
    ref = ScoreReference((0.1, 0.2, 0.3), (0.5, 0.5))
    assert shares_of([0.0, 0.05, 0.9, 0.3], ref) == [0.5, 0.5]


def test_rolling_psi_updates_every_n_scores_over_the_latest_window() -> None:
    ref = reference_from_scores(_training_pds(), bins=10)
    rolling = RollingPSI(ref, window=1000, every=200)
    values = [rolling.add(p) for p in _training_pds(1000, seed=3)]
    published = [v for v in values if v is not None]
    assert len(published) == 5 and values[198] is None and values[199] is not None
    assert published[-1] < 0.05
    # The window forgets: after a full window of shifted scores the PSI reflects only them.
    for p in _training_pds(1000, seed=4):
        last = rolling.add(min(1.0, p * 3))
    assert last is not None and last > 0.2


def test_metrics_gauge_set_from_scored_pds() -> None:
    registry = CollectorRegistry()
    metrics = UnderwriterMetrics(registry)
    metrics.track_psi("m-1", score_reference(_training_pds(), "test"), window=400, every=200)
    assert math.isnan(registry.get_sample_value("floatbridge_underwriter_score_psi", {"model_version": "m-1"}))
    for p in _training_pds(400, seed=5):
        metrics.scored("event", min(1.0, p * 3), 1000)
    assert registry.get_sample_value("floatbridge_underwriter_score_psi", {"model_version": "m-1"}) > 0.2


def test_merchants_without_a_limit_do_not_count_towards_psi() -> None:
    registry = CollectorRegistry()
    metrics = UnderwriterMetrics(registry)
    metrics.track_psi("m-1", score_reference(_training_pds(), "test"), window=200, every=200)
    for _ in range(400):
        metrics.scored("event", 0.99, 0)  # ineligible (new) merchants: not the training population
    assert math.isnan(registry.get_sample_value("floatbridge_underwriter_score_psi", {"model_version": "m-1"}))


def test_bootstrap_tracks_psi_of_champion_and_exports_kill_switch() -> None:
    registry = CollectorRegistry()
    uw = bootstrap(settings=UnderwriterSettings(psi_window=200), policy=PolicySettings(kill_switch=True),
                   metrics_registry=registry)
    champion = (Path(DEFAULT_REGISTRY) / "CHAMPION").read_text().strip()
    assert registry.get_sample_value("floatbridge_underwriter_kill_switch") == 1.0
    for _ in range(200):
        uw.metrics.scored("event", 0.9, 1000)  # everything in the top bin: far from the training population
    assert registry.get_sample_value("floatbridge_underwriter_score_psi", {"model_version": champion}) > 0.2


def test_committed_champion_metadata_has_a_score_reference() -> None:
    champion = (Path(DEFAULT_REGISTRY) / "CHAMPION").read_text().strip()
    meta = json.loads((Path(DEFAULT_REGISTRY) / champion / "metadata.json").read_text())
    ref = ScoreReference.from_json(meta["score_reference"])
    assert len(ref.shares) >= 2 and meta["score_reference"]["population"]


def test_injected_scorer_outside_the_registry_has_no_psi_gauge_and_kill_switch_off() -> None:
    registry = CollectorRegistry()
    bootstrap(settings=UnderwriterSettings(), scorer=FixedScorer(0.01, "fixed-0"),
              policy=PolicySettings(), metrics_registry=registry)
    assert registry.get_sample_value("floatbridge_underwriter_score_psi", {"model_version": "fixed-0"}) is None
    assert registry.get_sample_value("floatbridge_underwriter_kill_switch") == 0.0
