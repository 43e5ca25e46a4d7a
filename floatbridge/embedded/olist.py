"""Turn the real Olist marketplace data into canonical Floatbridge events.

Mapping (documented in docs/olist.md):
- seller -> merchant.onboarded at the earlier of its first order's purchase time and its
  closed-deal `won_date`; category = closed-deal business_segment or "general"; BR / BRL.
- (order, seller) is one receivable: amount = sum of that seller's items' price + freight.
- order_purchase_timestamp -> order.placed (buyer_id = customer_id, hashed downstream);
  order_approved_at -> order.paid; order_delivered_carrier_date -> order.shipped
  (expected_delivery_at = order_estimated_delivery_date); order_delivered_customer_date ->
  order.delivered.
- canceled / unavailable -> order.cancelled, one hour after the last known timestamp.
- Payout rule (Olist publishes none): a delivered order settles in the first weekly payout
  (Wednesday 12:00 UTC) at least `settle_after_days` (default 7) after delivery; one
  settlement.paid per seller per payout date; fees = `fee_bps` (default 1,600 = 16%
  commission) of gross, rounded down; withheld 0 (the embedded marketplace fills it from
  collection instructions); net = gross - fees - withheld.
- Local times have no zone: they are America/Sao_Paulo.
Data: Olist, "Brazilian E-Commerce Public Dataset", CC BY-NC-SA 4.0.
"""

from __future__ import annotations

import csv
import gzip
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from schemas.codec import new_event

SOURCE = "https://olist.com/marketplace"
SAO_PAULO = ZoneInfo("America/Sao_Paulo")
CREDIT = 'Olist, "Brazilian E-Commerce Public Dataset" (CC BY-NC-SA 4.0)'
DEFAULT_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "olist"


@dataclass(frozen=True)
class OlistOptions:
    settle_after_days: int = 7
    fee_bps: int = 1600
    limit_orders: int | None = None  # first N orders by purchase time (for test slices)


def _rows(folder: Path, name: str) -> Iterator[dict[str, str]]:
    with gzip.open(folder / name, "rt", encoding="utf-8", newline="") as fh:
        yield from csv.DictReader(fh)


def _ts(value: str) -> datetime | None:
    if not value:
        return None
    # "YYYY-MM-DD HH:MM:SS" sliced by hand: strptime was most of the conversion time.
    if len(value) == 19 and value[4] == "-" and value[7] == "-" and value[10] == " " and value[13] == ":" \
            and value[16] == ":":
        local = datetime(int(value[0:4]), int(value[5:7]), int(value[8:10]), int(value[11:13]),
                         int(value[14:16]), int(value[17:19]), tzinfo=SAO_PAULO)
    else:
        local = datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=SAO_PAULO)
    return local.astimezone(UTC)


def _cents(value: str) -> int:
    return int((Decimal(value) * 100).to_integral_exact())


def _next_payout(after: datetime) -> datetime:
    day = after.replace(hour=12, minute=0, second=0, microsecond=0)
    if day <= after:
        day += timedelta(days=1)
    while day.weekday() != 2:  # Wednesday
        day += timedelta(days=1)
    return day


