"""The committed champion, the registry and the LightGBM scorer."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.underwriter.adapters.lightgbm_scorer import Calibration, LightGBMScorer
from services.underwriter.adapters.registry import (
    RegistryError,
    champion_version,
    load_champion,
    load_version,
    promote,
)
from services.underwriter.bootstrap import bootstrap
from services.underwriter.domain.features import FEATURE_NAMES, compute_features
from services.underwriter.domain.state import MerchantState
from services.underwriter.settings import DEFAULT_REGISTRY, load
from services.underwriter.synthetic import Profile, history

pytestmark = pytest.mark.unit
START = datetime(2025, 1, 1, tzinfo=UTC)


def features_of(profile: Profile) -> list[float]:
    s = MerchantState("m1")
    for e in history("m1", START, 60, profile):
        s.apply(e)
    return compute_features(s, datetime.fromtimestamp(s.latest, UTC))


BOOTSTRAP = "bootstrap-1"


def test_committed_champion_matches_the_features_and_bootstrap_model_is_small() -> None:
    assert load_champion(DEFAULT_REGISTRY).metadata["features"] == list(FEATURE_NAMES)
    entry = load_version(DEFAULT_REGISTRY, BOOTSTRAP)
    assert entry.metadata["features"] == list(FEATURE_NAMES)
    assert entry.model_file.stat().st_size < 300_000


def test_refund_heavy_merchant_scores_riskier_with_refund_reason_in_plain_words() -> None:
    scorer = LightGBMScorer.version_of(DEFAULT_REGISTRY, BOOTSTRAP)
    good = scorer.score(features_of(Profile(refund_rate=0.0, cancel_rate=0.0)))
    bad = scorer.score(features_of(Profile(refund_rate=0.3, cancel_rate=0.0)))
    assert 0.0 <= good.pd < bad.pd <= 1.0
    assert bad.model_version == BOOTSTRAP
    refund = [r for r in bad.reasons if r.code.startswith("REFUND")]
    assert refund and "%" in refund[0].text
    assert scorer.pd_only(features_of(Profile(refund_rate=0.3, cancel_rate=0.0))) == pytest.approx(bad.pd)


def test_model_with_different_feature_order_is_refused(tmp_path: Path) -> None:
    shutil.copytree(Path(DEFAULT_REGISTRY) / BOOTSTRAP, tmp_path / "swapped")
    meta_path = tmp_path / "swapped" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["features"][0], meta["features"][1] = meta["features"][1], meta["features"][0]
    meta_path.write_text(json.dumps(meta))
    promote(tmp_path, "swapped")
    with pytest.raises(RegistryError, match="different order"):
        LightGBMScorer.champion(tmp_path)


def test_promote_refuses_an_incomplete_version(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.txt").write_text("x")
    with pytest.raises(RegistryError, match="missing"):
        promote(tmp_path, "half")


def test_isotonic_calibration_interpolates_and_clips() -> None:
    cal = Calibration({"method": "isotonic", "x": [0.1, 0.5, 0.9], "y": [0.01, 0.2, 0.6]})
    assert cal(0.0) == 0.01 and cal(1.0) == 0.6 and cal(0.3) == pytest.approx(0.105)


def test_challenger_is_shadow_scored_and_agreement_recorded() -> None:
    version = champion_version(DEFAULT_REGISTRY)
    uw = bootstrap(settings=load(challenger=version))
    for e in history("m1", START, 30, Profile()):
        uw.handle(e)
    agree = uw.metrics.registry.get_sample_value(  # type: ignore[attr-defined]
        "floatbridge_underwriter_challenger_scores_total", {"agreement": "agree"})
    assert agree and agree > 0
