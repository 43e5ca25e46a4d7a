"""Disbursement settings, read from FLOATBRIDGE_DISBURSEMENT_* variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas.contract_check import MAX_FUTURE_SKEW_SECONDS

PREFIX = "FLOATBRIDGE_DISBURSEMENT_"


@dataclass(frozen=True)
class DisbursementSettings:
    database_url: str = field(default="sqlite:///floatbridge-disbursement.db", metadata={"doc": "SQLAlchemy URL"})
    kafka_bootstrap: str = field(default="127.0.0.1:19092", metadata={"doc": "Kafka bootstrap servers"})
    consumer_group: str = field(default="floatbridge-disbursement", metadata={"doc": "Kafka consumer group"})
    topic_prefix: str = field(default="", metadata={"doc": "prefix added to every topic name (tests)"})
    http_host: str = "0.0.0.0"
    http_port: int = 8083
    admin_api_key: str = field(default="", metadata={"doc": "bearer key for /admin; admin API disabled when empty"})
    kill_switch: bool = field(default=False, metadata={"doc": "refuse every acceptance"})
    payout_rail: str = field(default="sandbox", metadata={"doc": "sandbox | http"})
    payout_api_url: str = field(default="", metadata={"doc": "marketplace payout API base URL (http rail)"})
    payout_api_key: str = field(default="", metadata={"doc": "bearer key for the payout API (http rail)"})
    allocation_order: str = field(default="fee_first", metadata={"doc": "fee_first | principal_first"})
    withhold_rate_bps: int = field(default=2000, metadata={"doc": "withhold rate while a balance is owed"})
    shortfall_withhold_rate_bps: int = field(default=5000, metadata={"doc": "rate when receivables no longer cover"})
    charge_off_dpd: int = 60
    max_term_days: int = field(default=60, metadata={
        "doc": "an offer due more than this many days after it was made is refused"})
    webhook_max_attempts: int = 8
    webhook_backoff_base_seconds: float = 5.0
    webhook_backoff_cap_seconds: float = 3600.0
    webhook_disable_after_failures: int = 20
    webhook_timeout_seconds: float = 5.0
    webhook_allow_private_targets: bool = field(default=False, metadata={
        "doc": "allow webhook URLs on loopback or private networks (a local stack); link-local and metadata "
               "addresses are refused whatever this says"})
    webhook_secret_overlap_seconds: float = field(default=86_400.0, metadata={
        "doc": "after a rotation or re-registration the previous webhook secret keeps signing (both sign) this "
               "long, by the service clock (wall clock; event time in the embedded engine); 0 drops it at once"})
    recovery_after_seconds: float = 30.0
    closed_orders_retention_days: int = field(default=30, metadata={
        "doc": "orders settled, cancelled, refunded or charged back are remembered this many days (event time) so "
               "an offer arriving after its order closed is refused; older ones are pruned by the aging pass"})
    payout_max_age_seconds: float = field(default=21_600.0, metadata={
        "doc": "a loan whose payout still fails (transiently) this long after its acceptance (service clock) is "
               "parked for ops: no more automatic retries, floatbridge_disbursement_payouts_parked counts it "
               "(docs/runbook.md, Payout parked); 0 = no cap"})
    payout_max_attempts: int = field(default=10_000, metadata={
        "doc": "backstop: parked after this many failed payout attempts (recovery retries every loop pass, so "
               "about 3 h at the default 1 s interval); 0 = no cap"})
    max_future_skew_seconds: int = field(default=MAX_FUTURE_SKEW_SECONDS, metadata={
        "doc": "consumer: a marketplace record dated more than this ahead of the wall clock is dead-lettered "
               "(as ingest refuses it) and never moves the event clock that ages loans; -1 disables"})
    source: str = "urn:floatbridge:disbursement"

    def validate(self) -> None:
        if self.payout_rail not in ("sandbox", "http"):
            raise ValueError(f"PAYOUT_RAIL must be sandbox or http, got {self.payout_rail!r}")
        if self.payout_rail == "http" and not self.payout_api_url:
            raise ValueError("PAYOUT_API_URL is required when PAYOUT_RAIL=http")
        if self.allocation_order not in ("fee_first", "principal_first"):
            raise ValueError(f"ALLOCATION_ORDER must be fee_first or principal_first, got {self.allocation_order!r}")
        for name in ("withhold_rate_bps", "shortfall_withhold_rate_bps"):
            if not 0 <= getattr(self, name) <= 10_000:
                raise ValueError(f"{name.upper()} must be between 0 and 10000")
        if not 0 <= self.webhook_secret_overlap_seconds <= 90 * 86_400:
            raise ValueError("WEBHOOK_SECRET_OVERLAP_SECONDS must be between 0 and 7776000 (90 days)")
        if not 1 <= self.max_term_days <= 366:
            raise ValueError("MAX_TERM_DAYS must be between 1 and 366")
        if self.max_future_skew_seconds < -1:
            raise ValueError("MAX_FUTURE_SKEW_SECONDS must be >= 0, or -1 to disable the check")
        if self.payout_max_attempts < 0 or self.payout_max_age_seconds < 0:
            raise ValueError("PAYOUT_MAX_ATTEMPTS and PAYOUT_MAX_AGE_SECONDS must be >= 0 (0: no cap)")
        if self.closed_orders_retention_days < 1:
            raise ValueError("CLOSED_ORDERS_RETENTION_DAYS must be at least 1")
        if self.webhook_max_attempts < 1:
            raise ValueError("WEBHOOK_MAX_ATTEMPTS must be at least 1")


def load_settings(**overrides: Any) -> DisbursementSettings:
    from services.common.settings import load

    return load(DisbursementSettings, PREFIX, **overrides)
