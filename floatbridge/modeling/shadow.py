"""Champion/challenger: score both models on the same decision points and report agreement."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from floatbridge.modeling.dataset import DatasetBuilder


def shadow(events: Iterable[dict[str, Any]], registry: str, challenger: str) -> dict[str, Any]:
    """Agreement of the challenger with the champion at every weekly decision point of `events`."""
    from services.underwriter.adapters.lightgbm_scorer import LightGBMScorer
    from services.underwriter.adapters.registry import champion_version
    from services.underwriter.domain.policy import PolicySettings, base_rate_bps

    champ = LightGBMScorer.champion(registry)
    chall = LightGBMScorer.version_of(registry, challenger)
    builder = DatasetBuilder()
    for e in events:
        builder.add(e)
    snaps = builder.finish().snapshots
    policy = PolicySettings()
    same_tier = 0
    diffs: list[float] = []
    for s in snaps:
        a, b = champ.score(s.features).pd, chall.score(s.features).pd
        same_tier += base_rate_bps(a, policy) == base_rate_bps(b, policy)
        diffs.append(abs(a - b))
    diffs.sort()
    n = len(snaps)
    return {
        "champion": champion_version(registry), "challenger": challenger, "decision_points": n,
        "same_advance_tier": same_tier / n if n else 0.0,
        "pd_abs_diff_median": diffs[n // 2] if n else 0.0,
        "pd_abs_diff_p95": diffs[int(n * 0.95)] if n else 0.0,
    }
