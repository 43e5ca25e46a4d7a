"""The topic catalog, as data. `floatbridge topics create` applies it idempotently."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

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


@lru_cache(maxsize=1024)  # consumers ask for every record; the answer depends on the name alone
def types_on(topic_name: str) -> frozenset[str] | None:
    """The event types a consumer may accept from `topic_name` (a catalog name, optionally prefixed);
    None for a topic outside the catalog. A consumer applies events by type, so an event of the wrong
    type on a topic (a forged loan.repaid on the marketplace stream) must be refused, not applied."""
    from schemas.codec import MARKETPLACE_TYPES

    allowed = {
        MARKETPLACE_RAW: frozenset(MARKETPLACE_TYPES),
        MARKETPLACE_EVENTS: frozenset(MARKETPLACE_TYPES),
        INGEST_REJECTED: frozenset({"ingest.rejected"}),
        CREDIT_LIMITS: frozenset({"credit_limit.updated"}),
        LOAN_OFFERS: frozenset({"loan_offer.created", "loan_offer.withdrawn", "loan_offer.expired"}),
        LOANS: frozenset({"loan_offer.accepted", "loan.disbursed", "loan.repayment_applied", "loan.repaid",
                          "loan.delinquent", "loan.charged_off", "loan.cancelled"}),
        COLLECTIONS: frozenset({"collection.instruction"}),
    }
    for name, types in allowed.items():
        if topic_name.endswith(name):  # test runs prefix every name
            return types
    return None
