"""What to emit after a limit decision: limit updates, offers created and withdrawn (stdlib only).

Pure: it reads and updates the merchant's state (last emitted limit, open offer) and the portfolio port, and
returns plain `Action`s; the service turns them into CloudEvents with deterministic ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Protocol

from services.underwriter.domain.policy import LimitDecision, PolicySettings, Receivable
from services.underwriter.domain.reasons import Reason
from services.underwriter.domain.state import DAY, MerchantState


class Portfolio(Protocol):
    """Shared counters behind the portfolio caps (in-memory when embedded, a global Faust table in the worker)."""

    def remaining(self, day: int, category: str, currency: str, p: PolicySettings) -> int: ...

    def reserve(self, day: int, category: str, currency: str, amount: int) -> None: ...

    def release(self, category: str, currency: str, amount: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Action:
    kind: str  # credit_limit.updated | loan_offer.created | loan_offer.withdrawn
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Offer:
    offer_id: str
    amount: int
    fee: int
    apr: str
    due_at: int
    expires_at: int
    order_ids: tuple[str, ...]


def daily_fee_ppm(pd: float, p: PolicySettings) -> int:
    share = min(1.0, max(0.0, pd / p.fee_pd_ceiling))
    return round(p.fee_min_ppm_per_day + share * (p.fee_max_ppm_per_day - p.fee_min_ppm_per_day))


def price(amount: int, pd: float, days: int, p: PolicySettings) -> tuple[int, str]:
    """Flat fee in minor units (rounded up) and its APR as a 4-place decimal string."""
    ppm = daily_fee_ppm(pd, p)
    fee = -(-amount * ppm * days // 1_000_000)
    apr = (Decimal(fee) / Decimal(amount) * Decimal(365) / Decimal(days)).quantize(Decimal("0.0001"), ROUND_HALF_UP)
    return fee, str(apr)


def plan_offer(
    d: LimitDecision, amount: int, pd: float, as_of: int, p: PolicySettings, offer_id: str
) -> Offer:
    """Finance the receivables that settle soonest until their advance covers `amount`."""
    chosen: list[Receivable] = []
    covered = 0
    rate = max(d.advance_rate_bps, 1)
    for r in d.receivables:
        chosen.append(r)
        covered += r.amount * rate // 10_000
        if covered >= amount:
            break
    settle = max(r.expected_settlement for r in chosen)
    days = max(1, -(-(settle - as_of) // DAY))
    due = min(settle + p.grace_days * DAY, as_of + p.max_term_days * DAY)
    fee, apr = price(amount, pd, days, p)
    return Offer(offer_id, amount, fee, apr, due, as_of + p.offer_ttl_hours * 3600, tuple(r.order_id for r in chosen))


def _changed(old: int, new: int, p: PolicySettings) -> bool:
    diff = abs(new - old)
    return diff > 0 and (diff >= p.change_threshold_minor or diff * 10_000 >= p.change_threshold_bps * max(old, 1))


def limit_changed(state: MerchantState, d: LimitDecision, p: PolicySettings) -> bool:
    if not state.last:
        return True
    limit, available, codes = state.last
    return _changed(int(limit), d.limit, p) or _changed(int(available), d.available, p) or codes != d.codes


def decide_actions(
    state: MerchantState,
    d: LimitDecision,
    pd: float,
    as_of: int,
    p: PolicySettings,
    portfolio: Portfolio,
    make_id: Callable[[str], str],
) -> list[Action]:
    """Update `state` (last limit, open offer) and say what to emit, in order."""
    actions: list[Action] = []
    if limit_changed(state, d, p):
        state.last = [d.limit, d.available, d.codes]
        actions.append(Action("credit_limit.updated"))
    offer = state.offer
    if offer and offer[3] <= as_of:  # expired on its own: the disbursement service announces it
        portfolio.release(state.category, state.currency, int(offer[1]))
        state.offer = offer = []
    if offer:
        why = _withdraw_reason(state, d, p, as_of)
        if why is not None:
            actions.append(Action("loan_offer.withdrawn", {"offer_id": offer[0], "reasons": [why, *d.reasons][:20]}))
            portfolio.release(state.category, state.currency, int(offer[1]))
            state.offer = offer = []
    if offer or d.blocked or d.frozen or p.kill_switch or not d.receivables:
        return actions
    day = as_of // DAY
    room = portfolio.remaining(day, state.category, state.currency, p)
    amount = min(d.available, room)
    if amount < p.min_offer_minor:
        return actions
    new = plan_offer(d, amount, pd, as_of, p, make_id("offer"))
    portfolio.reserve(day, state.category, state.currency, new.amount)
    state.offer = [new.offer_id, new.amount, as_of, new.expires_at]
    actions.append(Action("loan_offer.created", {"offer": new}))
    return actions


def _withdraw_reason(state: MerchantState, d: LimitDecision, p: PolicySettings, as_of: int) -> Reason | None:
    amount, created = int(state.offer[1]), int(state.offer[2])
    if p.kill_switch:
        return Reason("KILL_SWITCH", "new advances are paused for all merchants")
    if d.frozen:
        return Reason("DELINQUENT", "an advance is past due")
    if d.blocked:
        return d.reasons[0] if d.reasons else Reason("BLOCKED", "merchant cannot take advances now")
    if d.available < amount:
        return Reason("LIMIT_REDUCED", "the available limit fell below the offered amount")
    if as_of - created >= p.offer_stale_hours * 3600:
        return Reason("STALE_OFFER", "replaced by a fresh offer")
    return None
