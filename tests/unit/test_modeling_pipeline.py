"""Risk-model lifecycle: no look-ahead, reproducible training, registry checks, backtest through serving code."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from floatbridge.cli import main
from floatbridge.modeling import backtest
from floatbridge.modeling.dataset import build_dataset
from floatbridge.modeling.train import TrainConfig, train, write_version
from floatbridge.simulator import SimConfig, simulate
from services.underwriter.adapters.lightgbm_scorer import LightGBMScorer
from services.underwriter.adapters.registry import RegistryError
from services.underwriter.domain.scoring import FixedScorer

pytestmark = pytest.mark.unit

# Enough failing merchants for both outcomes in every time window, small enough to stay fast.
CFG = SimConfig(merchants=100, days=170, seed=5, mean_orders_per_day=0.7,
                mix={"steady": 0.4, "declining": 0.2, "brushing": 0.25, "bust_out": 0.15})


@pytest.fixture(scope="module")
def events() -> list[dict]:
    return list(simulate(CFG))


@pytest.fixture(scope="module")
def dataset(events):
    return build_dataset(events)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, dataset):
    root = tmp_path_factory.mktemp("registry")
    write_version(str(root), train(dataset, TrainConfig(seed=3, version="v-a", max_rounds=60)))
    return root


def test_changing_events_after_t_leaves_features_at_t_unchanged(events, dataset):
    cut = events[len(events) // 2]["time"]
    altered = copy.deepcopy(events)
    for e in altered:
        if e["time"] > cut and e["type"] in ("order.placed", "order.paid", "order.refunded"):
            e["data"]["amount"]["amount"] = e["data"]["amount"]["amount"] * 7 + 130
    altered = [e for e in altered if not (e["time"] > cut and e["type"] == "order.cancelled")]
    other = build_dataset(altered)
    before = [(s.merchant_id, s.as_of, s.features) for s in dataset.snapshots if s.as_of < _ts(cut)]
    again = [(s.merchant_id, s.as_of, s.features) for s in other.snapshots if s.as_of < _ts(cut)]
    assert before and before == again
    # ...while the future did change what happened afterwards.
    assert [s.features for s in dataset.snapshots] != [s.features for s in other.snapshots]


def _ts(t: str) -> int:
    from services.common.timeutil import parse_rfc3339

    return int(parse_rfc3339(t).timestamp())


def test_labels_come_from_the_future_and_both_outcomes_occur(dataset):
    labelled = dataset.labelled()
    assert 0 < sum(s.label for s in labelled) < len(labelled)
    assert any(s.label is None for s in dataset.snapshots)  # the last weeks are censored, not guessed


def test_training_twice_with_the_same_seed_gives_an_identical_model(tmp_path, dataset, registry):
    write_version(str(tmp_path), train(dataset, TrainConfig(seed=3, version="v-a", max_rounds=60)))
    assert (tmp_path / "v-a" / "model.txt").read_bytes() == (registry / "v-a" / "model.txt").read_bytes()
    meta = json.loads((registry / "v-a" / "metadata.json").read_text())
    assert meta["calibration"]["method"] == "isotonic" and meta["data_hash"]
    assert {"auc", "ks", "brier", "ece"} <= set(meta["metrics"]["test"])
    assert "Known limits" in (registry / "v-a" / "model_card.md").read_text()


def test_the_serving_scorer_loads_the_trained_version_and_refuses_mismatched_features(tmp_path, registry, dataset):
    scorer = LightGBMScorer.version_of(registry, "v-a")
    assert 0.0 <= scorer.score(dataset.snapshots[0].features).pd <= 1.0
    root = tmp_path / "reg"
    shutil.copytree(registry, root)
    meta_path = root / "v-a" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["features"] = meta["features"][::-1]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(RegistryError, match="different features"):
        LightGBMScorer.version_of(root, "v-a")
    assert main(["model", "promote", "v-a", "--registry", str(root)]) == 2
    assert not (root / "CHAMPION").exists()
    assert main(["model", "promote", "v-a", "--registry", str(registry)]) == 0
    assert (registry / "CHAMPION").read_text().strip() == "v-a"


def test_backtest_decisions_come_from_the_serving_core(monkeypatch, events):
    import services.underwriter.service as serving

    sample = list(simulate(SimConfig(merchants=6, days=45, seed=2, mix={"steady": 1.0})))
    calls = []
    real = serving.decide_limit

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(serving, "decide_limit", spy)
    lenient = backtest.run(sample, None, "unused", scorer=FixedScorer(0.01))
    assert calls and lenient.accepted > 0 and lenient.loans
    strict = backtest.run(sample, None, "unused", scorer=FixedScorer(0.99))
    assert strict.offers == 0 and not strict.loans
    summary = backtest.summarise(lenient)
    assert summary["all"]["principal"] == sum(loan["principal"] for loan in lenient.loans.values()) > 0
