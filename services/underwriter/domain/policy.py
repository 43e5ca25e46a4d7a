"""Credit policy: from features, PD and receivables to a limit, an advance rate and named reasons (stdlib only).

Every number is a field of the frozen `PolicySettings`, loaded from FLOATBRIDGE_UNDERWRITER_* variables.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from functools import lru_cache

from services.common.money import CURRENCY_EXPONENTS, MAX_AMOUNT
from services.underwriter.domain.features import INDEX, cancel_money_rates, money_rates
from services.underwriter.domain.reasons import Reason
from services.underwriter.domain.state import (
    DAY,
    F_DELIVERED,
    F_FINANCED,
    F_PAID,
    F_PLACED,
    F_SHIPPED,
    L_OWED,
    L_TS,
    MAX_LOANS,
    R_AMOUNT,
    R_CLOSED,
    R_DELIVERY,
    R_FLAGS,
    R_PLACED,
    R_REFUNDED,
    R_SHIPPED,
    MerchantState,
    short_hash,
)

# Per-currency limits, "CUR:merchant_cap:min_offer:daily_budget:category_cap" in minor units of CUR, comma-separated.
# The default rows are rough equivalents of the BRL defaults (R$50,000 cap, R$100 smallest offer, R$10M daily
# budget, R$50M per category) at 2025 rates, rounded: USD/EUR 10,000 / 20, GBP 8,000 / 15, MXN 170,000 / 350,
# CLP 8.5M / 17,000, COP 36M / 72,000, IDR 145M / 290,000, VND 230M / 460,000, KRW 12.5M / 25,000, JPY 1.35M / 2,700,
# INR 750,000 / 1,500, KWD 2,750 / 5, BHD 3,400 / 7 (cap / smallest offer, major units). Operators set their own.
DEFAULT_CURRENCY_LIMITS = (
    "USD:1000000:2000:200000000:1000000000,EUR:1000000:2000:200000000:1000000000,"
    "GBP:800000:1500:150000000:800000000,MXN:17000000:35000:3500000000:17000000000,"
    "CLP:8500000:17000:1700000000:8500000000,COP:3600000000:7200000:720000000000:3600000000000,"
    "IDR:14500000000:29000000:2900000000000:14500000000000,VND:230000000:460000:46000000000:230000000000,"
    "KRW:12500000:25000:2500000000:12500000000,JPY:1350000:2700:270000000:1350000000,"
    "INR:75000000:150000:15000000000:75000000000,KWD:2750000:5000:550000000:2750000000,"
    "BHD:3400000:7000:680000000:3400000000"
)


@lru_cache(maxsize=16)
def currency_rows(table: str) -> dict[str, tuple[int, int, int, int]]:
    """The rows of a `currency_limits` table by currency; ValueError for a malformed one."""
    rows: dict[str, tuple[int, int, int, int]] = {}
    for entry in filter(None, (e.strip() for e in table.split(","))):
        parts = entry.split(":")
        if len(parts) != 5 or parts[0] not in CURRENCY_EXPONENTS:
            raise ValueError(f"currency_limits: {entry!r} is not CUR:merchant_cap:min_offer:daily_budget:category_cap "
                             "with a known currency code")
        if parts[0] in rows:
            raise ValueError(f"currency_limits: {parts[0]} listed twice")
        try:
            cap, least, budget, category = (int(x) for x in parts[1:])
        except ValueError:
            raise ValueError(f"currency_limits: {entry!r} has an amount that is not an integer") from None
        if not all(0 <= x <= MAX_AMOUNT for x in (cap, least, budget, category)):
            raise ValueError(f"currency_limits: {entry!r} has an amount outside 0..{MAX_AMOUNT}")
        rows[parts[0]] = (cap, least, budget, category)
    return rows


@dataclass(frozen=True, slots=True)
class PolicySettings:
    pd_tiers: tuple[float, ...] = field(default=(0.02, 0.05, 0.10), metadata={"doc": "PD upper bounds of the advance-rate tiers"})
    advance_rates_bps: tuple[int, ...] = field(default=(8000, 6000, 4000), metadata={"doc": "advance rate per PD tier; PD above the last tier gets 0"})
    receivable_max_age_days: int = field(default=60, metadata={"doc": "receivables older than this are not eligible"})
    settled_sales_multiple_bps: int = field(default=5000, metadata={"doc": "limit <= this x trailing 30-day settled sales"})
    merchant_cap_minor: int = field(default=5_000_000, metadata={"doc": "per-merchant limit cap, minor units of limits_currency"})
    daily_budget_minor: int = field(default=1_000_000_000, metadata={"doc": "portfolio origination budget per day and currency, minor units of limits_currency"})
    category_cap_minor: int = field(default=5_000_000_000, metadata={"doc": "portfolio exposure cap per category and currency, minor units of limits_currency"})
    limits_currency: str = field(default="BRL", metadata={"doc": "the currency merchant_cap_minor, min_offer_minor, daily_budget_minor and category_cap_minor are in (unless currency_limits lists it)"})
    currency_limits: str = field(default=DEFAULT_CURRENCY_LIMITS, metadata={"doc": "per-currency merchant cap, smallest offer, daily budget and category cap, CUR:cap:min_offer:budget:category_cap in minor units of CUR, comma-separated (default: rough equivalents of the BRL numbers for USD EUR GBP MXN CLP COP IDR VND KRW JPY INR KWD BHD). A merchant whose currency is neither listed nor limits_currency gets no limit (CURRENCY_NOT_SUPPORTED)"})
    min_tenure_days: int = field(default=14, metadata={"doc": "no limit before this tenure"})
    min_settled_orders: int = field(default=5, metadata={"doc": "no limit before this many settled orders (90 days)"})
    spike_ratio: float = field(default=2.0, metadata={"doc": "7-day daily placed sales above this x daily 30-day settled sales (earlier placed sales while too new) is a spike"})
    spike_keep_bps: int = field(default=5000, metadata={"doc": "share of the advance rate kept on a sales spike"})
    concentration_share: float = field(default=0.2, metadata={"doc": "top buyer share of orders above this cuts the rate"})
    concentration_keep_bps: int = field(default=5000, metadata={"doc": "share kept on buyer concentration"})
    concentration_top3_share: float = field(default=0.4, metadata={"doc": "the three top buyers' share of orders above this cuts the rate as concentration too (one self-dealer's few accounts, each under the one-buyer share)"})
    self_dealing_repeat_share: float = field(default=0.6, metadata={"doc": "repeat-buyer share above this, with few buyers, is self-dealing"})
    self_dealing_distinct_share: float = field(default=0.5, metadata={"doc": "distinct buyers per order below this, with repeats, is self-dealing"})
    self_dealing_keep_bps: int = field(default=2500, metadata={"doc": "share kept on a self-dealing pattern"})
    refund_surge_rate: float = field(default=0.10, metadata={"doc": "refund rate (7 or 30 days) at or above this cuts the rate"})
    refund_keep_bps: int = field(default=5000, metadata={"doc": "share kept on a refund surge"})
    cancel_surge_rate: float = field(default=0.15, metadata={"doc": "cancellation rate (7 or 30 days) at or above this cuts the rate"})
    cancel_keep_bps: int = field(default=5000, metadata={"doc": "share kept on a cancellation surge"})
    chargeback_rate: float = field(default=0.01, metadata={"doc": "chargeback rate (90 days) at or above this cuts the rate"})
    chargeback_keep_bps: int = field(default=5000, metadata={"doc": "share kept on chargebacks"})
    guard_min_orders: int = field(default=10, metadata={"doc": "buyer guards need at least this many orders in 30 days"})
    on_time_bonus_bps: int = field(default=500, metadata={"doc": "each advance repaid on time (each one repaid late takes two away) grows the limit by this share: the settled-sales and settled-pace caps, and the advance rate up to the best tier's ..."})
    on_time_bonus_max_bps: int = field(default=2000, metadata={"doc": "... up to this share in all"})
    large_order_multiple: float = field(default=5.0, metadata={"doc": "open orders above this x the merchant's 90-day average order cut the rate and count only up to that bound (0 turns it off) ..."})
    large_order_share_bps: int = field(default=2500, metadata={"doc": "... once their amount above that bound is at least this share of the eligible receivables (one big order among many is not a pattern)"})
    large_order_keep_bps: int = field(default=5000, metadata={"doc": "share of the advance rate kept while such orders are open"})
    kill_switch: bool = field(default=False, metadata={"doc": "pause all new offers (open ones are withdrawn)"})
    min_offer_minor: int = field(default=10_000, metadata={"doc": "smallest offer, minor units of limits_currency"})
    fee_min_ppm_per_day: int = field(default=300, metadata={"doc": "daily fee at PD 0, parts per million (0.03%)"})
    fee_max_ppm_per_day: int = field(default=800, metadata={"doc": "daily fee at the PD ceiling, parts per million (0.08%)"})
    fee_pd_ceiling: float = field(default=0.10, metadata={"doc": "PD at which the maximum daily fee applies"})
    grace_days: int = field(default=3, metadata={"doc": "due date = expected settlement + this"})
    max_term_days: int = field(default=60, metadata={"doc": "no offer is due later than this"})
    offer_ttl_hours: int = field(default=24, metadata={"doc": "offers expire after this"})
    default_delivery_days: int = field(default=5, metadata={"doc": "assumed shipping-to-delivery time"})
    max_delivery_days: int = field(default=30, metadata={"doc": "a shipped order's promised delivery (expected_delivery_at) counts up to this many days after shipping, for every use: when it is expected to settle, and when a parcel never delivered stops counting (receivable_overdue_days after it); a pre-order or a placeholder date years ahead is due no later"})
    payout_delay_days: int = field(default=2, metadata={"doc": "assumed delivery-to-settlement time (before the merchant's own lag is known)"})
    min_days_to_settle: int = field(default=7, metadata={"doc": "no receivable is expected to settle sooner than this (one payout cycle)"})
    settlement_slack_days: int = field(default=4, metadata={"doc": "added to the merchant's observed order-to-settlement lag: payouts come in batches, the lag is an average"})
    change_threshold_bps: int = field(default=100, metadata={"doc": "emit credit_limit.updated when limit/available move this much"})
    change_threshold_minor: int = field(default=100, metadata={"doc": "... or by at least this many minor units"})
    offer_share_bps: int = field(default=9000, metadata={"doc": "offer this share of the available limit: headroom so small day-to-day moves of the receivables do not withdraw it"})
    offer_refresh_hours: int = field(default=3, metadata={"doc": "an open offer expiring within this many hours is replaced by a fresh one"})
    offer_growth_bps: int = field(default=2500, metadata={"doc": "an open offer is replaced when the amount on offer grew by at least this share ..."})
    offer_growth_min_minor: int = field(default=10_000, metadata={"doc": "... and by at least this many minor units"})
    receivable_overdue_days: int = field(default=8, metadata={"doc": "a shipped order not delivered this many days after its expected delivery is not eligible"})
    buyer_cap_share: float = field(default=0.05, metadata={"doc": "orders of one buyer count towards receivables up to this share of the 30-day buyer sample ..."})
    buyer_cap_min_orders: int = field(default=2, metadata={"doc": "... but never fewer than this many orders"})
    repeat_allowed_share: float = field(default=0.5, metadata={"doc": "receivables are discounted by the repeat-buyer share above this"})
    receivables_pace_bps: int = field(default=10_000, metadata={"doc": "counted receivables <= this x (daily 30-day settled sales x observed settlement lag)"})
    settled_gap_ratio: float = field(default=1.5, metadata={"doc": "30-day placed GMV above this x 30-day settled GMV cuts the rate (orders that do not settle)"})
    settled_gap_keep_bps: int = field(default=5000, metadata={"doc": "share of the advance rate kept when placed sales run ahead of settled sales"})
    settled_guard_min_tenure_days: int = field(default=45, metadata={"doc": "placed-vs-settled guards need this tenure (a full 30-day settled window)"})
    settled_conversion_ratio: float = field(default=1.3, metadata={"doc": "receivables count in proportion once placed GMV runs above this x settled GMV (30 or 90 days, the higher): placed sales that do not settle never raise the limit; 0 turns it off"})

    def validate(self) -> None:
        if len(self.pd_tiers) != len(self.advance_rates_bps):
            raise ValueError("pd_tiers and advance_rates_bps must have the same length")
        if list(self.pd_tiers) != sorted(self.pd_tiers):
            raise ValueError("pd_tiers must be increasing")
        if any(not 0 <= r <= 10_000 for r in self.advance_rates_bps):
            raise ValueError("advance_rates_bps must be within 0..10000")
        if not 0 < self.max_term_days <= 60:
            raise ValueError("max_term_days must be within 1..60")
        if self.max_delivery_days < 1 or self.default_delivery_days < 0:
            raise ValueError("max_delivery_days must be >= 1 and default_delivery_days >= 0")
        if self.fee_min_ppm_per_day > self.fee_max_ppm_per_day:
            raise ValueError("fee_min_ppm_per_day must not exceed fee_max_ppm_per_day")
        if not 0 < self.offer_refresh_hours < self.offer_ttl_hours:
            raise ValueError("offer_refresh_hours must be within 1..offer_ttl_hours-1")
        if not 0 < self.offer_share_bps <= 10_000:
            raise ValueError("offer_share_bps must be within 1..10000")
        if self.offer_growth_bps < 0 or self.offer_growth_min_minor < 0:
            raise ValueError("offer_growth_bps and offer_growth_min_minor must be >= 0")
        if not 0 < self.buyer_cap_share <= 1 or self.buyer_cap_min_orders < 1:
            raise ValueError("buyer_cap_share must be within (0, 1] and buyer_cap_min_orders >= 1")
        if not 0 <= self.repeat_allowed_share <= 1:
            raise ValueError("repeat_allowed_share must be within 0..1")
        if self.receivables_pace_bps <= 0 or self.settled_gap_ratio <= 1 or self.spike_ratio <= 1:
            raise ValueError("receivables_pace_bps must be > 0, settled_gap_ratio and spike_ratio > 1")
        if self.large_order_multiple < 0 or not 0 <= self.large_order_keep_bps <= 10_000 \
                or not 0 <= self.large_order_share_bps <= 10_000:
            raise ValueError("large_order_multiple must be >= 0, large_order_keep_bps and large_order_share_bps "
                             "within 0..10000")
        if self.on_time_bonus_bps < 0 or self.on_time_bonus_max_bps < 0:
            raise ValueError("on_time_bonus_bps and on_time_bonus_max_bps must be >= 0")
        if self.settled_conversion_ratio != 0 and self.settled_conversion_ratio < 1:
            raise ValueError("settled_conversion_ratio must be 0 (off) or >= 1")
        if self.limits_currency not in CURRENCY_EXPONENTS:
            raise ValueError(f"limits_currency {self.limits_currency!r} is not a currency code")
        currency_rows(self.currency_limits)

    def for_currency(self, currency: str) -> PolicySettings | None:
        """These settings with the merchant cap, smallest offer, daily budget and category cap of `currency`: its
        `currency_limits` row, else these ones when it is `limits_currency`; None for any other currency (the
        policy lends nothing in a currency it has no numbers for: CURRENCY_NOT_SUPPORTED)."""
        row = currency_rows(self.currency_limits).get(currency)
        if row is None:
            return self if currency == self.limits_currency else None
        return _with_row(self, row)


@lru_cache(maxsize=64)
def _with_row(p: PolicySettings, row: tuple[int, int, int, int]) -> PolicySettings:
    cap, least, budget, category = row
    return replace(p, merchant_cap_minor=cap, min_offer_minor=least, daily_budget_minor=budget,
                   category_cap_minor=category)


@dataclass(frozen=True, slots=True)
class Receivable:
    order_id: str
    amount: int  # net of partial refunds
    expected_settlement: int  # epoch seconds
    financed: bool = False  # already backs a disbursed loan


@dataclass(frozen=True, slots=True)
class LimitDecision:
    limit: int
    available: int
    outstanding: int
    eligible: int
    advance_rate_bps: int
    reasons: tuple[Reason, ...]
    frozen: bool  # delinquent: limit kept, nothing new
    blocked: bool  # suspended, closed, charged off or too new: no offers
    receivables: tuple[Receivable, ...]  # eligible, soonest to settle first

    @property
    def codes(self) -> str:
        return ",".join(r.code for r in self.reasons)


_LENDABLE = F_PLACED | F_PAID | F_SHIPPED


def eligible_receivables(state: MerchantState, as_of: int, p: PolicySettings,
                         lag_days: float = 0.0) -> list[Receivable]:
    """Placed, paid, shipped, unsettled receivables, soonest to settle first. An order seen paid and shipped but
    never placed (its order.placed lost, or not yet arrived) is not one: nothing counted it in placed sales (the
    spike and placed-vs-settled guards) nor sampled its buyer (the buyer caps), so lending against it would let a
    stream that leaves placements out borrow more than the same orders sent whole; its placement makes it one.
    A receivable is expected to settle
    at the later of its delivery plus the payout delay and its placement plus the merchant's observed
    order-to-settlement lag (`lag_days`, 0 when unknown) plus slack, so due dates follow how this
    marketplace really pays out (weekly batches, buyer confirmation), not an optimistic constant.

    A parcel not yet delivered is due at its promised delivery, but never later than `max_delivery_days` after
    it shipped: a promise years ahead (a pre-order, a placeholder date) must not keep a parcel that never
    arrives looking on its way, nor push its settlement (and the fee) past any term. A receivable expected to
    settle after `max_term_days` from `as_of` cannot repay an advance within its term: it is not eligible at all,
    so it backs neither an offer nor the limit (which is advance rate x eligible receivables)."""
    lag = int(lag_days * DAY) + p.settlement_slack_days * DAY if lag_days > 0 else 0
    oldest = as_of - p.receivable_max_age_days * DAY
    overdue = p.receivable_overdue_days * DAY
    last_settlement = as_of + p.max_term_days * DAY
    max_delivery = p.max_delivery_days * DAY
    out = []
    for oid, rec in state.receivables.items():
        flags = rec[R_FLAGS]
        if flags & _LENDABLE != _LENDABLE or rec[R_CLOSED] and rec[R_CLOSED] <= as_of:
            continue
        if not rec[R_PLACED] or not oldest < rec[R_PLACED] <= as_of or rec[R_SHIPPED] > as_of:
            continue
        amount = rec[R_AMOUNT] - rec[R_REFUNDED]
        if amount <= 0:
            continue
        delivery = rec[R_DELIVERY] or rec[R_SHIPPED] + p.default_delivery_days * DAY
        if not flags & F_DELIVERED:
            delivery = min(delivery, rec[R_SHIPPED] + max_delivery)
            # Shipped long ago and never delivered: a parcel that does not exist is the classic fake order.
            if as_of > delivery + overdue:
                continue
        expected = max(delivery + p.payout_delay_days * DAY, rec[R_PLACED] + lag, as_of + p.min_days_to_settle * DAY)
        if expected > last_settlement:
            continue
        out.append(Receivable(oid, amount, expected, bool(flags & F_FINANCED)))
    out.sort(key=lambda r: (r.expected_settlement, r.order_id))
    return out


def buyer_diversity(state: MerchantState, as_of: int, p: PolicySettings) -> tuple[float, float]:
    """(share of sampled 30-day orders that count once each buyer is capped, repeat-buyer share) from the
    merchant's buyer sample: a few buyers placing many orders add little to what can be financed."""
    today = as_of // DAY
    counts = Counter(b[2] for b in state.buyers if today - 30 < b[0] <= today)
    n = sum(counts.values())
    if not n:
        return 1.0, 0.0
    cap = max(p.buyer_cap_min_orders, int(p.buyer_cap_share * n))
    counted = sum(min(c, cap) for c in counts.values()) / n
    repeat = sum(c for c in counts.values() if c > 1) / n
    return counted, repeat


