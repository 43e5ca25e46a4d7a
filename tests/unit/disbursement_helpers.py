"""Builders shared by the disbursement tests (events as the underwriter and marketplace send them)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.codec import new_event

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CUR = "BRL"


def m(amount: int, currency: str = CUR) -> dict[str, Any]:
    return {"amount": amount, "currency": currency}


def ev(etype: str, merchant: str, data: dict[str, Any], at: datetime, eid: str | None = None) -> dict[str, Any]:
    return new_event(etype, merchant, data, at, "urn:test", id=eid)


def onboarded(merchant: str, at: datetime = T0) -> dict[str, Any]:
    return ev("merchant.onboarded", merchant, {"category": "toys", "country": "BR", "currency": CUR}, at)


def limit(merchant: str, available: int, at: datetime = T0, lim: int | None = None) -> dict[str, Any]:
    return ev("credit_limit.updated", merchant, {
        "limit": m(lim or available), "available": m(available), "outstanding": m(0),
        "eligible_receivables": m(available * 2), "pd": 0.02, "model_version": "t1", "reasons": [],
        "trigger_event_id": "trig-" + merchant}, at)


def offer(merchant: str, offer_id: str, amount: int, fee: int = 0, at: datetime = T0,
          order_ids: tuple[str, ...] = ("o1",), due_days: int = 10, expires_hours: int = 24,
          orders: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "offer_id": offer_id, "amount": m(amount), "fee": m(fee), "apr": "0.2190",
        "due_at": (at + timedelta(days=due_days)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "expires_at": (at + timedelta(hours=expires_hours)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "order_ids": list(order_ids), "pd": 0.02, "model_version": "t1", "reasons": []}
    if orders is not None:
        data["orders"] = orders
    return ev("loan_offer.created", merchant, data, at)


def settlement(merchant: str, sid: str, withheld: int, at: datetime,
               orders: tuple[tuple[str, int], ...] = (), gross: int = 100_000) -> dict[str, Any]:
    return ev("settlement.paid", merchant, {
        "settlement_id": sid, "gross": m(gross), "fees": m(0), "withheld": m(withheld), "net": m(gross - withheld),
        "orders": [{"order_id": o, "amount": m(a)} for o, a in orders]}, at)


class Bus:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def publish(self, topic: str, key: str, event: dict[str, Any]) -> None:
        self.sent.append((topic, key, event))

    def of_type(self, etype: str) -> list[dict[str, Any]]:
        return [e for _, _, e in self.sent if e["type"] == etype]


class Transport:
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.calls: list[tuple[str, dict[str, str], bytes]] = []

    def __call__(self, url: str, headers: Mapping[str, str], body: bytes) -> int:
        self.calls.append((url, dict(headers), body))
        return self.status


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now
