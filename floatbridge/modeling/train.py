"""Train the LightGBM PD model, calibrate it, evaluate it against baselines and write a registry version.

Registry version layout (read by the underwriter's scorer):
  <out>/<version>/model.txt      LightGBM text model (raw probability of default)
  <out>/<version>/metadata.json  features (serving order), calibration, windows, data hash, params, metrics
  <out>/<version>/model_card.md  metrics, calibration table, feature importance, known limits
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from floatbridge.modeling import evaluate as ev
from floatbridge.modeling.dataset import FEATURE_NAMES, Dataset, LabelPolicy, Snapshot, time_split
from floatbridge.modeling.score_reference import score_reference

# Directions known from credit sense: +1 = more of it raises PD, -1 = lowers it.
MONOTONE: dict[str, int] = {
    "refund_rate_7d": 1, "refund_rate_30d": 1, "cancel_rate_7d": 1, "cancel_rate_30d": 1,
    "chargeback_rate_90d": 1, "settlement_lag_days_90d": 1, "top_buyer_share_30d": 1,
    "worst_dpd": 1, "loans_charged_off": 1, "on_time_rate": -1, "loans_repaid": -1,
}
RULE_ADVANCE_RATE = 0.5  # the no-model baseline lends this share of the model's advance to everyone eligible


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 7
    num_threads: int = 2
    learning_rate: float = 0.05
    num_leaves: int = 15
    min_data_in_leaf: int = 40
    max_rounds: int = 800
    early_stopping: int = 50
    version: str | None = None


def feature_hash(names: tuple[str, ...] | list[str] = FEATURE_NAMES) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def arrays(snaps: list[Snapshot]) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([s.features for s in snaps], dtype=np.float64).reshape(len(snaps), len(FEATURE_NAMES))
    y = np.array([s.label for s in snaps], dtype=np.float64)
    return x, y


def lgb_params(cfg: TrainConfig) -> dict[str, Any]:
    return {
        "objective": "binary", "learning_rate": cfg.learning_rate, "num_leaves": cfg.num_leaves,
        "min_data_in_leaf": cfg.min_data_in_leaf, "feature_fraction": 0.9, "bagging_fraction": 0.9,
        "bagging_freq": 1, "lambda_l2": 1.0, "verbosity": -1, "seed": cfg.seed, "deterministic": True,
        "force_row_wise": True, "num_threads": cfg.num_threads,
        "monotone_constraints": [MONOTONE.get(n, 0) for n in FEATURE_NAMES],
        "monotone_constraints_method": "intermediate",
    }


class IsotonicCalibration:
    """Raw model probability -> PD, piecewise linear through isotonic fit points (clipped at the ends)."""

    def __init__(self, x: list[float], y: list[float]) -> None:
        self.x, self.y = x, y

    @classmethod
    def fit(cls, raw: np.ndarray, y: np.ndarray) -> IsotonicCalibration:
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True).fit(raw, y)
        return cls([float(v) for v in iso.X_thresholds_], [float(v) for v in iso.y_thresholds_])

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return np.interp(raw, self.x, self.y)

    def to_json(self) -> dict[str, Any]:
        return {"method": "isotonic", "input": "raw_probability", "x": self.x, "y": self.y,
                "interpolation": "linear, clipped to [x[0], x[-1]]"}


def _window(snaps: list[Snapshot]) -> dict[str, str]:
    fmt = lambda ts: datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    return {"start": fmt(min(s.as_of for s in snaps)), "end": fmt(max(s.as_of for s in snaps)), "rows": str(len(snaps))}


def train(dataset: Dataset, cfg: TrainConfig, policy: LabelPolicy | None = None) -> dict[str, Any]:
    """Fit, calibrate and evaluate; returns everything a registry version needs."""
    import lightgbm as lgb

    parts = time_split(dataset.labelled())
    for name, rows in parts.items():
        if not rows or (name == "train" and len({s.label for s in rows}) < 2):
            raise ValueError(f"the {name} window has {len(rows)} rows and needs both outcomes: simulate more")
    xs = {k: arrays(v) for k, v in parts.items()}
    params = lgb_params(cfg)
    train_set = lgb.Dataset(xs["train"][0], xs["train"][1], feature_name=list(FEATURE_NAMES), free_raw_data=False)
    valid_set = lgb.Dataset(xs["valid"][0], xs["valid"][1], reference=train_set)
    booster = lgb.train(params, train_set, num_boost_round=cfg.max_rounds, valid_sets=[valid_set],
                        valid_names=["valid"], callbacks=[lgb.early_stopping(cfg.early_stopping, verbose=False)])
    calib = IsotonicCalibration.fit(booster.predict(xs["calib"][0], num_iteration=booster.best_iteration), xs["calib"][1])

    def pd_of(x: np.ndarray) -> np.ndarray:
        return calib(booster.predict(x, num_iteration=booster.best_iteration))

    test_snaps = parts["test"]
    x_test, y_test = xs["test"]
    pd_test = pd_of(x_test)
    scorecard = ev.logistic_scorecard(xs["train"][0], xs["train"][1], cfg.seed)
    pd_card = scorecard.predict_proba(x_test)[:, 1]
    pd_train = pd_of(xs["train"][0])
    metrics = {
        "test": ev.scores(y_test, pd_test),
        "test_uncalibrated": ev.scores(y_test, booster.predict(x_test, num_iteration=booster.best_iteration)),
        "calibration_table": ev.calibration_table(y_test, pd_test),
        "psi_train_vs_test": ev.psi(pd_train, pd_test),
        "lending_at_70pct": ev.lending_at(test_snaps, pd_test, 0.70),
        "equal_volume_vs_rule": ev.equal_volume_comparison(test_snaps, pd_test, RULE_ADVANCE_RATE),
        "baseline_rule_advance": ev.lending_at(test_snaps, np.zeros(len(test_snaps)), 1.0),
        "baseline_scorecard": {**ev.scores(y_test, pd_card), "lending_at_70pct": ev.lending_at(test_snaps, pd_card, 0.70)},
        "best_iteration": booster.best_iteration,
    }
    digest = dataset.digest()
    version = cfg.version or f"lgbm-{digest[:10]}-s{cfg.seed}"
    importance = booster.feature_importance("gain", iteration=booster.best_iteration)
    metadata = {
        "version": version,
        "model_type": "lightgbm",
        "objective": "binary: default = 30+ days past due on an advance against open receivables",
        "features": list(FEATURE_NAMES),
        "feature_hash": feature_hash(),
        "calibration": calib.to_json(),
        # Baseline of the underwriter's PSI gauge: calibrated PDs of the training rows.
        "score_reference": score_reference(pd_train, f"training window, {len(pd_train)} rows"),
        "monotone_constraints": dict(MONOTONE),
        "best_iteration": booster.best_iteration,
        "params": {k: v for k, v in params.items() if k != "num_threads"} | {"num_threads": cfg.num_threads},
        "seed": cfg.seed,
        "windows": {k: _window(v) for k, v in parts.items()},
        "training_window": _window(parts["train"]),
        "data_hash": digest,
        "events": dataset.events,
        "label_policy": dataclasses.asdict(policy or LabelPolicy()),
        "metrics": metrics,
        "feature_importance_gain": {n: float(v) for n, v in sorted(zip(FEATURE_NAMES, importance, strict=True),
                                                                  key=lambda t: -t[1])},
    }
    return {"booster": booster, "metadata": metadata, "version": version, "pd_of": pd_of}


def write_version(out_dir: str, result: dict[str, Any], extra_card: str = "") -> str:
    """Write model.txt, metadata.json and model_card.md under out_dir/<version>; returns the folder."""
    from floatbridge.modeling.card import model_card

    folder = os.path.join(out_dir, result["version"])
    os.makedirs(folder, exist_ok=True)
    result["booster"].save_model(os.path.join(folder, "model.txt"), num_iteration=result["metadata"]["best_iteration"])
    with open(os.path.join(folder, "metadata.json"), "w", encoding="utf-8") as fh:
        json.dump(result["metadata"], fh, indent=2, sort_keys=True, allow_nan=True)
        fh.write("\n")
    with open(os.path.join(folder, "model_card.md"), "w", encoding="utf-8") as fh:
        fh.write(model_card(result["metadata"]) + extra_card)
    return folder