def base_rate_bps(pd: float, p: PolicySettings) -> int:
    for bound, rate in zip(p.pd_tiers, p.advance_rates_bps, strict=True):
        if pd < bound:
            return rate
    return 0


def repayment_bonus_bps(f: list[float], p: PolicySettings) -> tuple[int, int]:
    """(advance-rate points added for the merchant's repayment record, advances repaid on time): repaying on time
    grows the limit, whatever the model makes of it; a late repayment takes back twice what an on-time one gives."""
    repaid = int(f[INDEX["loans_repaid"]])
    on_time = round(repaid * f[INDEX["on_time_rate"]])
    bonus = p.on_time_bonus_bps * (on_time - 2 * (repaid - on_time))
    return max(0, min(p.on_time_bonus_max_bps, bonus)), on_time


def large_orders(receivables: list[Receivable], f: list[float], p: PolicySettings) -> tuple[int, int, float]:
    """(open orders far above the merchant's 90-day average ticket, their amount above that bound, the average):
    the bust-out pattern, a steady merchant that suddenly sells a few huge orders and borrows against them."""
    orders = f[INDEX["placed_orders_90d"]]
    if p.large_order_multiple <= 0 or orders < p.guard_min_orders:
        return 0, 0, 0.0
    ticket = f[INDEX["placed_gmv_90d"]] / orders
    bound = int(ticket * p.large_order_multiple)
    big = [r.amount - bound for r in receivables if r.amount > bound]
    return len(big), sum(big), ticket


