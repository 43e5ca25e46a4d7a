"""Train the small bootstrap champion on synthetic labelled merchant states.

Until a model trained on real outcomes exists, this gives the underwriter a working LightGBM champion:
synthetic merchants (steady, growing, refund-heavy, chargeback-prone, few-buyer) are built from event
histories with the real MerchantState and features module; each snapshot is labelled default / no default
by a documented latent risk rule; LightGBM (monotone where the direction is known) is fitted and calibrated
with isotonic regression on a held-out split.

    python -m services.underwriter.train_bootstrap --out models/registry --version bootstrap-1 [--promote]
"""

from __future__ import annotations

import argparse
import json
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from services.underwriter.domain.features import FEATURE_NAMES, INDEX, compute_features
from services.underwriter.domain.state import MerchantState
from services.underwriter.synthetic import Profile, history

START = datetime(2025, 1, 1, tzinfo=UTC)
# +1: more of it raises PD; -1: lowers PD; 0: unconstrained.
MONOTONE = {
    "refund_rate_7d": 1, "refund_rate_30d": 1, "cancel_rate_7d": 1, "cancel_rate_30d": 1,
    "chargeback_rate_90d": 1, "worst_dpd": 1, "loans_charged_off": 1, "top_buyer_share_30d": 1,
    "repeat_buyer_share_30d": 1, "tenure_days": -1, "on_time_rate": -1,
}


def latent_logit(f: list[float]) -> float:
    """The synthetic truth: default risk rises with refunds, cancellations, chargebacks, buyer concentration
    and volatility, and falls with tenure and settled sales."""
    g = f.__getitem__
    return (-5.2 + 14 * g(INDEX["refund_rate_30d"]) + 6 * g(INDEX["cancel_rate_30d"])
            + 80 * g(INDEX["chargeback_rate_90d"]) + 3 * g(INDEX["top_buyer_share_30d"])
            + 0.8 * min(g(INDEX["gmv_volatility_30d"]), 3) - 0.012 * min(g(INDEX["tenure_days"]), 120)
            - 0.25 * math.log1p(g(INDEX["settled_orders_30d"])))


def random_profile(rng: random.Random) -> Profile:
    return Profile(
        orders_per_day=rng.choice([0.5, 1, 2, 4, 8]),
        ticket_minor=rng.choice([2_000, 5_000, 10_000, 30_000]),
        buyers=rng.choice([3, 10, 200, 5_000]),
        refund_rate=rng.choice([0.0, 0.02, 0.05, 0.15, 0.3]),
        cancel_rate=rng.choice([0.0, 0.03, 0.1, 0.3]),
        chargeback_rate=rng.choice([0.0, 0.0, 0.01, 0.05]),
    )


def dataset(merchants: int, seed: int) -> tuple[list[list[float]], list[int]]:
    rng = random.Random(seed)
    rows: list[list[float]] = []
    labels: list[int] = []
    for i in range(merchants):
        mid = f"train-{i}"
        days = rng.randint(20, 90)
        events = history(mid, START, days, random_profile(rng), seed=seed)
        snapshots = sorted({rng.randint(10, days) for _ in range(3)})
        state = MerchantState(mid)
        k = 0
        for e in events:
            when = datetime.fromisoformat(e["time"])
            while k < len(snapshots) and when > START + timedelta(days=snapshots[k]):
                f = compute_features(state, START + timedelta(days=snapshots[k]))
                rows.append(f)
                labels.append(1 if rng.random() < 1 / (1 + math.exp(-latent_logit(f))) else 0)
                k += 1
            state.apply(e)
    return rows, labels


def isotonic_points(raw: list[float], y: list[int], max_points: int = 40) -> dict[str, Any]:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, y)
    xs = sorted(set(float(v) for v in iso.X_thresholds_))
    step = max(1, len(xs) // max_points)
    xs = xs[::step] + ([xs[-1]] if xs[-1] not in xs[::step] else [])
    ys = [float(v) for v in iso.predict(xs)]
    return {"method": "isotonic", "x": xs, "y": ys}


def train(out: Path, version: str, merchants: int, seed: int, promote_it: bool) -> dict[str, Any]:
    import lightgbm as lgb
    import numpy as np
    from sklearn.metrics import brier_score_loss, roc_auc_score

    rows, labels = dataset(merchants, seed)
    x, y = np.asarray(rows), np.asarray(labels)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(len(y) * 0.7)
    tr, te = order[:cut], order[cut:]
    params = {
        "objective": "binary", "num_leaves": 15, "learning_rate": 0.05, "min_data_in_leaf": 20,
        "monotone_constraints": [MONOTONE.get(n, 0) for n in FEATURE_NAMES], "verbose": -1, "seed": seed,
    }
    booster = lgb.train(params, lgb.Dataset(x[tr], y[tr], feature_name=list(FEATURE_NAMES)), num_boost_round=80)
    raw = booster.predict(x[te])
    calibration = isotonic_points([float(v) for v in raw], [int(v) for v in y[te]])
    cal = np.interp(raw, calibration["x"], calibration["y"])
    metrics = {"auc": round(float(roc_auc_score(y[te], raw)), 4), "brier_calibrated": round(float(brier_score_loss(y[te], cal)), 4),
               "default_rate": round(float(y.mean()), 4), "rows": len(y), "test_rows": len(te)}
    path = out / version
    path.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(path / "model.txt"))
    metadata = {
        "version": version, "features": list(FEATURE_NAMES), "calibration": calibration, "metrics": metrics,
        "training_window": {"kind": "synthetic", "start": START.isoformat(), "merchants": merchants, "seed": seed},
        "label": "synthetic default (latent risk rule in services/underwriter/train_bootstrap.py)",
        "params": {k: v for k, v in params.items() if k != "monotone_constraints"}, "monotone": MONOTONE,
    }
    (path / "metadata.json").write_text(json.dumps(metadata, indent=1) + "\n", "utf-8")
    (path / "model_card.md").write_text(MODEL_CARD.format(version=version, **metrics, merchants=merchants), "utf-8")
    if promote_it:
        from services.underwriter.adapters.registry import promote

        promote(out, version)
    return metrics


MODEL_CARD = """# Model card: {version}

- Purpose: bootstrap champion so the underwriter can score before a model trained on real outcomes exists.
- Type: LightGBM binary classifier (80 trees, 15 leaves), monotone constraints on risk features,
  isotonic calibration on a 30% hold-out (stored as x/y thresholds in metadata.json).
- Data: {merchants} synthetic merchants (services/underwriter/synthetic.py), up to three snapshots each,
  features from services/underwriter/domain/features.py; {rows} rows, default rate {default_rate}.
- Label: synthetic, drawn from the latent risk rule `latent_logit` in train_bootstrap.py. It encodes
  assumptions, not observed defaults: do not use its PDs for pricing real money beyond a pilot.
- Hold-out: AUC {auc}, Brier (calibrated) {brier_calibrated} on {test_rows} rows.
- Replace with: `floatbridge train` on simulator or real outcomes, then `promote`.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "models" / "registry"))
    ap.add_argument("--version", default="bootstrap-1")
    ap.add_argument("--merchants", type=int, default=900)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--promote", action="store_true", help="make this version the champion")
    args = ap.parse_args(argv)
    metrics = train(Path(args.out), args.version, args.merchants, args.seed, args.promote)
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
