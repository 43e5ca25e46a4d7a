"""Ledger invariants under any sequence of disbursements, repayments, refunds, charge-offs and recoveries."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.money import Money
from services.disbursement.domain import ledger
from services.disbursement.domain.collections import OpenLoan, allocate
from services.disbursement.domain.ledger import Account, JournalEntry, JournalLine, Side, UnbalancedEntry
from services.disbursement.domain.loans import AllocationOrder

pytestmark = pytest.mark.unit
CURRENCIES = ("BRL", "JPY")

op = st.one_of(
    st.tuples(st.just("disburse"), st.sampled_from(CURRENCIES), st.integers(1, 10**9), st.integers(0, 10**7)),
    st.tuples(st.just("repay"), st.sampled_from(CURRENCIES), st.integers(0, 2 * 10**9), st.sampled_from(list(AllocationOrder))),
    st.tuples(st.just("charge_off"), st.integers(0, 50)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(op, max_size=40))
def test_any_sequence_keeps_entries_balanced_and_signs_valid(ops: list[tuple[object, ...]]) -> None:
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    entries: list[JournalEntry] = []
    loans: dict[str, OpenLoan] = {}
    lost: dict[str, Money] = {}  # charged off and not yet recovered
    for i, o in enumerate(ops):
        if o[0] == "disburse":
            _, cur, principal, fee = o
            lid = f"l{i}"
            p, f = Money(int(principal), str(cur)), Money(int(fee), str(cur))
            entries.append(ledger.disbursement(f"d{i}", lid, p, f))
            loans[lid] = OpenLoan(lid, t0 + timedelta(seconds=i), p, f, Money.zero(str(cur)))
        elif o[0] == "repay":
            _, cur, amount, order = o
            open_ = [ln for ln in loans.values() if ln.principal_due.currency == cur]
            alloc = allocate(Money(int(amount), str(cur)), open_, {}, order)  # type: ignore[arg-type]
            for lid, split in alloc.per_loan:
                entries.append(ledger.repayment(f"r{i}{lid}", lid, split.fee, split.principal))
                ln = loans[lid]
                loans[lid] = replace(ln, principal_due=ln.principal_due - split.principal, fee_due=ln.fee_due - split.fee)
            left = alloc.overpayment
            for lid in sorted(lost):  # beyond the open loans: recover what was written off first
                if left.is_zero() or lost[lid].is_zero() or lost[lid].currency != left.currency:
                    continue
                part = left.min(lost[lid])
                entries.append(ledger.recovery(f"rec{i}{lid}", lid, part))
                lost[lid], left = lost[lid] - part, left - part
            if left.amount:
                entries.append(ledger.overpayment(f"o{i}", left))
                entries.append(ledger.overpayment_returned(f"ret{i}", left))
        elif loans:
            lid = sorted(loans)[int(o[1]) % len(loans)]
            ln = loans.pop(lid)
            if not ln.remaining.is_zero():
                entries.append(ledger.charge_off(f"c{i}", lid, ln.principal_due, ln.fee_due))
                lost[lid] = ln.remaining
        for entry in entries[-3:]:
            ledger.validate_entry(entry)
        assert ledger.sign_violations(ledger.balances(entries)) == []
    bals = ledger.balances(entries)
    for cur in CURRENCIES:
        assert sum(v for (_, c), v in bals.items() if c == cur) == 0
        owed = sum(ln.remaining.amount for ln in loans.values() if ln.principal_due.currency == cur)
        receivable = bals.get((Account.LOAN_PRINCIPAL_RECEIVABLE, cur), 0) + bals.get((Account.FEE_RECEIVABLE, cur), 0)
        assert receivable == owed
        assert bals.get((Account.CHARGE_OFF_LOSS, cur), 0) == sum(v.amount for v in lost.values() if v.currency == cur)


def test_unbalanced_entry_rejected() -> None:
    entry = JournalEntry("e1", "test", None, (
        JournalLine(Account.FUNDING_CASH, Side.DEBIT, Money(100, "BRL")),
        JournalLine(Account.MERCHANT_PAYABLE, Side.CREDIT, Money(99, "BRL")),
    ))
    with pytest.raises(UnbalancedEntry, match="BRL: debits-credits=1"):
        ledger.validate_entry(entry)


def test_balanced_total_across_currencies_is_still_unbalanced() -> None:
    entry = JournalEntry("e2", "test", None, (
        JournalLine(Account.FUNDING_CASH, Side.DEBIT, Money(100, "BRL")),
        JournalLine(Account.MERCHANT_PAYABLE, Side.CREDIT, Money(100, "USD")),
    ))
    with pytest.raises(UnbalancedEntry):
        ledger.validate_entry(entry)


def test_zero_or_negative_line_rejected() -> None:
    entry = JournalEntry("e3", "test", None, (
        JournalLine(Account.FUNDING_CASH, Side.DEBIT, Money(-5, "BRL")),
        JournalLine(Account.MERCHANT_PAYABLE, Side.CREDIT, Money(-5, "BRL")),
    ))
    with pytest.raises(UnbalancedEntry, match="must be > 0"):
        ledger.validate_entry(entry)


def test_reversing_entry_cancels_the_original() -> None:
    original = ledger.disbursement("d1", "l1", Money(1000, "BRL"), Money(30, "BRL"))
    reversal = ledger.reversing_entry(original, "rev-d1")
    assert reversal.reverses == "d1"
    assert all(v == 0 for v in ledger.balances([original, reversal]).values())
    with pytest.raises(AttributeError):
        original.kind = "x"  # type: ignore[misc]