def top_buyers_share(state: MerchantState, as_of: int, k: int = 3) -> tuple[float, int]:
    """(share of the sampled 30-day orders placed by the `k` buyers placing most of them, sampled orders)."""
    today = as_of // DAY
    counts = Counter(b[2] for b in state.buyers if today - 30 < b[0] <= today)
    n = sum(counts.values())
    return (sum(c for _, c in counts.most_common(k)) / n if n else 0.0), n


def guards(
    f: list[float], p: PolicySettings, money: tuple[float, float] = (0.0, 0.0),
    cancelled: tuple[float, float] = (0.0, 0.0), top3: tuple[float, int] = (0.0, 0),
) -> list[tuple[int, Reason]]:
    """Manipulation and risk guards: (share of the advance rate kept, reason) for each one that fires.

    `money` = features.money_rates and `cancelled` = features.cancel_money_rates (7 and 30 days): refunds,
    chargebacks and cancellations weighed by amount, so that they still fire when the order counts are padded
    with tiny orders. `top3` = top_buyers_share: a self-dealer spreading its orders over a few accounts keeps each
    under the one-buyer share, not the few together (counted once at least guard_min_orders orders are sampled,
    so that a short sample of distinct buyers never looks concentrated)."""
    out: list[tuple[int, Reason]] = []
    out.extend(_sales_guards(f, p))
    orders30 = f[INDEX["placed_orders_30d"]]
    top, repeat = f[INDEX["top_buyer_share_30d"]], f[INDEX["repeat_buyer_share_30d"]]
    distinct = f[INDEX["distinct_buyers_30d"]]
    if orders30 >= p.guard_min_orders:
        if top > p.concentration_share:
            out.append((p.concentration_keep_bps, Reason("BUYER_CONCENTRATION", f"one buyer placed {top:.0%} of orders in 30 days")))
        elif top3[0] > p.concentration_top3_share and top3[1] >= p.guard_min_orders:
            out.append((p.concentration_keep_bps, Reason(
                "BUYER_CONCENTRATION", f"three buyers placed {top3[0]:.0%} of orders in 30 days")))
        if repeat > p.self_dealing_repeat_share and distinct / orders30 < p.self_dealing_distinct_share:
            out.append((p.self_dealing_keep_bps, Reason(
                "SELF_DEALING_PATTERN",
                f"{repeat:.0%} of orders came from about {distinct:.0f} buyers buying again and again in 30 days")))
    r7, r30 = f[INDEX["refund_rate_7d"]], f[INDEX["refund_rate_30d"]]
    refunded = money[0]
    if max(r7, r30) >= p.refund_surge_rate:
        days, rate = (7, r7) if r7 >= r30 else (30, r30)
        out.append((p.refund_keep_bps, Reason("REFUND_SURGE", f"refund rate rose to {rate:.0%} in {days} days")))
    elif refunded >= p.refund_surge_rate:
        out.append((p.refund_keep_bps, Reason("REFUND_SURGE", f"refunds took {refunded:.0%} of sales in 30 days")))
    c7, c30 = f[INDEX["cancel_rate_7d"]], f[INDEX["cancel_rate_30d"]]
    if max(c7, c30) >= p.cancel_surge_rate:
        days, rate = (7, c7) if c7 >= c30 else (30, c30)
        out.append((p.cancel_keep_bps, Reason("CANCEL_SURGE", f"cancellation rate rose to {rate:.0%} in {days} days")))
    elif max(cancelled) >= p.cancel_surge_rate:
        days, rate = (7, cancelled[0]) if cancelled[0] >= cancelled[1] else (30, cancelled[1])
        out.append((p.cancel_keep_bps, Reason("CANCEL_SURGE", f"cancellations took {rate:.0%} of sales in {days} days")))
    cb = f[INDEX["chargeback_rate_90d"]]
    if cb >= p.chargeback_rate:
        out.append((p.chargeback_keep_bps, Reason("CHARGEBACKS", f"chargebacks on {cb:.1%} of orders in 90 days")))
    elif money[1] >= p.chargeback_rate:
        out.append((p.chargeback_keep_bps, Reason("CHARGEBACKS", f"chargebacks took {money[1]:.1%} of sales in 90 days")))
    return out


