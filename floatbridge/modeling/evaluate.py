"""Model metrics (AUC, KS, Brier, ECE, PSI), lending outcomes at a cut-off, and the two baselines."""

from __future__ import annotations

from typing import Any

import numpy as np

from floatbridge.modeling.dataset import Snapshot


def auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def ks(y: np.ndarray, p: np.ndarray) -> float:
    """Kolmogorov-Smirnov: the largest gap between the score distributions of defaults and non-defaults."""
    if not 0 < y.sum() < len(y):
        return float("nan")
    order = np.argsort(-p, kind="stable")
    ys = y[order]
    tpr = np.cumsum(ys) / ys.sum()
    fpr = np.cumsum(1 - ys) / (len(ys) - ys.sum())
    return float(np.max(tpr - fpr))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((p - y) ** 2))


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Equal-count bins of predicted PD with the observed default rate in each."""
    order = np.argsort(p, kind="stable")
    rows = []
    for chunk in np.array_split(order, bins):
        if len(chunk):
            rows.append({"n": int(len(chunk)), "predicted": float(p[chunk].mean()), "observed": float(y[chunk].mean())})
    return rows


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: count-weighted |predicted - observed| over equal-count bins."""
    table = calibration_table(y, p, bins)
    n = sum(r["n"] for r in table)
    return float(sum(r["n"] * abs(r["predicted"] - r["observed"]) for r in table) / n) if n else float("nan")


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float:
    """Population stability index of `actual` against `expected`, on the expected quantile bins."""
    if len(expected) == 0 or len(actual) == 0:
        return float("nan")
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)))
    if len(edges) < 3:
        return 0.0
    e = np.histogram(np.clip(expected, edges[0], edges[-1]), edges)[0] / len(expected)
    a = np.histogram(np.clip(actual, edges[0], edges[-1]), edges)[0] / len(actual)
    e, a = np.clip(e, 1e-4, None), np.clip(a, 1e-4, None)
    return float(np.sum((a - e) * np.log(a / e)))


def losses(snaps: list[Snapshot], scale: float = 1.0) -> np.ndarray:
    """Loss of each snapshot's advance (principal scaled by `scale`): what the collections did not cover."""
    out = np.empty(len(snaps))
    for i, s in enumerate(snaps):
        owed = s.owed * scale
        out[i] = max(0.0, owed - s.collected) if s.label == 1 else 0.0
    return np.minimum(out, np.array([s.principal * scale for s in snaps]))


def lending_at(snaps: list[Snapshot], pd: np.ndarray, approval: float) -> dict[str, float]:
    """Approve the `approval` share with the lowest PD; report volume, loss and the loss rate."""
    n = max(1, int(round(len(snaps) * approval)))
    chosen = np.argsort(pd, kind="stable")[:n]
    principal = np.array([s.principal for s in snaps], dtype=float)
    loss = losses(snaps)
    vol = float(principal[chosen].sum())
    return {"approval": n / len(snaps), "volume": vol, "loss": float(loss[chosen].sum()),
            "loss_rate": float(loss[chosen].sum() / vol) if vol else 0.0}


def equal_volume_comparison(snaps: list[Snapshot], pd: np.ndarray, rule_rate: float) -> dict[str, float]:
    """The rule-based advance lends `rule_rate` of the model's advance to every eligible merchant;
    the model lends its full advance to the lowest-PD merchants until it reaches the same volume."""
    principal = np.array([s.principal for s in snaps], dtype=float)
    rule_volume = float(principal.sum() * rule_rate)
    rule_loss = float(losses(snaps, rule_rate).sum())
    order = np.argsort(pd, kind="stable")
    cum = np.cumsum(principal[order])
    k = int(np.searchsorted(cum, rule_volume)) + 1
    chosen = order[:k]
    model_loss = float(losses(snaps)[chosen].sum())
    model_volume = float(principal[chosen].sum())
    return {
        "volume": rule_volume, "rule_loss": rule_loss, "rule_loss_rate": rule_loss / rule_volume if rule_volume else 0.0,
        "model_volume": model_volume, "model_loss": model_loss,
        "model_loss_rate": model_loss / model_volume if model_volume else 0.0,
        "model_approval": k / len(snaps),
        "loss_reduction": 1.0 - model_loss / rule_loss if rule_loss else 0.0,
    }


def scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {"auc": auc(y, p), "ks": ks(y, p), "brier": brier(y, p), "ece": ece(y, p),
            "default_rate": float(y.mean()) if len(y) else float("nan"), "n": int(len(y))}


def logistic_scorecard(x_train: np.ndarray, y_train: np.ndarray, seed: int) -> Any:
    """The scorecard baseline: standardised log-features, L2 logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    signed_log = FunctionTransformer(lambda a: np.sign(a) * np.log1p(np.abs(a)))
    model = make_pipeline(signed_log, StandardScaler(), LogisticRegression(max_iter=2000, C=0.5, random_state=seed))
    return model.fit(x_train, y_train)