def olist_events(folder: Path = DEFAULT_DIR, options: OlistOptions | None = None) -> list[dict[str, Any]]:
    """All events, sorted by event time (ties keep a stable lifecycle order)."""
    opts = options or OlistOptions()
    if not (folder / "olist_orders_dataset.csv.gz").exists():
        raise FileNotFoundError(f"Olist data not found in {folder} (expected olist_orders_dataset.csv.gz)")
    orders = list(_rows(folder, "olist_orders_dataset.csv.gz"))
    orders.sort(key=lambda r: r["order_purchase_timestamp"])
    if opts.limit_orders:
        orders = orders[: opts.limit_orders]
    wanted = {o["order_id"] for o in orders}
    amounts: dict[tuple[str, str], int] = defaultdict(int)
    for item in _rows(folder, "olist_order_items_dataset.csv.gz"):
        if item["order_id"] in wanted:
            amounts[(item["order_id"], item["seller_id"])] += _cents(item["price"]) + _cents(item["freight_value"])
    sellers_of: dict[str, list[str]] = defaultdict(list)
    for order_id, seller_id in amounts:
        sellers_of[order_id].append(seller_id)
    deals = {d["seller_id"]: d for d in _rows(folder, "olist_closed_deals_dataset.csv.gz")}

    out: list[tuple[datetime, int, dict[str, Any]]] = []
    first_seen: dict[str, datetime] = {}
    payouts: dict[tuple[str, datetime], list[tuple[str, int]]] = defaultdict(list)

    def emit(etype: str, seller: str, when: datetime, data: dict[str, Any], key: str, rank: int) -> None:
        eid = f"olist-{etype.replace('.', '-')}-{key}"
        out.append((when, rank, new_event(etype, seller, data, when, SOURCE, id=eid)))

    for order in orders:
        oid = order["order_id"]
        placed = _ts(order["order_purchase_timestamp"])
        if placed is None:
            continue
        for seller in sellers_of.get(oid, ()):
            amount = {"amount": amounts[(oid, seller)], "currency": "BRL"}
            key = f"{oid}-{seller[:12]}"
            first_seen[seller] = min(first_seen.get(seller, placed), placed)
            emit("order.placed", seller, placed, {"order_id": oid, "buyer_id": order["customer_id"], "amount": amount}, key, 1)
            last = placed
            paid = _ts(order["order_approved_at"])
            if paid:
                paid = max(paid, placed)
                emit("order.paid", seller, paid, {"order_id": oid, "amount": amount}, key, 2)
                last = paid
            if order["order_status"] in ("canceled", "unavailable"):
                emit("order.cancelled", seller, last + timedelta(hours=1),
                     {"order_id": oid, "reason": order["order_status"]}, key, 3)
                continue
            shipped = _ts(order["order_delivered_carrier_date"])
            if shipped:
                shipped = max(shipped, last)
                data: dict[str, Any] = {"order_id": oid}
                est = _ts(order["order_estimated_delivery_date"])
                if est:
                    data["expected_delivery_at"] = est.strftime("%Y-%m-%dT%H:%M:%SZ")
                emit("order.shipped", seller, shipped, data, key, 3)
                last = shipped
            delivered = _ts(order["order_delivered_customer_date"])
            if delivered and shipped:
                delivered = max(delivered, last)
                emit("order.delivered", seller, delivered, {"order_id": oid}, key, 4)
                payday = _next_payout(delivered + timedelta(days=opts.settle_after_days))
                payouts[(seller, payday)].append((oid, amounts[(oid, seller)]))

    for (seller, payday), items in payouts.items():
        gross = sum(a for _, a in items)
        fees = gross * opts.fee_bps // 10_000
        data = {
            "settlement_id": f"olist-{seller[:12]}-{payday:%Y%m%d}",
            "gross": {"amount": gross, "currency": "BRL"},
            "fees": {"amount": fees, "currency": "BRL"},
            "withheld": {"amount": 0, "currency": "BRL"},
            "net": {"amount": gross - fees, "currency": "BRL"},
            "orders": [{"order_id": o, "amount": {"amount": a, "currency": "BRL"}} for o, a in sorted(items)],
        }
        emit("settlement.paid", seller, payday, data, f"{seller}-{payday:%Y%m%d}", 5)

    for seller, first in first_seen.items():
        deal = deals.get(seller)
        won = _ts(deal["won_date"]) if deal and deal.get("won_date") else None
        when = min(first, won) if won else first
        category = (deal or {}).get("business_segment") or "general"
        emit("merchant.onboarded", seller, when - timedelta(seconds=1),
             {"category": category[:64], "country": "BR", "currency": "BRL"}, seller, 0)

    out.sort(key=lambda t: (t[0], t[1]))
    return [e for _, _, e in out]
