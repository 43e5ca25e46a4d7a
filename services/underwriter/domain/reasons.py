"""Reason codes in plain words, with the merchant's actual values (stdlib only)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    text: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "text": self.text}


def _pct(v: float) -> str:
    return f"{v * 100:.0f}%"


def _days(v: float) -> str:
    return f"{v:.0f} days" if v != 1 else "1 day"


def _minor(v: float) -> str:
    return f"{v / 100:,.2f}"


# Feature name -> (reason code, text template given the value), used for model reason codes.
FEATURE_TEXT: dict[str, tuple[str, Callable[[float], str]]] = {
    "tenure_days": ("SHORT_TENURE", lambda v: f"selling on the marketplace for {_days(v)} only"),
    "placed_gmv_7d": ("SALES_7D", lambda v: f"sales of {_minor(v)} in the last 7 days"),
    "placed_gmv_30d": ("SALES_30D", lambda v: f"sales of {_minor(v)} in the last 30 days"),
    "placed_gmv_90d": ("SALES_90D", lambda v: f"sales of {_minor(v)} in the last 90 days"),
    "placed_orders_7d": ("ORDERS_7D", lambda v: f"{v:.0f} orders in the last 7 days"),
    "placed_orders_30d": ("ORDERS_30D", lambda v: f"{v:.0f} orders in the last 30 days"),
    "placed_orders_90d": ("ORDERS_90D", lambda v: f"{v:.0f} orders in the last 90 days"),
    "settled_gmv_7d": ("SETTLED_7D", lambda v: f"settled sales of {_minor(v)} in the last 7 days"),
    "settled_gmv_30d": ("SETTLED_30D", lambda v: f"settled sales of {_minor(v)} in the last 30 days"),
    "settled_gmv_90d": ("SETTLED_90D", lambda v: f"settled sales of {_minor(v)} in the last 90 days"),
    "settled_orders_7d": ("SETTLED_ORDERS_7D", lambda v: f"{v:.0f} orders settled in the last 7 days"),
    "settled_orders_30d": ("SETTLED_ORDERS_30D", lambda v: f"{v:.0f} orders settled in the last 30 days"),
    "settled_orders_90d": ("SETTLED_ORDERS_90D", lambda v: f"{v:.0f} orders settled in the last 90 days"),
    "gmv_growth_7d_30d": ("SALES_TREND_7D", lambda v: f"daily sales this week at {v:.1f}x the 30-day average"),
    "gmv_growth_30d_90d": ("SALES_TREND_30D", lambda v: f"daily sales this month at {v:.1f}x the months before"),
    "gmv_volatility_30d": ("SALES_VOLATILITY", lambda v: f"daily sales vary by {_pct(v)} around their average"),
    "avg_ticket_30d": ("AVERAGE_TICKET", lambda v: f"average order of {_minor(v)} in 30 days"),
    "refund_rate_7d": ("REFUND_RATE_7D", lambda v: f"refund rate rose to {_pct(v)} in 7 days"),
    "refund_rate_30d": ("REFUND_RATE", lambda v: f"refund rate rose to {_pct(v)} in 30 days"),
    "cancel_rate_7d": ("CANCEL_RATE_7D", lambda v: f"cancellation rate of {_pct(v)} in 7 days"),
    "cancel_rate_30d": ("CANCEL_RATE", lambda v: f"cancellation rate of {_pct(v)} in 30 days"),
    "chargeback_rate_90d": ("CHARGEBACK_RATE", lambda v: f"chargebacks on {_pct(v)} of orders in 90 days"),
    "settlement_lag_days_90d": ("SETTLEMENT_LAG", lambda v: f"orders take {v:.1f} days to settle on average"),
    "distinct_buyers_30d": ("FEW_BUYERS", lambda v: f"about {v:.0f} distinct buyers in 30 days"),
    "repeat_buyer_share_30d": ("REPEAT_BUYERS", lambda v: f"{_pct(v)} of orders from repeat buyers in 30 days"),
    "top_buyer_share_30d": ("BUYER_CONCENTRATION", lambda v: f"one buyer placed {_pct(v)} of orders in 30 days"),
    "open_receivables_gmv": ("OPEN_RECEIVABLES", lambda v: f"{_minor(v)} in paid, shipped orders awaiting settlement"),
    "open_receivables_count": ("OPEN_ORDERS", lambda v: f"{v:.0f} paid, shipped orders awaiting settlement"),
    "outstanding": ("OUTSTANDING", lambda v: f"{_minor(v)} still owed on advances"),
    "utilisation": ("UTILISATION", lambda v: f"advances owed equal {_pct(v)} of 30-day settled sales"),
    "loans_repaid": ("REPAYMENT_HISTORY", lambda v: f"{v:.0f} advances repaid so far"),
    "on_time_rate": ("ON_TIME_RATE", lambda v: f"{_pct(v)} of advances repaid on time"),
    "worst_dpd": ("DAYS_PAST_DUE", lambda v: f"an advance was up to {_days(v)} past due"),
    "loans_charged_off": ("CHARGED_OFF", lambda v: f"{v:.0f} advances charged off"),
}


def feature_reason(name: str, value: float) -> Reason:
    code, text = FEATURE_TEXT.get(name, (name.upper(), lambda v: f"{name} is {v:g}"))
    return Reason(code, text(value))
