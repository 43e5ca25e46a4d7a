"""The day-stepped marketplace engine.

Each day, every live merchant places orders; each order's whole lifecycle
(paid, shipped, delivered/confirmed, refunds, chargebacks, or cancellation) is
drawn at once and filed into per-day buckets. Settlements are weekly payout
batches of the orders confirmed before the payout. A day's bucket is sorted by
(time, sequence) and emitted, so the output is in event-time order while only
the in-flight window is held in memory.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from floatbridge.simulator.archetypes import MerchantPlan, make_plan, truth_record
from floatbridge.simulator.config import SimConfig
from schemas.codec import new_event

DAY = 86_400
HOUR = 3_600
PAYOUT_HOUR = 12
# (merchant_id, gross, fees, time) -> centavos withheld for loans; the embedded engine plugs collections in here.
Withholder = Callable[[str, int, int, str], int]

# A scheduled event: (time, sequence, type, merchant index, data).
Pending = tuple[int, int, str, int, dict[str, Any]]


class _Clock:
    """RFC 3339 strings for integer epoch seconds, with the date part cached per day."""

    def __init__(self) -> None:
        self._days: dict[int, str] = {}

    def fmt(self, ts: int) -> str:
        day, sec = divmod(ts, DAY)
        prefix = self._days.get(day)
        if prefix is None:
            prefix = datetime.fromtimestamp(day * DAY, UTC).strftime("%Y-%m-%dT")
            self._days[day] = prefix
        h, rem = divmod(sec, HOUR)
        m, s = divmod(rem, 60)
        return f"{prefix}{h:02d}:{m:02d}:{s:02d}Z"


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, int(rng.gauss(lam, math.sqrt(lam)) + 0.5))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


class Simulation:
    """`events()` yields canonical CloudEvents in time order; `truth()` is the hidden ground truth."""

    def __init__(self, config: SimConfig, withhold: Withholder | None = None) -> None:
        config.validate()
        self.cfg = config
        self.withhold = withhold
        self.plans = [make_plan(config, i) for i in range(config.merchants)]
        self.t0 = config.start_epoch()
        self.end = self.t0 + config.days * DAY
        self._prefix = f"sim-{config.fingerprint()}"
        self._seq = 0
        self._buckets: dict[int, list[Pending]] = {}
        self._to_settle: list[list[tuple[int, str, int]]] = [[] for _ in self.plans]
        self._order_no = [0] * len(self.plans)
        self._settle_no = [0] * len(self.plans)
        self.stats = {"orders": 0, "fake_orders": 0, "events": 0}

    # -- ground truth -------------------------------------------------------------------
    def truth(self) -> dict[str, Any]:
        return {
            "config": {k: getattr(self.cfg, k) for k in self.cfg.__dataclass_fields__},
            "start": self.cfg.start_dt().isoformat().replace("+00:00", "Z"),
            "definition": {
                "would_default": "the business collapses (fails or disappears) within the simulated horizon; "
                "a loan outstanding around collapse_day is not covered by later settlements",
                "health_weekly": "latent health every 7 days from day 0 (0 = dead, 1 = thriving)",
            },
            "merchants": {p.merchant_id: truth_record(p) for p in self.plans},
        }

    # -- scheduling ---------------------------------------------------------------------
    def _put(self, ts: int, etype: str, m: int, data: dict[str, Any]) -> None:
        if ts >= self.end:
            return  # beyond the horizon: never observed
        self._seq += 1
        day = (ts - self.t0) // DAY
        bucket = self._buckets.get(day)
        if bucket is None:
            bucket = self._buckets[day] = []
        bucket.append((ts, self._seq, etype, m, data))

    def _money(self, amount: int) -> dict[str, Any]:
        return {"amount": amount, "currency": self.cfg.currency}

    def _payout_after(self, plan: MerchantPlan, ts: int) -> int:
        """Time of the first weekly payout at or after `ts` for this merchant."""
        day = (ts - self.t0) // DAY
        while True:
            pay = self.t0 + day * DAY + PAYOUT_HOUR * HOUR
            if (day + plan.payout_offset) % 7 == 0 and pay >= ts:
                return pay
            day += 1

    def _buyer(self, rng: random.Random, plan: MerchantPlan, fake: bool) -> str:
        if fake:
            k = rng.randrange(plan.fake_buyers)
            return f"b{(plan.index * 7_919 + k * 104_729 + 31) % 100_000_000:08d}"
        if rng.random() < plan.repeat_share:
            k = rng.randrange(plan.loyal_buyers)
            return f"b{(plan.index * 15_485_863 + k * 32_452_843 + 7) % 100_000_000:08d}"
        return f"b{rng.randrange(100_000_000):08d}"

    def _order(self, rng: random.Random, plan: MerchantPlan, day: int, fake: bool) -> None:
        m = plan.index
        self._order_no[m] += 1
        oid = f"o{m:06d}-{self._order_no[m]}"
        h = plan.health[day]
        q = (1.0 - h) ** 2
        ticket = plan.ticket_centavos * (1.5 if fake and plan.archetype == "bust_out" else 1.0)
        amount = max(500, int(ticket * math.exp(rng.gauss(0, 0.5))) // 10 * 10)
        placed = self.t0 + day * DAY + int(rng.triangular(6 * HOUR, 23.9 * HOUR, 20 * HOUR))
        collapse = None if plan.collapse_day is None else self.t0 + plan.collapse_day * DAY
        put = self._put
        put(placed, "order.placed", m, {"order_id": oid, "buyer_id": self._buyer(rng, plan, fake),
                                         "amount": self._money(amount)})
        self.stats["orders"] += 1
        if rng.random() < 0.04:  # never paid: the marketplace cancels it
            put(placed + int(rng.uniform(1, 3) * DAY), "order.cancelled", m, {"order_id": oid, "reason": "unpaid"})
            return
        paid = placed + rng.randrange(30, 1_800)
        put(paid, "order.paid", m, {"order_id": oid, "amount": self._money(amount)})
        brush = fake and plan.archetype == "brushing"
        if brush:
            self.stats["fake_orders"] += 1
            fate = rng.random()
            if fate < 0.35:
                put(paid + int(rng.uniform(1, 4) * DAY), "order.cancelled", m, {"order_id": oid, "reason": "buyer_request"})
                return
        elif fake:
            self.stats["fake_orders"] += 1
        cancel_p = 0.0 if fake else 0.02 + 0.3 * q
        if rng.random() < cancel_p:
            put(paid + int(rng.uniform(0.2, 2) * DAY), "order.cancelled", m,
                {"order_id": oid, "reason": "out_of_stock" if h > 0.5 else "seller_cancelled"})
            return
        shipped = paid + int((rng.uniform(0.3, 2.5) + 4 * (1 - h) * rng.random()) * DAY)
        transit = int(rng.uniform(1.5, 8) * DAY)
        if collapse is not None and shipped >= collapse:
            # The seller stopped operating before shipping: the marketplace cancels after a while.
            put(max(paid, collapse) + int(rng.uniform(0.5, 5) * DAY), "order.cancelled", m,
                {"order_id": oid, "reason": "seller_inactive"})
            return
        put(shipped, "order.shipped", m, {"order_id": oid, "expected_delivery_at": self.clock.fmt(shipped + transit)})
        arrived = shipped + transit
        if brush:
            if fate < 0.65:
                put(arrived + int(rng.uniform(1, 6) * DAY), "order.refunded", m,
                    {"order_id": oid, "refund_id": f"r{oid}", "amount": self._money(amount)})
            return  # otherwise never delivered, never settled
        # The buyer confirms receipt, or the marketplace auto-confirms after 7 days.
        confirmed = arrived + int(rng.uniform(0.1, 3) * DAY) if rng.random() < 0.55 else arrived + 7 * DAY
        if collapse is not None and confirmed >= collapse and rng.random() < 0.7:
            # Goods never arrived / seller unreachable: the buyer is refunded in full.
            put(max(arrived, collapse) + int(rng.uniform(1, 10) * DAY), "order.refunded", m,
                {"order_id": oid, "refund_id": f"r{oid}", "amount": self._money(amount)})
            return
        if rng.random() < 0.02 + 0.2 * q:
            put(arrived + int(rng.uniform(1, 5) * DAY), "order.refunded", m,
                {"order_id": oid, "refund_id": f"r{oid}", "amount": self._money(amount)})
            return
        settle_amount = amount
        if rng.random() < 0.03 + 0.1 * q:
            part = max(10, int(amount * rng.uniform(0.1, 0.5)) // 10 * 10)
            settle_amount -= part
            refund_at = arrived + int(rng.uniform(0.1, 2) * DAY)
            confirmed = max(confirmed, refund_at + HOUR)
            put(refund_at, "order.refunded", m, {"order_id": oid, "refund_id": f"r{oid}", "amount": self._money(part)})
        put(confirmed, "order.delivered", m, {"order_id": oid})
        self._to_settle[m].append((confirmed, oid, settle_amount))
        if rng.random() < 0.002 + 0.03 * q:
            settle_at = self._payout_after(plan, confirmed)
            put(settle_at + int(rng.uniform(10, 60) * DAY), "order.chargeback", m,
                {"order_id": oid, "chargeback_id": f"c{oid}", "amount": self._money(settle_amount)})

    def _settle(self, plan: MerchantPlan, day: int) -> None:
        m = plan.index
        pay = self.t0 + day * DAY + PAYOUT_HOUR * HOUR
        due, rest = [], []
        for item in self._to_settle[m]:
            (due if item[0] <= pay else rest).append(item)
        self._to_settle[m] = rest
        if not due:
            return
        due.sort()
        gross = sum(a for _, _, a in due)
        fees = gross * plan.fee_bps // 10_000
        withheld = 0
        if self.withhold is not None:
            withheld = max(0, min(gross - fees, int(self.withhold(plan.merchant_id, gross, fees, self.clock.fmt(pay)))))
        self._settle_no[m] += 1
        self._put(pay, "settlement.paid", m, {
            "settlement_id": f"s{m:06d}-{self._settle_no[m]}",
            "gross": self._money(gross), "fees": self._money(fees),
            "withheld": self._money(withheld), "net": self._money(gross - fees - withheld),
            "orders": [{"order_id": oid, "amount": self._money(a)} for _, oid, a in due],
        })

    def _lifecycle_notices(self, plan: MerchantPlan, rng: random.Random) -> None:
        m = plan.index
        onboard = self.t0 + plan.onboard_day * DAY + rng.randrange(0, 6 * HOUR)
        self._put(onboard, "merchant.onboarded", m, {"category": plan.category, "country": "BR",
                                                     "currency": self.cfg.currency,
                                                     "legal_name": f"Loja {plan.index:06d} Ltda"})
        if plan.collapse_day is not None:
            c = self.t0 + plan.collapse_day * DAY
            if plan.archetype == "bust_out":
                self._put(c + int(rng.uniform(7, 21) * DAY), "merchant.updated", m, {"status": "suspended"})
            elif rng.random() < 0.5:
                self._put(c + int(rng.uniform(10, 40) * DAY), "merchant.updated", m, {"status": "closed"})

    # -- the run ------------------------------------------------------------------------
    def events(self) -> Iterator[dict[str, Any]]:
        self.clock = _Clock()
        cfg = self.cfg
        rngs = [random.Random(cfg.seed * 2_000_029 + p.index * 104_723 + 5) for p in self.plans]
        for plan in self.plans:
            self._lifecycle_notices(plan, rngs[plan.index])
        src, prefix, fmt = cfg.source, self._prefix, self.clock.fmt
        n = 0
        for day in range(cfg.days):
            for plan in self.plans:
                if day < plan.onboard_day:
                    continue
                rng = rngs[plan.index]
                if plan.collapse_day is None or day < plan.collapse_day:
                    for _ in range(_poisson(rng, plan.rate[day])):
                        self._order(rng, plan, day, False)
                    for _ in range(_poisson(rng, plan.fake_rate[day])):
                        self._order(rng, plan, day, True)
                if (day + plan.payout_offset) % 7 == 0:
                    self._settle(plan, day)
            bucket = self._buckets.pop(day, [])
            bucket.sort(key=lambda p: (p[0], p[1]))
            subjects = [p.merchant_id for p in self.plans]
            for ts, _seq, etype, m, data in bucket:
                n += 1
                yield new_event(etype, subjects[m], data, fmt(ts), src, id=f"{prefix}-{n}")
        self.stats["events"] = n


def simulate(config: SimConfig, withhold: Withholder | None = None) -> Iterator[dict[str, Any]]:
    """Canonical CloudEvents for `config`, in event-time order (same config -> same events)."""
    return Simulation(config, withhold).events()


def truth(config: SimConfig) -> dict[str, Any]:
    """The hidden ground truth for `config` (archetypes, latent health, who would default)."""
    return Simulation(config).truth()
