"""A small, hand-built marketplace history ending at a given time: healthy merchants with weekly
payouts and a tail of paid, shipped, unsettled orders (receivables an advance can finance)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from schemas.codec import new_event

SOURCE = "https://marketplace.example/events"


@dataclass
class MerchantHistory:
    merchant_id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    open_orders: list[tuple[str, int]] = field(default_factory=list)  # (order id, amount) not yet settled


def _ev(etype: str, mid: str, when: datetime, data: dict[str, Any], eid: str) -> dict[str, Any]:
    return new_event(etype, mid, data, when, SOURCE, id=eid)


def healthy_merchant(mid: str, end: datetime, days: int = 45, orders_per_day: int = 4,
                     ticket: int = 12_000, seed: int = 1, currency: str = "BRL") -> MerchantHistory:
    """Orders every day from distinct buyers; delivered after 3 days; paid out weekly 7 days after delivery."""
    rng = random.Random(seed)
    h = MerchantHistory(mid)
    start = end - timedelta(days=days)
    h.events.append(_ev("merchant.onboarded", mid, start - timedelta(hours=1),
                        {"category": "electronics", "country": "BR", "currency": currency}, f"{mid}-onb"))
    delivered: list[tuple[datetime, str, int]] = []
    for d in range(days):
        for k in range(orders_per_day):
            placed = start + timedelta(days=d, hours=9 + 2 * k, minutes=rng.randint(0, 59))
            if placed > end - timedelta(hours=30):
                continue
            oid = f"{mid}-o{d:03d}{k}"
            amt = ticket + rng.randint(-2_000, 2_000)
            money = {"amount": amt, "currency": currency}
            h.events += [
                _ev("order.placed", mid, placed, {"order_id": oid, "buyer_id": f"buyer-{mid}-{d}-{k}",
                                                   "amount": money}, f"{oid}-placed"),
                _ev("order.paid", mid, placed + timedelta(minutes=5), {"order_id": oid, "amount": money},
                    f"{oid}-paid"),
                _ev("order.shipped", mid, placed + timedelta(hours=20), {"order_id": oid}, f"{oid}-shipped"),
            ]
            dv = placed + timedelta(days=3)
            if dv < end:
                h.events.append(_ev("order.delivered", mid, dv, {"order_id": oid}, f"{oid}-delivered"))
            delivered.append((dv, oid, amt))
    # Weekly payouts (every 7 days from the start) of orders delivered >= 7 days earlier.
    settled: set[str] = set()
    pay = start + timedelta(days=7, hours=12)
    while pay < end:
        batch = [(oid, amt) for dv, oid, amt in delivered if dv + timedelta(days=7) <= pay and oid not in settled]
        if batch:
            settled.update(o for o, _ in batch)
            h.events.append(settlement(mid, pay, batch, f"{mid}-s{pay:%Y%m%d}", currency=currency))
        pay += timedelta(days=7)
    h.open_orders = [(oid, amt) for _, oid, amt in delivered if oid not in settled]
    h.events.sort(key=lambda e: e["time"])
    return h


def settlement(mid: str, when: datetime, orders: list[tuple[str, int]], sid: str, withheld: int = 0,
               fee_bps: int = 1000, currency: str = "BRL") -> dict[str, Any]:
    gross = sum(a for _, a in orders)
    fees = gross * fee_bps // 10_000
    withheld = min(withheld, gross - fees)

    def m(x: int) -> dict[str, Any]:
        return {"amount": x, "currency": currency}

    return _ev("settlement.paid", mid, when, {
        "settlement_id": sid, "gross": m(gross), "fees": m(fees), "withheld": m(withheld),
        "net": m(gross - fees - withheld), "orders": [{"order_id": o, "amount": m(a)} for o, a in orders],
    }, sid)