def _sales_guards(f: list[float], p: PolicySettings) -> list[tuple[int, Reason]]:
    """Placed sales compared with SETTLED sales (fake orders are never settled); a merchant too new for a full
    settled window is compared with its own earlier placed sales instead."""
    out: list[tuple[int, Reason]] = []
    tenure = f[INDEX["tenure_days"]]
    g7, g30, g90 = f[INDEX["placed_gmv_7d"]], f[INDEX["placed_gmv_30d"]], f[INDEX["placed_gmv_90d"]]
    s30 = f[INDEX["settled_gmv_30d"]]
    if tenure >= p.settled_guard_min_tenure_days:
        daily_settled = max(s30, 1.0) / 30
        ratio = (g7 / 7) / daily_settled
        if ratio >= p.spike_ratio:
            out.append((p.spike_keep_bps, Reason(
                "GMV_SPIKE", f"sales in the last 7 days ran at {ratio:.1f}x the merchant's daily settled sales")))
        gap = g30 / max(s30, 1.0)
        if gap >= p.settled_gap_ratio:
            out.append((p.settled_gap_keep_bps, Reason(
                "UNSETTLED_SALES", f"orders placed in 30 days are {gap:.1f}x the sales settled in 30 days")))
        return out
    prior_days = min(83.0, tenure - 7)
    if prior_days >= 7 and g90 > g7:
        ratio = (g7 / 7) / ((g90 - g7) / prior_days)
        if ratio >= p.spike_ratio:
            out.append((p.spike_keep_bps, Reason(
                "GMV_SPIKE", f"sales in the last 7 days jumped to {ratio:.1f}x the merchant's usual daily level")))
    return out


