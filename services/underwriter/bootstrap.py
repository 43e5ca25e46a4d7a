"""Wire the underwriter core with real or fake adapters. Nothing connects at import time."""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from services.underwriter.domain.decisions import Portfolio
from services.underwriter.domain.policy import PolicySettings
from services.underwriter.domain.scoring import Scorer
from services.underwriter.service import MemoryPortfolio, Metrics, Underwriter
from services.underwriter.settings import UnderwriterSettings, load, load_policy


def bootstrap(
    settings: UnderwriterSettings | None = None,
    scorer: Scorer | None = None,
    state_store: MutableMapping[str, bytes] | None = None,
    portfolio: Portfolio | None = None,
    registry: str | Path | None = None,
    policy: PolicySettings | None = None,
    metrics: Metrics | None = None,
    challenger: Scorer | None = None,
    metrics_registry: Any = None,
) -> Underwriter:
    """Build an Underwriter. Defaults: settings and policy from FLOATBRIDGE_UNDERWRITER_*, the champion
    LightGBM model of `registry` (default settings.model_registry), a dict state store, in-memory portfolio
    counters and Prometheus metrics on a fresh CollectorRegistry (or `metrics_registry`)."""
    settings = settings or load()
    policy = policy or load_policy()
    root = Path(registry or settings.model_registry)
    if scorer is None or (challenger is None and settings.challenger):
        from services.underwriter.adapters.lightgbm_scorer import LightGBMScorer

        if scorer is None:
            scorer = LightGBMScorer.champion(root)
        if challenger is None and settings.challenger:
            challenger = LightGBMScorer.version_of(root, settings.challenger)
    if metrics is None:
        from services.underwriter.adapters.metrics import UnderwriterMetrics

        real = UnderwriterMetrics(metrics_registry)
        real.model_info(scorer.version, challenger.version if challenger else "")
        real.kill_switch_state(policy.kill_switch)
        reference = _score_reference(root, scorer.version)
        if reference is not None:
            real.track_psi(scorer.version, reference, settings.psi_window)
        metrics = real
    return Underwriter(
        settings=settings,
        policy=policy,
        scorer=scorer,
        store={} if state_store is None else state_store,
        portfolio=portfolio or MemoryPortfolio(),
        metrics=metrics,
        challenger=challenger,
    )


def _score_reference(root: Path, version: str) -> dict[str, Any] | None:
    """The champion's training score distribution (metadata score_reference), if the registry has one."""
    from services.underwriter.adapters.registry import RegistryError, load_version

    try:
        reference = load_version(root, version).metadata.get("score_reference")
    except RegistryError:
        return None  # an injected scorer that is not in this registry (tests, FixedScorer)
    return reference if isinstance(reference, dict) else None
