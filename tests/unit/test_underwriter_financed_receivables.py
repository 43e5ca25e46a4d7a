"""A merchant with many open orders fills the bounded receivable table (MAX_RECEIVABLES): the orders a disbursed
loan financed stay in it while the loan is open. Evicting them would take money on its way out of the eligible
receivables (the limit counts financed orders: available = limit - outstanding would count the loan twice) and
drop the mark that keeps them from backing a second loan. Through the domain (MerchantState and the policy)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from services.underwriter.domain.policy import PolicySettings, eligible_receivables
from services.underwriter.domain.state import F_FINANCED, MAX_RECEIVABLES, R_FLAGS, MerchantState
from tests.unit.underwriter_helpers import START, brl, ev, order

pytestmark = pytest.mark.unit

T0 = START + timedelta(days=20)
FINANCED = [f"fin-{i}" for i in range(5)]


def disbursed(loan_id: str, order_ids: list[str], when: Any) -> dict[str, Any]:
    return ev("loan.disbursed", {
        "loan_id": loan_id, "offer_id": "of-" + loan_id, "principal": brl(20_000), "fee": brl(400),
        "due_at": (when + timedelta(days=20)).strftime("%Y-%m-%dT%H:%M:%SZ"), "payout_id": "po-" + loan_id,
        "order_ids": order_ids}, when, "disbursed-" + loan_id)


def merchant_with_a_loan_and_many_orders(extra: int) -> MerchantState:
    s = MerchantState("m1")
    s.apply(ev("merchant.onboarded", {"category": "toys", "country": "BR", "currency": "BRL"}, START, "onb"))
    for i, oid in enumerate(FINANCED):  # the oldest open orders: the ones an offer finances first
        for e in order(oid, 10_000, T0 + timedelta(minutes=i)):
            s.apply(e)
    s.apply(disbursed("ln1", FINANCED, T0 + timedelta(hours=2)))
    for i in range(extra):  # a busy merchant: many newer open orders, placed, paid and shipped
        for e in order(f"new-{i}", 5_000, T0 + timedelta(hours=3, minutes=i)):
            s.apply(e)
    return s


def test_a_merchant_with_many_orders_keeps_the_orders_its_open_loan_financed() -> None:
    s = merchant_with_a_loan_and_many_orders(MAX_RECEIVABLES + 40)
    assert len(s.receivables) == MAX_RECEIVABLES  # still bounded
    for oid in FINANCED:
        assert oid in s.receivables, f"{oid} financed by an open loan was evicted"
        assert s.receivables[oid][R_FLAGS] & F_FINANCED
    as_of = s.latest
    eligible = {r.order_id: r for r in eligible_receivables(s, as_of, PolicySettings())}
    assert all(eligible[oid].financed for oid in FINANCED), "the limit still counts them, marked financed"
    # A round trip through the saved form keeps them too.
    again = MerchantState.from_bytes(s.to_bytes())
    assert set(FINANCED) <= set(again.receivables)


def test_once_the_loan_is_repaid_its_orders_are_evicted_like_any_other_old_order() -> None:
    s = merchant_with_a_loan_and_many_orders(MAX_RECEIVABLES - len(FINANCED))
    assert set(FINANCED) <= set(s.receivables)
    when = T0 + timedelta(days=1)
    s.apply(ev("loan.repaid", {"loan_id": "ln1", "repaid_at": when.strftime("%Y-%m-%dT%H:%M:%SZ")}, when, "repaid"))
    assert not s.loans
    for e in order("late-0", 5_000, when + timedelta(minutes=1)):
        s.apply(e)
    assert len(s.receivables) == MAX_RECEIVABLES
    assert "fin-0" not in s.receivables, "with no loan open the oldest open order goes first, as before"
