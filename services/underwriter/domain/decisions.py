"""What to emit after a limit decision: limit updates, offers created and withdrawn (stdlib only).

Pure: it reads and updates the merchant's state (last emitted limit, open offer) and the portfolio port, and
returns plain `Action`s; the service turns them into CloudEvents with deterministic ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Protocol

from services.underwriter.domain.policy import (
    GUARD_CODES,
    KILL_SWITCH_REASON,
    LAST_OFFER_AT,
    LimitDecision,
    PolicySettings,
    Receivable,
    accepted_pending,
)
from services.underwriter.domain.reasons import Reason
from services.underwriter.domain.state import DAY, O_CAT, MerchantState, short_hash


class Portfolio(Protocol):
    """Shared counters behind the portfolio caps (in-memory when embedded, a global Faust table in the worker)."""

    def remaining(self, day: int, category: str, currency: str, p: PolicySettings) -> int: ...

    def reserve(self, day: int, category: str, currency: str, amount: int) -> None: ...

    def release(self, category: str, currency: str, amount: int) -> None: ...

    def unreserve(self, day: int, currency: str, amount: int) -> None: ...


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
        if r.financed:
            continue  # a receivable repays one loan only
        chosen.append(r)
        covered += r.amount * rate // 10_000
        if covered >= amount:
            break
    settle = max(r.expected_settlement for r in chosen)
    # Priced on the days the loan runs until its receivables settle, never past the longest term (the due date is
    # capped there; eligible receivables all settle by then, but the price must not depend on that).
    days = min(max(1, -(-(settle - as_of) // DAY)), p.max_term_days)
    due = min(settle + p.grace_days * DAY, as_of + p.max_term_days * DAY)
    fee, apr = price(amount, pd, days, p)
    return Offer(offer_id, amount, fee, apr, due, as_of + p.offer_ttl_hours * 3600, tuple(r.order_id for r in chosen))


def offer_category(state: MerchantState, offer: list[Any]) -> str:
    """The category an open offer's amount was reserved in (the merchant's current one for offers saved before
    offers remembered it): releasing it anywhere else would move exposure between categories."""
    return str(offer[O_CAT]) if len(offer) > O_CAT else state.category


def _changed(old: int, new: int, p: PolicySettings) -> bool:
    diff = abs(new - old)
    return diff > 0 and (diff >= p.change_threshold_minor or diff * 10_000 >= p.change_threshold_bps * max(old, 1))


def limit_changed(state: MerchantState, d: LimitDecision, p: PolicySettings) -> bool:
    if not state.last:
        return True
    limit, available, codes = state.last[:3]
    return _changed(int(limit), d.limit, p) or _changed(int(available), d.available, p) or codes != d.codes


def _last_offer(state: MerchantState) -> list[Any]:
    return list(state.last[LAST_OFFER_AT:]) if len(state.last) > LAST_OFFER_AT else []


def _set_last(state: MerchantState, d: LimitDecision | None, offer: list[Any]) -> None:
    head = [d.limit, d.available, d.codes] if d is not None else list(state.last[:LAST_OFFER_AT])
    state.last = head + offer


def _track_acceptance(state: MerchantState, pending: int) -> None:
    """Forget a resolved acceptance; on first noticing one, remember which loans existed then."""
    rec = _last_offer(state)
    if not rec or (state.offer and state.offer[0] == rec[0]):
        return
    if pending == 0:
        _set_last(state, None, [])
    elif len(rec) == 4:
        _set_last(state, None, rec + [sorted(short_hash(k) for k in state.loans)])


def decide_actions(
    state: MerchantState,
    d: LimitDecision,
    pd: float,
    as_of: int,
    p: PolicySettings,
    portfolio: Portfolio,
    make_id: Callable[[str], str],
) -> list[Action]:
    """Update `state` (last limit, open offer) and say what to emit, in order.

    An open offer is left alone unless a real risk signal appears (withdrawn) or it is stale (replaced: the
    disbursement service supersedes it when the new one arrives). Whenever an offer is created, the limit it
    rests on is emitted just before it, so the latest credit_limit.updated always covers the offer.
    """
    actions: list[Action] = []
    p = p.for_currency(state.currency) or p  # the smallest offer and the portfolio caps of the merchant's currency
    offer = state.offer
    if offer and int(offer[3]) <= as_of:  # expired on its own: the disbursement service announces it
        _free(state, offer, portfolio)
        state.offer = offer = []
        _set_last(state, None, [])
    pending = accepted_pending(state)
    _track_acceptance(state, pending)
    spendable = d.available  # net of an accepted offer whose loan is not booked yet
    withdrawn: list[Action] = []
    if offer:
        why = _withdraw_reason(state, d, p, spendable)
        if why is not None:
            reasons = [why, *(r for r in d.reasons if r.code != why.code)][:20]  # each reason named once
            withdrawn.append(Action("loan_offer.withdrawn", {"offer_id": offer[0], "reasons": reasons}))
            _free(state, offer, portfolio)
            state.offer = offer = []
            _set_last(state, None, [])
    new = None
    # While an accepted offer's loan is not booked, its orders are not yet marked financed: a new offer now could
    # pick the same orders and finance them twice, so none is made until the loan arrives (or the acceptance lapses).
    if not (d.blocked or d.frozen or p.kill_switch or pending or all(r.financed for r in d.receivables)):
        new = _new_offer(state, d, pd, as_of, p, portfolio, make_id, spendable)
    if new is not None or limit_changed(state, d, p):
        _set_last(state, d, _last_offer(state))
        actions.append(Action("credit_limit.updated"))
    actions.extend(withdrawn)
    if new is not None:
        day = as_of // DAY
        if offer:  # replaced: free what the old one held, where it held it
            _free(state, offer, portfolio)
        portfolio.reserve(day, state.category, state.currency, new.amount)
        guards = ",".join(r.code for r in d.reasons if r.code in GUARD_CODES)
        state.offer = [new.offer_id, new.amount, as_of, new.expires_at, guards, state.category]
        _set_last(state, None, state.offer[:4])
        actions.append(Action("loan_offer.created", {"offer": new}))
    return actions


def kill_switch_withdrawal(state: MerchantState, as_of: int, p: PolicySettings, portfolio: Portfolio) -> list[Action]:
    """With the kill switch on, withdraw the merchant's open offer now, without waiting for its next decision
    (a merchant that sends no event would otherwise keep an offer it can accept until it expires). Needs no score:
    the withdrawal names only the offer and KILL_SWITCH. An offer expired by `as_of` is dropped as
    `decide_actions` drops it (the disbursement service announces the expiry). Frees what the offer held in the
    portfolio; [] when the switch is off or no offer is open. The state changes as `decide_actions` would change it
    (a later decision withdraws nothing twice)."""
    offer = state.offer
    if not p.kill_switch or not offer:
        return []
    _free(state, offer, portfolio)
    state.offer = []
    _set_last(state, None, [])
    if int(offer[3]) <= as_of:
        return []
    return [Action("loan_offer.withdrawn", {"offer_id": offer[0], "reasons": [KILL_SWITCH_REASON]})]


def _free(state: MerchantState, offer: list[Any], portfolio: Portfolio) -> None:
    """An offer ended without being accepted (expired, withdrawn or replaced): it frees the category exposure it
    held and its amount in the origination budget of the day it was made, since nothing was originated."""
    portfolio.release(offer_category(state, offer), state.currency, int(offer[1]))
    portfolio.unreserve(int(offer[2]) // DAY, state.currency, int(offer[1]))


def _new_offer(
    state: MerchantState, d: LimitDecision, pd: float, as_of: int, p: PolicySettings, portfolio: Portfolio,
    make_id: Callable[[str], str], spendable: int,
) -> Offer | None:
    """A fresh offer when there is none open, or when the open one is stale (about to expire, or the merchant
    can now borrow materially more); None otherwise."""
    held = int(state.offer[1]) if state.offer else 0
    # What the open offer holds frees room for its replacement only where it holds it: in its category, and in
    # today's origination budget only when it was made today (one made on an earlier day counted against that
    # day's budget: its replacement is a new origination today and must fit today's).
    frees = bool(state.offer) and offer_category(state, state.offer) == state.category \
        and int(state.offer[2]) // DAY == as_of // DAY
    room = portfolio.remaining(as_of // DAY, state.category, state.currency, p) + (held if frees else 0)
    unfinanced = sum(r.amount for r in d.receivables if not r.financed) * max(d.advance_rate_bps, 0) // 10_000
    amount = min(spendable * p.offer_share_bps // 10_000, room, unfinanced)
    if amount < p.min_offer_minor:
        return None
    if state.offer:
        expiring = int(state.offer[3]) - as_of <= p.offer_refresh_hours * 3600
        # An offer made while a risk guard fired is not raised as soon as that guard goes quiet, only when it is
        # due for refresh: a guard hovering around its threshold would otherwise raise the offer and withdraw it
        # again (LIMIT_REDUCED or the guard) every time it flips.
        quiet = _guard_codes(state.offer) - {r.code for r in d.reasons}
        grew = not quiet and amount - held >= p.offer_growth_min_minor \
            and (amount - held) * 10_000 >= p.offer_growth_bps * held
        if not (expiring or grew):
            return None
    return plan_offer(d, amount, pd, as_of, p, make_id("offer"))


def _guard_codes(offer: list[Any]) -> set[str]:
    """The guards that fired when the offer was made (state.offer[4], codes joined by ",")."""
    return set(filter(None, str(offer[4]).split(","))) if len(offer) > 4 else set()


def _withdraw_reason(state: MerchantState, d: LimitDecision, p: PolicySettings, spendable: int) -> Reason | None:
    amount = int(state.offer[1])
    if p.kill_switch:
        return KILL_SWITCH_REASON
    if d.frozen:
        return Reason("DELINQUENT", "an advance is past due")
    if d.blocked:
        return d.reasons[0] if d.reasons else Reason("BLOCKED", "merchant cannot take advances now")
    known = _guard_codes(state.offer)
    for r in d.reasons:
        if r.code in GUARD_CODES and r.code not in known:
            return r  # a manipulation or risk guard fired since the offer was made: name it first
    if spendable < amount:
        return Reason("LIMIT_REDUCED", "the available limit fell below the offered amount")
    return None