def settled_conversion_keep(f: list[float], p: PolicySettings) -> tuple[float, float, int]:
    """(share of receivables that count, placed/settled GMV ratio, its window in days). Fake orders are placed but
    never settle, so receivables count only in proportion to the GMV that does settle: once placed GMV over 30 or 90
    days (the higher ratio) runs above `settled_conversion_ratio` x settled GMV, the excess adds nothing.

    Settlements trail orders by the merchant's settlement lag, so a window compares like with like only once the
    merchant has sold for the window plus that lag (and never before `settled_guard_min_tenure_days`): a younger
    merchant's settled window is still filling and would look like unsettled sales."""
    tenure = f[INDEX["tenure_days"]]
    if p.settled_conversion_ratio <= 0 or tenure < p.settled_guard_min_tenure_days:
        return 1.0, 0.0, 0
    lag = max(float(p.min_days_to_settle), f[INDEX["settlement_lag_days_90d"]])
    gap, days = 0.0, 0
    for window, placed, settled in ((30, "placed_gmv_30d", "settled_gmv_30d"), (90, "placed_gmv_90d", "settled_gmv_90d")):
        if tenure < window + lag:
            continue
        ratio = f[INDEX[placed]] / max(f[INDEX[settled]], 1.0)
        if ratio > gap:
            gap, days = ratio, window
    if gap <= p.settled_conversion_ratio:
        return 1.0, gap, days
    return p.settled_conversion_ratio / gap, gap, days


