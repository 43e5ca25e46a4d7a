"""How one settlement's withheld money is shared between a merchant's open loans (pure domain)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.money import Money
from services.disbursement.domain.collections import OpenLoan, allocate
from services.disbursement.domain.loans import AllocationOrder

pytestmark = pytest.mark.unit
T0 = datetime(2025, 3, 1, tzinfo=UTC)


def brl(amount: int) -> Money:
    return Money(amount, "BRL")


def loan(loan_id: str, hours: int, principal: int, fee: int = 0) -> OpenLoan:
    return OpenLoan(loan_id, T0 + timedelta(hours=hours), brl(principal), brl(fee), brl(principal + fee))


def paid(alloc) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {lid: split.total.amount for lid, split in alloc.per_loan}


def test_younger_loans_own_receivables_repay_it_even_when_an_older_loan_is_also_paid_for() -> None:
    older, younger = loan("A", 0, 10_000), loan("B", 1, 10_000)
    alloc = allocate(brl(10_000), [older, younger], {"A": brl(3_000), "B": brl(10_000)}, AllocationOrder.FEE_FIRST)
    assert paid(alloc) == {"A": 3_000, "B": 7_000}
    assert alloc.overpayment.is_zero()


def test_money_left_after_the_earmarks_repays_oldest_first_in_one_split_per_loan() -> None:
    older, younger = loan("A", 0, 10_000, fee=500), loan("B", 1, 10_000)
    alloc = allocate(brl(15_000), [younger, older], {"A": brl(3_000), "B": brl(10_000)}, AllocationOrder.FEE_FIRST)
    assert paid(alloc) == {"A": 5_000, "B": 10_000}
    split_a = dict(alloc.per_loan)["A"]
    assert (split_a.fee.amount, split_a.principal.amount) == (500, 4_500)


def test_settlement_without_financed_orders_repays_oldest_first_and_overpays_the_rest() -> None:
    alloc = allocate(brl(25_000), [loan("B", 1, 10_000), loan("A", 0, 10_000)], {}, AllocationOrder.FEE_FIRST)
    assert [lid for lid, _ in alloc.per_loan] == ["A", "B"]
    assert alloc.overpayment.amount == 5_000


def test_earmark_larger_than_the_loan_owes_spills_to_the_other_loans() -> None:
    alloc = allocate(brl(9_000), [loan("A", 0, 5_000), loan("B", 1, 2_000)], {"B": brl(9_000)},
                     AllocationOrder.PRINCIPAL_FIRST)
    assert paid(alloc) == {"B": 2_000, "A": 5_000}
    assert alloc.overpayment.amount == 2_000


loans_st = st.lists(st.tuples(st.integers(0, 50_000), st.integers(0, 2_000), st.integers(0, 20_000)),
                    min_size=0, max_size=5)


@settings(max_examples=300, deadline=None)
@given(loans_st, st.integers(0, 150_000), st.sampled_from(list(AllocationOrder)))
def test_allocation_conserves_money_never_overpays_a_loan_and_honours_earmarks(
        specs: list[tuple[int, int, int]], withheld: int, order: AllocationOrder) -> None:
    loans = [loan(f"L{i}", i, p, f) for i, (p, f, _) in enumerate(specs)]
    marks = {f"L{i}": brl(m) for i, (_, _, m) in enumerate(specs) if m}
    alloc = allocate(brl(withheld), loans, marks, order)
    got = paid(alloc)
    assert len(got) == len(alloc.per_loan)  # one split per loan
    assert sum(got.values()) + alloc.overpayment.amount == withheld
    assert alloc.overpayment.amount >= 0
    owed = {ln.loan_id: ln.remaining.amount for ln in loans}
    assert all(0 < got[lid] <= owed[lid] for lid in got)
    if alloc.overpayment.amount:
        assert all(got.get(lid, 0) == owed[lid] for lid in owed)
    # Earmarks are served before anything else, oldest loan first.
    budget = withheld
    for ln in loans:
        want = min(marks[ln.loan_id].amount, owed[ln.loan_id], budget) if ln.loan_id in marks else 0
        assert got.get(ln.loan_id, 0) >= want
        budget -= want
