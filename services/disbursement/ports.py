"""Ports the application core talks to; adapters implement them (Kafka/HTTP) or tests fake them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


class Publisher(Protocol):
    def publish(self, topic: str, key: str, event: dict[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class PayoutRequest:
    idempotency_key: str  # the loan id (or refund id): a retried call must not pay twice
    merchant_id: str
    amount: int
    currency: str
    reference: str


class PayoutFailed(RuntimeError):
    """The rail refused or could not be reached; the caller retries with the same idempotency key."""


class PayoutRejected(PayoutFailed):
    """The rail refused the payout for good (account closed, merchant blocked): retrying cannot succeed,
    so the loan is cancelled instead of retried."""


class PayoutRail(Protocol):
    def pay(self, request: PayoutRequest) -> str:
        """Pay out once per idempotency key and return the payout id (the same id on a retry)."""
        ...


# (url, headers, body) -> HTTP status code; raising means the request did not complete.
WebhookTransport = Callable[[str, Mapping[str, str], bytes], int]
Clock = Callable[[], datetime]