def counted_receivables(
    state: MerchantState, f: list[float], eligible: int, as_of: int, p: PolicySettings, growth_bps: int = 0,
) -> tuple[int, list[Reason]]:
    """The part of the eligible receivables the limit may rest on: buyer-capped, repeat buyers discounted,
    and no more than the merchant's settled sales pace says should be awaiting settlement."""
    reasons: list[Reason] = []
    counted_share, repeat = buyer_diversity(state, as_of, p)
    share = counted_share * (1.0 - max(0.0, repeat - p.repeat_allowed_share))
    counted = int(eligible * share)
    if counted < eligible * 0.95:
        reasons.append(Reason("BUYER_DIVERSITY", f"only {share:.0%} of receivables count: few buyers place many orders"))
    keep, gap, days = settled_conversion_keep(f, p)
    if keep < 1.0:
        counted = int(counted * keep)
        reasons.append(Reason("PLACED_AHEAD_OF_SETTLED",
                              f"only {keep:.0%} of receivables count: orders placed in {days} days are {gap:.1f}x "
                              "the sales settled"))
    lag_days = max(1.0, f[INDEX["settlement_lag_days_90d"]])
    pace = int(f[INDEX["settled_gmv_30d"]] / 30 * lag_days * p.receivables_pace_bps / 10_000)
    if growth_bps:  # an on-time repayment record (decide_limit)
        pace = pace * (10_000 + growth_bps) // 10_000
    if counted > pace:
        counted = pace
        reasons.append(Reason("RECEIVABLES_ABOVE_SETTLED_PACE",
                              f"receivables counted up to {lag_days:.0f} days of settled sales"))
    return counted, reasons


