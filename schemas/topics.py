"""The topic catalog, as data. `floatbridge topics create` applies it idempotently."""

from __future__ import annotations

from dataclasses import dataclass

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    key: str
    partitions: int
    retention_ms: int  # -1 = keep forever
    compacted: bool = False
    description: str = ""

    def configs(self) -> dict[str, str]:
        cfg = {"retention.ms": str(self.retention_ms), "min.insync.replicas": "1"}
        if self.compacted:
            cfg["cleanup.policy"] = "compact"
        return cfg


MARKETPLACE_RAW = "marketplace.raw.v1"
MARKETPLACE_EVENTS = "marketplace.events.v1"
INGEST_REJECTED = "ingest.rejected.v1"
CREDIT_LIMITS = "credit.limits.v1"
LOAN_OFFERS = "loan.offers.v1"
LOANS = "loans.v1"
COLLECTIONS = "collections.v1"


def catalog(partitions: int = 12) -> tuple[Topic, ...]:
    """Production uses 12 partitions; tests pass fewer."""
    return (
        Topic(MARKETPLACE_RAW, "merchant id", partitions, 7 * DAY_MS, description="raw events produced by a marketplace, validated by ingest"),
        Topic(MARKETPLACE_EVENTS, "merchant id", partitions, -1, description="validated, normalised marketplace events"),
        Topic(INGEST_REJECTED, "merchant id or 'unknown'", partitions, 30 * DAY_MS, description="rejected events with raw payload and errors"),
        Topic(CREDIT_LIMITS, "merchant id", partitions, -1, compacted=True, description="latest credit limit per merchant"),
        Topic(LOAN_OFFERS, "merchant id", partitions, 90 * DAY_MS, description="offers created and withdrawn"),
        Topic(LOANS, "merchant id", partitions, -1, description="loan lifecycle events"),
        Topic(COLLECTIONS, "merchant id", partitions, -1, compacted=True, description="what to withhold from each merchant's payouts"),
    )
