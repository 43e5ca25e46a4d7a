"""Varied, realistic marketplace event streams for contract and metamorphic checks of the whole engine.

`merchant_stream(rng, ...)` writes one merchant's history (onboarding, orders from few or many buyers, payments,
shipping, delivery, partial refunds, cancellations, chargebacks, weekly settlements naming the orders they pay out,
status changes, silent gaps; with `messy_rate`, the feed's messier habits: orders paid or delivered with no
placement or shipping, partial chargebacks, refunds re-sent with another amount, payouts of an order in parts or twice
or of orders nobody sent, category changes, re-onboarding, events at midnight and on the 60/90-day marks; with
`burst`, orders at one timestamp) as canonical CloudEvents; `marketplace_stream` merges several merchants and then
disturbs the arrival order the way real feeds do (out-of-order neighbours, late events, exact duplicates).
Everything follows from the random generator handed in, so a seed gives the same stream.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.codec import new_event

SOURCE = "https://marketplace.example/events"
# currency -> (country, typical ticket in minor units)
CURRENCIES = {"BRL": ("BR", 12_000), "JPY": ("JP", 3_500), "KWD": ("KW", 40_000), "USD": ("US", 4_000)}
START = datetime(2025, 1, 6, tzinfo=UTC)


@dataclass(frozen=True)
class MerchantShape:
    currency: str = "BRL"
    days: int = 50
    orders_per_day: float = 4.0
    buyers: int = 200  # size of the buyer pool (few buyers: concentration, repeat buyers)
    cancel_rate: float = 0.03
    refund_rate: float = 0.03
    chargeback_rate: float = 0.0
    undelivered_rate: float = 0.03
    payout_every_days: int = 7
    withhold_own: float = 0.0  # share of payouts where the marketplace writes its own withheld amount
    status_change: str = ""  # "", "suspended", "closed", "suspended_then_active"
    silent_from_day: int | None = None  # no events at all from this day on (a merchant that stops trading)
    silent_days: int = 0  # ... for this many days (0: for good)
    odd_rate: float = 0.0  # share of orders with something odd: amended, over-refunded, no placement, paid another
    #                        amount, refunded twice, settled before shipping, huge
    messy_rate: float = 0.0  # share of orders with a messier feed behaviour (MESSY); above 0 the merchant is also
    #                          re-categorised, re-onboarded and sends events at midnight and the 60/90-day marks
    burst: int = 0  # orders placed at one and the same timestamp once a week (0: none)


# What a messy order does: paid/shipped with no placement, delivered with no shipping, a partial chargeback, a refund
# re-sent under the same refund id with another amount, paid out in two parts, paid out twice, placed exactly at
# midnight UTC.
MESSY = ("unplaced", "noship", "partial_cb", "refund_resent", "split_payout", "double_payout", "midnight")


def _ev(etype: str, mid: str, when: datetime, data: dict[str, Any], eid: str) -> dict[str, Any]:
    return new_event(etype, mid, data, when, SOURCE, id=eid)


def merchant_stream(rng: random.Random, mid: str, shape: MerchantShape, start: datetime = START) -> list[dict[str, Any]]:
    cur = shape.currency
    country, ticket = CURRENCIES[cur]

    def money(x: int) -> dict[str, Any]:
        return {"amount": x, "currency": cur}

    def silent(at: datetime) -> bool:
        if shape.silent_from_day is None:
            return False
        off = start + timedelta(days=shape.silent_from_day)
        return at >= off and (shape.silent_days == 0 or at < off + timedelta(days=shape.silent_days))

    out = [_ev("merchant.onboarded", mid, start, {"category": rng.choice(["electronics", "fashion", "home"]),
                                                  "country": country, "currency": cur}, f"{mid}-onb")]
    end = start + timedelta(days=shape.days)
    settleable: list[tuple[datetime, str, int]] = []  # (delivered at, order id, amount still owed to the merchant)
    closed: set[str] = set()
    split: dict[str, int] = {}  # order id -> the part paid out in a second settlement
    twice: set[str] = set()  # orders paid out in two settlements, in full each time
    burst_at = start.replace(hour=14, minute=0, second=0, microsecond=0) if shape.burst else None
    n = 0
    for d in range(shape.days):
        bursted = 0
        for _ in range(_poisson(rng, shape.orders_per_day)):
            n += 1
            placed = start + timedelta(days=d, hours=rng.randint(1, 22), minutes=rng.randint(0, 59))
            if silent(placed):
                continue
            oid = f"{mid}-o{n:05d}"
            amount = max(1, int(ticket * rng.uniform(0.3, 2.0)))
            buyer = f"b-{mid}-{rng.randrange(shape.buyers)}"
            odd = rng.choice(["amend", "overrefund", "noplace", "paidmore", "tworefunds", "early", "huge"]) \
                if rng.random() < shape.odd_rate else ""
            if odd == "huge":
                amount *= 40
            messy = rng.choice(MESSY) if shape.messy_rate and rng.random() < shape.messy_rate else ""
            if messy == "midnight":
                placed = placed.replace(hour=0, minute=0)
            elif burst_at is not None and d % 7 == 3 and bursted < shape.burst:
                placed, bursted = burst_at + timedelta(days=d), bursted + 1
            if messy == "unplaced":
                odd = "noplace"
            if odd != "noplace":
                out.append(_ev("order.placed", mid, placed, {"order_id": oid, "buyer_id": buyer,
                                                              "amount": money(amount)}, f"{oid}-pl"))
            if odd == "amend":
                amount = max(1, amount + rng.randint(-amount // 2, amount))
                out.append(_ev("order.placed", mid, placed + timedelta(minutes=1), {
                    "order_id": oid, "buyer_id": buyer, "amount": money(amount)}, f"{oid}-pl2"))
            if rng.random() < shape.cancel_rate:
                out.append(_ev("order.cancelled", mid, placed + timedelta(hours=rng.randint(1, 30)),
                               {"order_id": oid, "reason": "buyer"}, f"{oid}-cx"))
                continue
            paid = placed + timedelta(minutes=rng.randint(1, 90))
            out.append(_ev("order.paid", mid, paid, {"order_id": oid, "amount": money(
                amount * 2 if odd == "paidmore" else amount)}, f"{oid}-pd"))
            if odd == "early":
                settleable.append((paid - timedelta(days=3), oid, amount))
                continue
            shipped = paid + timedelta(hours=rng.randint(4, 60))
            ship: dict[str, Any] = {"order_id": oid}
            if rng.random() < 0.5:
                ship["expected_delivery_at"] = (shipped + timedelta(days=rng.randint(2, 6))).strftime(
                    "%Y-%m-%dT%H:%M:%SZ")
            if messy != "noship":
                out.append(_ev("order.shipped", mid, shipped, ship, f"{oid}-sh"))
            if rng.random() < shape.undelivered_rate:
                continue
            delivered = shipped + timedelta(days=rng.randint(1, 7), hours=rng.randint(0, 23))
            if delivered < end and not silent(delivered):
                out.append(_ev("order.delivered", mid, delivered, {"order_id": oid}, f"{oid}-dv"))
            owed = amount
            if rng.random() < shape.refund_rate or odd in ("overrefund", "tworefunds") or messy == "refund_resent":
                part = amount if rng.random() < 0.4 else max(1, amount * rng.randint(10, 70) // 100)
                part = amount * 2 if odd == "overrefund" else part
                out.append(_ev("order.refunded", mid, delivered + timedelta(hours=rng.randint(1, 96)),
                               {"order_id": oid, "refund_id": f"{oid}-rf", "amount": money(part)}, f"{oid}-rf"))
                if messy == "refund_resent":  # the same refund id re-sent with another amount (a correction)
                    part2 = max(1, min(amount, part + rng.randint(-part // 2, part)))
                    out.append(_ev("order.refunded", mid, delivered + timedelta(hours=rng.randint(97, 200)),
                                   {"order_id": oid, "refund_id": f"{oid}-rf", "amount": money(part2)},
                                   f"{oid}-rf-resent"))
                    part = max(part, part2)
                if odd == "tworefunds":
                    out.append(_ev("order.refunded", mid, delivered + timedelta(hours=rng.randint(97, 200)),
                                   {"order_id": oid, "refund_id": f"{oid}-rf2", "amount": money(part)}, f"{oid}-rf2"))
                    part *= 2
                owed -= part
            if messy == "partial_cb":
                out.append(_ev("order.chargeback", mid, delivered + timedelta(days=rng.randint(1, 20)), {
                    "order_id": oid, "chargeback_id": f"{oid}-cbp", "amount": money(max(1, amount // 3))},
                    f"{oid}-cbp"))
                closed.add(oid)
            elif rng.random() < shape.chargeback_rate:
                out.append(_ev("order.chargeback", mid, delivered + timedelta(days=rng.randint(1, 20)),
                               {"order_id": oid, "chargeback_id": f"{oid}-cb", "amount": money(amount)}, f"{oid}-cb"))
                closed.add(oid)
            if owed > 0:
                if messy == "split_payout" and owed > 1:
                    split[oid] = owed // 2
                    owed -= split[oid]
                elif messy == "double_payout":
                    twice.add(oid)
                settleable.append((delivered, oid, owed))
    pay = start + timedelta(days=shape.payout_every_days, hours=12)
    payout_end = end + timedelta(days=rng.choice([0, 14]))
    again: list[tuple[str, int]] = []  # parts and repeats due in the next settlement
    while pay < payout_end:
        batch = [(oid, amt) for dv, oid, amt in settleable if dv + timedelta(days=3) <= pay and oid not in closed]
        if batch and not silent(pay):
            closed.update(o for o, _ in batch)
            batch, again = batch + again, [(o, split.get(o, a)) for o, a in batch
                                           if o in split or o in twice]
            if shape.messy_rate and rng.random() < shape.messy_rate:  # a payout naming an order nobody sent
                batch.append((f"{mid}-ghost-{pay:%Y%m%d}", ticket))
            withheld = 0
            gross = sum(a for _, a in batch)
            fees = gross * rng.choice([500, 1000, 1500]) // 10_000
            if rng.random() < shape.withhold_own:
                withheld = rng.randint(0, gross - fees)
            out.append(_ev("settlement.paid", mid, pay, {
                "settlement_id": f"{mid}-s{pay:%Y%m%d}", "gross": money(gross), "fees": money(fees),
                "withheld": money(withheld), "net": money(gross - fees - withheld),
                "orders": [{"order_id": o, "amount": money(a)} for o, a in batch]}, f"{mid}-s{pay:%Y%m%d}"))
        pay += timedelta(days=shape.payout_every_days)
    if shape.status_change:
        at = start + timedelta(days=rng.randint(max(1, shape.days // 3), max(2, shape.days - 1)), hours=5)
        first = "suspended" if shape.status_change.startswith("suspended") else shape.status_change
        out.append(_ev("merchant.updated", mid, at, {"status": first}, f"{mid}-st1"))
        if shape.status_change == "suspended_then_active":
            out.append(_ev("merchant.updated", mid, at + timedelta(days=rng.randint(1, 10)), {"status": "active"},
                           f"{mid}-st2"))
    if shape.messy_rate:
        out += _merchant_churn(rng, mid, shape, start, money)
    out.sort(key=lambda e: (e["time"], e["id"]))
    return out


def _merchant_churn(rng: random.Random, mid: str, shape: MerchantShape, start: datetime,
                    money: Any) -> list[dict[str, Any]]:
    """Merchant-level mess: a category change, a second merchant.onboarded (re-onboarding, maybe another category),
    and events at midnight UTC exactly 60 and 90 days after onboarding (the receivable and feature windows)."""
    cur = shape.currency
    country, ticket = CURRENCIES[cur]
    out = [_ev("merchant.updated", mid, start + timedelta(days=rng.randint(1, max(1, shape.days - 1))),
               {"category": rng.choice(["electronics", "fashion", "home", "toys"])}, f"{mid}-cat"),
           _ev("merchant.onboarded", mid, start + timedelta(days=rng.randint(1, max(1, shape.days - 1)), hours=3), {
               "category": rng.choice(["electronics", "fashion", "home"]), "country": country, "currency": cur},
               f"{mid}-onb2")]
    midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
    for mark in (60, 90):
        for at in (start + timedelta(days=mark), midnight + timedelta(days=mark)):
            oid = f"{mid}-d{mark}-{at:%H%M}"
            out += [_ev("order.placed", mid, at, {"order_id": oid, "buyer_id": f"b-{mid}-edge",
                                                  "amount": money(ticket)}, f"{oid}-pl"),
                    _ev("order.paid", mid, at, {"order_id": oid, "amount": money(ticket)}, f"{oid}-pd"),
                    _ev("order.shipped", mid, at, {"order_id": oid}, f"{oid}-sh")]
    return out


def _poisson(rng: random.Random, lam: float) -> int:
    # Knuth; lam is small
    import math

    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def disturb(rng: random.Random, events: list[dict[str, Any]], swaps: int = 0, late: int = 0,
            duplicates: int = 0, backfill: int = 0) -> list[dict[str, Any]]:
    """Arrival order as feeds deliver it: neighbours swapped, some events arriving late (moved further down the
    stream than their time says), exact duplicates (same id, same content) re-sent later, and a backfill: every
    order event of `backfill` orders that were paid out re-sent at the end of the stream."""
    out = list(events)
    if len(out) < 3:
        return out
    if backfill:
        paid_out = sorted({o["order_id"] for e in out if e["type"] == "settlement.paid" for o in e["data"]["orders"]})
        chosen = set(rng.sample(paid_out, min(backfill, len(paid_out))))
        moved = [e for e in out if e["type"].startswith("order.") and e["data"].get("order_id") in chosen]
        out = [e for e in out if not (e["type"].startswith("order.") and e["data"].get("order_id") in chosen)]
        out += moved
    for _ in range(swaps):
        i = rng.randrange(1, len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
    for _ in range(late):
        i = rng.randrange(1, len(out) - 1)
        ev = out.pop(i)
        out.insert(min(len(out), i + rng.randint(1, 200)), ev)
    for _ in range(duplicates):
        i = rng.randrange(len(out))
        out.insert(rng.randint(i + 1, len(out)), dict(out[i]))
    return out


def marketplace_stream(rng: random.Random, shapes: list[MerchantShape], tail_days: int = 0,
                       swaps: int = 0, late: int = 0, duplicates: int = 0, backfill: int = 0) -> list[dict[str, Any]]:
    """Merchants `m0..` with the given shapes, merged by time and then disturbed; with `tail_days`, one more
    merchant is onboarded that long after the last event so the engine's event clock runs on (aging)."""
    events: list[dict[str, Any]] = []
    for i, shape in enumerate(shapes):
        events += merchant_stream(rng, f"m{i}", shape, START + timedelta(hours=rng.randint(0, 72)))
    events.sort(key=lambda e: (e["time"], e["id"]))
    if tail_days and events:
        last = datetime.fromisoformat(events[-1]["time"].replace("Z", "+00:00"))
        events.append(_ev("merchant.onboarded", "m-clock", last + timedelta(days=tail_days),
                          {"category": "home", "country": "BR", "currency": "BRL"}, "m-clock-onb"))
    return disturb(rng, events, swaps, late, duplicates, backfill)