KILL_SWITCH_REASON = Reason("KILL_SWITCH", "new advances are paused for all merchants")

GUARD_CODES = frozenset({
    "GMV_SPIKE", "UNSETTLED_SALES", "BUYER_CONCENTRATION", "SELF_DEALING_PATTERN", "REFUND_SURGE", "CANCEL_SURGE",
    "CHARGEBACKS", "LARGE_ORDERS",
})


# state.last = [limit, available, reason codes, *last offer created]; the last offer record is
# [offer_id, amount, created_ts, expires_ts] plus, once its acceptance is noticed, the hashes of the loans known
# then. It outlives the open offer (the state drops that on acceptance) so that the accepted amount counts as
# spoken for until its loan shows up.
LAST_OFFER_AT = 3


def accepted_pending(state: MerchantState) -> int:
    """Amount of the last offer once accepted but before its loan reaches the state (0 otherwise)."""
    rec = state.last[LAST_OFFER_AT:]
    if len(rec) < 4 or (state.offer and state.offer[0] == rec[0]):
        return 0
    if state.latest > int(rec[3]) + DAY:
        return 0  # never disbursed: stop holding it back
    if len(rec) > 4:
        known = set(rec[4])
        if any(short_hash(k) not in known for k in state.loans):
            return 0
    elif any(loan[L_TS] > int(rec[2]) and loan[L_OWED] >= int(rec[1]) for loan in state.loans.values()):
        return 0  # the loan arrived before the acceptance was noticed
    return int(rec[1])


