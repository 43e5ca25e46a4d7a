"""Simulation configuration: one frozen dataclass, validated up front."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

ARCHETYPES = ("steady", "growing", "seasonal", "declining", "brushing", "bust_out")

DEFAULT_MIX: dict[str, float] = {
    "steady": 0.40,
    "growing": 0.18,
    "seasonal": 0.15,
    "declining": 0.14,
    "brushing": 0.07,
    "bust_out": 0.06,
}


class SimConfigError(ValueError):
    """A simulation setting is out of range."""


@dataclass(frozen=True)
class SimConfig:
    merchants: int = 100
    days: int = 180
    seed: int = 7
    start: str = "2024-01-01"  # UTC midnight of day 0
    currency: str = "BRL"
    source: str = "floatbridge-sim"
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    mean_orders_per_day: float = 1.6  # across merchants (log-normal spread)
    median_ticket_centavos: int = 9_000  # R$90.00
    # Probability, per merchant-year, that an otherwise healthy business hits a fatal shock.
    shock_rate_per_year: float = 0.06

    def validate(self) -> None:
        if not 1 <= self.merchants <= 1_000_000:
            raise SimConfigError(f"merchants must be between 1 and 1,000,000, got {self.merchants}")
        if not 1 <= self.days <= 3_650:
            raise SimConfigError(f"days must be between 1 and 3,650, got {self.days}")
        if self.mean_orders_per_day <= 0:
            raise SimConfigError("mean_orders_per_day must be positive")
        unknown = set(self.mix) - set(ARCHETYPES)
        if unknown:
            raise SimConfigError(f"unknown archetypes in mix: {sorted(unknown)}; known: {list(ARCHETYPES)}")
        if any(v < 0 for v in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise SimConfigError("mix weights must be non-negative and not all zero")
        try:
            self.start_dt()
        except ValueError as exc:
            raise SimConfigError(f"start must be a date like 2024-01-01: {exc}") from None

    def start_dt(self) -> datetime:
        return datetime.strptime(self.start, "%Y-%m-%d").replace(tzinfo=UTC)

    def start_epoch(self) -> int:
        return int(self.start_dt().timestamp())

    def fingerprint(self) -> str:
        """Short stable hash of the whole configuration (prefixes event ids, so runs never collide)."""
        raw = repr(sorted(asdict(self).items())).encode()
        return hashlib.sha1(raw).hexdigest()[:10]
