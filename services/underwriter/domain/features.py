"""The one place features are computed, for serving and training alike (stdlib only).

`compute_features(state, as_of)` never looks ahead: daily buckets after as_of's day, orders placed after
as_of, loans disbursed after as_of and repayments recorded after as_of are ignored. (Buckets are daily, so
events later on as_of's own day count; receivables closed after as_of stay open in the view for the state's
closed-receivable retention, two days of event time.)
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime

from services.underwriter.domain.state import (
    BUCKET_FIELDS,
    CANCEL_GMV,
    CANCEL_N,
    CHARGEBACK_GMV,
    CHARGEBACK_N,
    DAY,
    F_PAID,
    F_SHIPPED,
    KIND_CHARGED_OFF,
    KIND_REPAID,
    LAG_HOURS,
    LAG_N,
    PLACED_GMV,
    PLACED_N,
    R_AMOUNT,
    R_CLOSED,
    R_FLAGS,
    R_PLACED,
    R_REFUNDED,
    R_SHIPPED,
    REFUND_GMV,
    REFUND_N,
    SETTLED_GMV,
    SETTLED_N,
    MerchantState,
)

FEATURE_NAMES: tuple[str, ...] = (
    "tenure_days",
    "placed_gmv_7d", "placed_gmv_30d", "placed_gmv_90d",
    "placed_orders_7d", "placed_orders_30d", "placed_orders_90d",
    "settled_gmv_7d", "settled_gmv_30d", "settled_gmv_90d",
    "settled_orders_7d", "settled_orders_30d", "settled_orders_90d",
    "gmv_growth_7d_30d", "gmv_growth_30d_90d", "gmv_volatility_30d",
    "avg_ticket_30d",
    "refund_rate_7d", "refund_rate_30d", "cancel_rate_7d", "cancel_rate_30d", "chargeback_rate_90d",
    "settlement_lag_days_90d",
    "distinct_buyers_30d", "repeat_buyer_share_30d", "top_buyer_share_30d",
    "open_receivables_gmv", "open_receivables_count",
    "outstanding", "utilisation",
    "loans_repaid", "on_time_rate", "worst_dpd", "loans_charged_off",
)
INDEX: dict[str, int] = {name: i for i, name in enumerate(FEATURE_NAMES)}


def _ts(as_of: datetime) -> int:
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware (UTC event time)")
    return int(as_of.timestamp())


def _windows(state: MerchantState, today: int) -> tuple[list[int], list[int], list[int]]:
    """Sums of every bucket field over the last 7, 30 and 90 days (integer sums: exact in any order)."""
    d7: list[list[int]] = []  # buckets aged 0-6 days
    d30_: list[list[int]] = []  # 7-29 days
    d90_: list[list[int]] = []  # 30-89 days
    for day, b in state.buckets.items():
        age = today - day
        if 0 <= age < 90:
            (d7 if age < 7 else d30_ if age < 30 else d90_).append(b)
    w7 = _column_sums(d7)
    # A wider window with no buckets of its own sums to the narrower one (read only, so shared).
    w30 = _column_sums([w7, *d30_]) if d30_ else w7
    return w7, w30, _column_sums([w30, *d90_]) if d90_ else w30


def _column_sums(rows: list[list[int]]) -> list[int]:
    if not rows:
        return [0] * BUCKET_FIELDS
    if len(rows) == 1:
        return list(rows[0])
    return list(map(sum, zip(*rows, strict=True)))


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def _buyer_features(state: MerchantState, today: int, placed_30: int) -> tuple[float, float, float]:
    start = today - 30
    sample = [h for day, _, h in state.buyers if start < day <= today]
    if not sample:
        return 0.0, 0.0, 0.0
    counts = Counter(sample).values()
    n = len(sample)
    distinct_share = len(counts) / n
    repeat = sum([c for c in counts if c > 1]) / n
    top = max(counts) / n
    # The sample holds the latest orders; scale its distinct share to the window's order count.
    return float(round(distinct_share * max(placed_30, n))), repeat, top


def _volatility(state: MerchantState, today: int, placed_30: int) -> float:
    """Coefficient of variation of daily placed GMV over the 30 days to today (placed_30 = their sum)."""
    mean = placed_30 / 30
    if not mean:
        return 0.0
    get = state.buckets.get
    # Same terms in the same day order as a plain loop, so the float sum is bit-for-bit the same.
    var = sum([((b[PLACED_GMV] if (b := get(d)) is not None else 0) - mean) ** 2
               for d in range(today - 29, today + 1)]) / 30
    return math.sqrt(var) / mean


def _receivables(state: MerchantState, as_of: int) -> tuple[int, int]:
    """(amount, count) of receivables open as of `as_of`: placed by then, paid, shipped by then, not closed by
    then; the amount net of refunds, never below 0."""
    total = count = 0
    paid_shipped = F_PAID | F_SHIPPED
    flags_at, placed_at, shipped_at, closed_at = R_FLAGS, R_PLACED, R_SHIPPED, R_CLOSED
    for rec in state.receivables.values():
        if rec[flags_at] & paid_shipped != paid_shipped:
            continue
        placed = rec[placed_at]
        if not placed or placed > as_of or rec[shipped_at] > as_of:
            continue
        closed = rec[closed_at]
        if closed and closed <= as_of:
            continue
        amount = rec[R_AMOUNT] - rec[R_REFUNDED]
        if amount > 0:
            total += amount
        count += 1
    return total, count


def compute_features(state: MerchantState, as_of: datetime) -> list[float]:
    """Features of `state` as of event time `as_of`, in FEATURE_NAMES order."""
    now = _ts(as_of)
    today = now // DAY
    w7, w30, w90 = _windows(state, today)
    tenure = max(0.0, (now - state.since) / DAY) if state.since and state.since <= now else 0.0
    prior_60 = w90[PLACED_GMV] - w30[PLACED_GMV]
    growth_7_30 = _ratio(w7[PLACED_GMV] / 7, w30[PLACED_GMV] / 30)
    growth_30_90 = _ratio(w30[PLACED_GMV] / 30, prior_60 / 60) if prior_60 else (1.0 if w30[PLACED_GMV] else 0.0)
    distinct, repeat, top = _buyer_features(state, today, w30[PLACED_N])
    open_gmv, open_n = _receivables(state, now)
    outstanding = state.outstanding(now)
    history = [row for row in state.loan_history if row[0] <= now]
    repaid = [row for row in history if row[2] == KIND_REPAID]
    worst = state.worst_dpd if state.worst_dpd_ts and state.worst_dpd_ts <= now else 0
    return [
        round(tenure, 3),
        float(w7[PLACED_GMV]), float(w30[PLACED_GMV]), float(w90[PLACED_GMV]),
        float(w7[PLACED_N]), float(w30[PLACED_N]), float(w90[PLACED_N]),
        float(w7[SETTLED_GMV]), float(w30[SETTLED_GMV]), float(w90[SETTLED_GMV]),
        float(w7[SETTLED_N]), float(w30[SETTLED_N]), float(w90[SETTLED_N]),
        growth_7_30, growth_30_90, _volatility(state, today, w30[PLACED_GMV]),
        _ratio(w30[PLACED_GMV], w30[PLACED_N]),
        _ratio(w7[REFUND_N], w7[PLACED_N]), _ratio(w30[REFUND_N], w30[PLACED_N]),
        _ratio(w7[CANCEL_N], w7[PLACED_N]), _ratio(w30[CANCEL_N], w30[PLACED_N]),
        _ratio(w90[CHARGEBACK_N], w90[PLACED_N]),
        _ratio(w90[LAG_HOURS], w90[LAG_N]) / 24,
        distinct, repeat, top,
        float(open_gmv), float(open_n),
        float(outstanding), _ratio(outstanding, w30[SETTLED_GMV]),
        float(len(repaid)), _ratio(sum(r[1] for r in repaid), len(repaid)) if repaid else 1.0,
        float(worst), float(sum(1 for row in history if row[2] == KIND_CHARGED_OFF)),
    ]


def money_rates(state: MerchantState, as_of: int, refunds: bool = True, chargebacks: bool = True) -> tuple[float, float]:
    """(refunded / placed GMV over 30 days, charged back / placed GMV over 90 days) as of `as_of` (epoch seconds);
    either is 0.0 when not asked for.

    Not model features: inputs of the policy's refund and chargeback guards beside the count-based rates, which
    padding a history with tiny orders would dilute; these money-weighted ones it cannot."""
    today = as_of // DAY
    refund_rate = _gmv_ratio(state, today, 30, REFUND_GMV) if refunds else 0.0
    chargeback_rate = _gmv_ratio(state, today, 90, CHARGEBACK_GMV) if chargebacks else 0.0
    return refund_rate, chargeback_rate


def cancel_money_rates(state: MerchantState, as_of: int) -> tuple[float, float]:
    """(cancelled / placed GMV over 7 days, over 30 days) as of `as_of`: the cancellation guard's money-weighted
    rates beside the count-based features, which tiny (or 1-cent) orders placed to pad the history dilute."""
    today = as_of // DAY
    return _gmv_ratio(state, today, 7, CANCEL_GMV), _gmv_ratio(state, today, 30, CANCEL_GMV)


def _gmv_ratio(state: MerchantState, today: int, days: int, column: int) -> float:
    """`column` over placed GMV, summed over the `days` days up to `today`."""
    get = state.buckets.get
    placed = amount = 0
    for day in range(today - days + 1, today + 1):
        if (b := get(day)) is not None:
            placed += b[PLACED_GMV]
            amount += b[column]
    return _ratio(amount, placed)


def as_dict(features: list[float]) -> dict[str, float]:
    if len(features) != len(FEATURE_NAMES):
        raise ValueError(f"expected {len(FEATURE_NAMES)} features, got {len(features)}")
    return dict(zip(FEATURE_NAMES, features, strict=True))