def decide_limit(
    state: MerchantState, features: list[float], pd: float, model_reasons: list[Reason], as_of: int, p: PolicySettings
) -> LimitDecision:
    # Sums of amounts within the schema's range can exceed it: reported (and lent against) up to that range.
    outstanding = min(state.outstanding(as_of), MAX_AMOUNT)
    receivables = eligible_receivables(state, as_of, p, features[INDEX["settlement_lag_days_90d"]])
    total = sum(r.amount for r in receivables)
    eligible = min(total, MAX_AMOUNT)
    reasons: list[Reason] = []
    rate = base_rate_bps(pd, p)
    if rate == 0:
        reasons.append(Reason("HIGH_RISK", f"estimated default risk of {pd:.1%} is above the lending threshold"))
    bonus, on_time = repayment_bonus_bps(features, p) if rate else (0, 0)
    if bonus:
        # Repaying on time grows the limit: the caps by `bonus`, the rate too but never past the best tier's, so
        # that an advance stays as far below its receivables as the policy's best merchants'.
        rate = min(rate * (10_000 + bonus) // 10_000, max(rate, max(p.advance_rates_bps)))
        reasons.append(Reason("ON_TIME_REPAYMENTS", f"{on_time} advances repaid on time: the limit may be "
                                                    f"{bonus / 100:.0f}% higher"))
    # The money-weighted rates matter only where the count-based ones saw some refunds or chargebacks but too
    # few to fire (with none at all, no money was refunded or charged back either).
    r7, r30, cb = features[INDEX["refund_rate_7d"]], features[INDEX["refund_rate_30d"]], features[INDEX["chargeback_rate_90d"]]
    money = money_rates(state, as_of, refunds=0 < max(r7, r30) < p.refund_surge_rate, chargebacks=0 < cb < p.chargeback_rate)
    c7, c30 = features[INDEX["cancel_rate_7d"]], features[INDEX["cancel_rate_30d"]]
    cancelled = cancel_money_rates(state, as_of) if 0 < max(c7, c30) < p.cancel_surge_rate else (0.0, 0.0)
    # The three top buyers' share is read only where it can fire: at most three times the top one's, and
    # only while the top one alone does not fire.
    top = features[INDEX["top_buyer_share_30d"]]
    top3 = top_buyers_share(state, as_of) \
        if top <= p.concentration_share and 3 * top > p.concentration_top3_share else (0.0, 0)
    for keep, reason in guards(features, p, money, cancelled, top3):
        rate = rate * keep // 10_000
        reasons.append(reason)
    outsized, excess, ticket = large_orders(receivables, features, p)
    if not (outsized and excess * 10_000 >= p.large_order_share_bps * total):
        excess = 0  # one big order among many is not a pattern: the settled-pace cap bounds what it adds
    else:
        rate = rate * p.large_order_keep_bps // 10_000
        reasons.append(Reason("LARGE_ORDERS", f"{outsized} open orders above {p.large_order_multiple:g}x the merchant's "
                                              f"average order of {ticket / 100:,.2f}"))
    blocked_reason = _blocked(state, features, p)
    blocked = blocked_reason is not None
    if blocked_reason:
        reasons.insert(0, blocked_reason)
    frozen = state.delinquent()
    if frozen:
        worst = max(loan[4] for loan in state.loans.values())
        reasons.insert(0, Reason("DELINQUENT", f"an advance is {worst} days past due: limit frozen"))
        limit = int(state.last[0]) if state.last else 0
        return LimitDecision(limit, 0, outstanding, eligible, 0, merge_reasons(reasons, model_reasons), True, True, tuple(receivables))
    counted, count_reasons = counted_receivables(state, features, min(total - excess, MAX_AMOUNT), as_of, p, bonus)
    reasons.extend(count_reasons)
    limit = 0 if blocked else counted * rate // 10_000
    settled30 = int(features[INDEX["settled_gmv_30d"]])
    multiple = p.settled_sales_multiple_bps * (10_000 + bonus) // 10_000
    sales_cap = settled30 * multiple // 10_000
    if limit > sales_cap:
        limit = sales_cap
        reasons.append(Reason("SETTLED_SALES_CAP", f"limit capped at {multiple / 100:.0f}% of 30-day settled sales"))
    cap = (p.for_currency(state.currency) or p).merchant_cap_minor
    if limit > cap:
        limit = cap
        reasons.append(Reason("MERCHANT_CAP", "limit capped at the per-merchant maximum"))
    if p.kill_switch:
        reasons.insert(0, KILL_SWITCH_REASON)
    # An accepted offer whose loan is not booked yet is already spoken for.
    available = max(0, limit - outstanding - accepted_pending(state))
    if len(state.loans) >= MAX_LOANS:
        # The state tracks at most MAX_LOANS open advances and would forget one to book another, understating
        # what the merchant owes (and lending it again): no new advance until one of them is repaid.
        available = 0
        reasons.append(Reason("OPEN_ADVANCES_CAP", f"{len(state.loans)} advances open: a new one waits until one "
                                                   "is repaid"))
    return LimitDecision(limit, available, outstanding, eligible, rate, merge_reasons(reasons, model_reasons), False, blocked,
                         tuple(receivables))


def _blocked(state: MerchantState, f: list[float], p: PolicySettings) -> Reason | None:
    if not state.onboarded:
        # No merchant.onboarded yet: a merchant.updated setting status and category does not make one (no country,
        # no onboarded currency; the marketplace never said it sells here).
        return Reason("MERCHANT_NOT_ONBOARDED", "the marketplace has not onboarded this merchant (no merchant.onboarded: "
                      "category and country unknown)")
    if state.status != "active":
        return Reason("MERCHANT_" + state.status.upper(), f"merchant account is {state.status}")
    if p.for_currency(state.currency) is None:
        return Reason("CURRENCY_NOT_SUPPORTED", f"no advance limits are configured for {state.currency or 'no currency'} "
                      "(currency_limits)")
    if state.charged_off():
        return Reason("CHARGED_OFF", "an earlier advance was charged off")
    tenure, settled = f[INDEX["tenure_days"]], f[INDEX["settled_orders_90d"]]
    if tenure < p.min_tenure_days or settled < p.min_settled_orders:
        return Reason("INSUFFICIENT_HISTORY", f"{tenure:.0f} days on the marketplace and {settled:.0f} settled orders; "
                      f"advances need {p.min_tenure_days} days and {p.min_settled_orders} settled orders")
    return None


def merge_reasons(policy: list[Reason], model: list[Reason]) -> tuple[Reason, ...]:
    codes = {r.code for r in policy}
    return tuple(policy + [r for r in model if r.code not in codes])[:20]
