"""The scoring port: features in, calibrated probability of default and reasons out (stdlib only)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from services.underwriter.domain.features import FEATURE_NAMES, INDEX
from services.underwriter.domain.reasons import Reason, feature_reason


@dataclass(frozen=True, slots=True)
class Score:
    pd: float
    reasons: list[Reason] = field(default_factory=list)
    model_version: str = "unknown"


class Scorer(Protocol):
    @property
    def version(self) -> str: ...

    def score(self, features: list[float]) -> Score: ...


class FixedScorer:
    """A scorer returning one PD: for tests and for running the policy without a model."""

    def __init__(self, pd: float = 0.01, version: str = "fixed-0") -> None:
        if not 0.0 <= pd <= 1.0:
            raise ValueError(f"pd must be within [0, 1], got {pd}")
        self.pd = pd
        self._version = version

    @property
    def version(self) -> str:
        return self._version

    def score(self, features: list[float]) -> Score:
        return Score(self.pd, [], self._version)


class RuleScorer:
    """A transparent logistic rule over a few features (documented fallback and test double)."""

    WEIGHTS: dict[str, float] = {
        "refund_rate_30d": 9.0, "cancel_rate_30d": 5.0, "chargeback_rate_90d": 40.0,
        "worst_dpd": 0.08, "loans_charged_off": 3.0, "top_buyer_share_30d": 2.5,
    }

    def __init__(self, version: str = "rules-1") -> None:
        self._version = version

    @property
    def version(self) -> str:
        return self._version

    def score(self, features: list[float]) -> Score:
        z = -4.2 - 0.01 * min(features[INDEX["tenure_days"]], 180)
        contrib = {name: w * features[INDEX[name]] for name, w in self.WEIGHTS.items()}
        z += sum(contrib.values())
        top = sorted((c, n) for n, c in contrib.items() if c > 0.2)[::-1][:3]
        reasons = [feature_reason(n, features[INDEX[n]]) for _, n in top]
        return Score(1.0 / (1.0 + math.exp(-z)), reasons, self._version)


__all__ = ["FEATURE_NAMES", "FixedScorer", "Reason", "RuleScorer", "Score", "Scorer"]
