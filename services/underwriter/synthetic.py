"""Synthetic marketplace histories for tests, the bootstrap model and the benchmark.

Each order is placed, paid five minutes later, shipped the next day, delivered three days after shipping and
paid out in the merchant's daily settlement two days after delivery, unless cancelled (before shipping) or
refunded (after delivery). Events are valid CloudEvents, returned in event-time order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.codec import deterministic_id, new_event

SOURCE = "floatbridge/synthetic"


@dataclass(frozen=True)
class Profile:
    orders_per_day: float = 4.0
    ticket_minor: int = 8_000
    buyers: int = 5_000  # buyer pool size; few buyers = concentration / self-dealing
    refund_rate: float = 0.02
    cancel_rate: float = 0.03
    chargeback_rate: float = 0.0
    currency: str = "BRL"
    category: str = "electronics"


def _ev(etype: str, mid: str, data: dict[str, Any], t: datetime, key: str) -> dict[str, Any]:
    return new_event(etype, mid, data, t, SOURCE, id=deterministic_id("synthetic", mid, key, etype))


def history(
    merchant_id: str,
    start: datetime,
    days: int,
    profile: Profile,
    seed: int = 0,
    onboard: bool = True,
    order_prefix: str = "o",
) -> list[dict[str, Any]]:
    rng = random.Random(f"{merchant_id}:{seed}:{order_prefix}")
    cur = profile.currency
    events: list[dict[str, Any]] = []
    if onboard:
        events.append(_ev("merchant.onboarded", merchant_id,
                          {"category": profile.category, "country": "BR", "currency": cur}, start, "onboard"))
    settle_batches: dict[int, list[dict[str, Any]]] = {}
    end = start + timedelta(days=days)
    for day in range(days):
        n = _poisson(rng, profile.orders_per_day)
        for k in range(n):
            oid = f"{order_prefix}-{merchant_id}-{day}-{k}"
            t = start + timedelta(days=day, seconds=rng.randrange(60, 86_000))
            amount = max(100, int(rng.lognormvariate(0, 0.5) * profile.ticket_minor))
            money = {"amount": amount, "currency": cur}
            buyer = f"b{rng.randrange(profile.buyers)}"
            events.append(_ev("order.placed", merchant_id, {"order_id": oid, "buyer_id": buyer, "amount": money}, t, oid))
            events.append(_ev("order.paid", merchant_id, {"order_id": oid, "amount": money},
                              t + timedelta(minutes=5), oid))
            if rng.random() < profile.cancel_rate:
                events.append(_ev("order.cancelled", merchant_id, {"order_id": oid, "reason": "buyer"},
                                  t + timedelta(hours=1), oid))
                continue
            shipped = t + timedelta(days=1)
            events.append(_ev("order.shipped", merchant_id, {"order_id": oid}, shipped, oid))
            delivered = shipped + timedelta(days=3)
            events.append(_ev("order.delivered", merchant_id, {"order_id": oid}, delivered, oid))
            if rng.random() < profile.refund_rate:
                events.append(_ev("order.refunded", merchant_id,
                                  {"order_id": oid, "refund_id": "r" + oid, "amount": money},
                                  delivered + timedelta(hours=5), oid))
                continue
            settle_day = (delivered + timedelta(days=2)).date().toordinal()
            settle_batches.setdefault(settle_day, []).append({"order_id": oid, "amount": money})
            if rng.random() < profile.chargeback_rate:
                events.append(_ev("order.chargeback", merchant_id,
                                  {"order_id": oid, "chargeback_id": "c" + oid, "amount": money},
                                  delivered + timedelta(days=4), oid))
    for ordinal, orders in settle_batches.items():
        t = datetime.fromordinal(ordinal).replace(hour=23, tzinfo=UTC)
        if t > end:
            continue
        gross = sum(o["amount"]["amount"] for o in orders)
        fees = gross // 20
        sid = f"s-{merchant_id}-{order_prefix}-{ordinal}"
        events.append(_ev("settlement.paid", merchant_id, {
            "settlement_id": sid, "gross": {"amount": gross, "currency": cur},
            "fees": {"amount": fees, "currency": cur}, "withheld": {"amount": 0, "currency": cur},
            "net": {"amount": gross - fees, "currency": cur}, "orders": orders,
        }, t, sid))
    events = [e for e in events if e["time"] <= _iso(end)]
    events.sort(key=lambda e: (e["time"], e["id"]))
    return events


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _poisson(rng: random.Random, lam: float) -> int:
    # Knuth's method is fine for the small rates used here.
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, lam**0.5)))
    limit, k, p = pow(2.718281828459045, -lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1
