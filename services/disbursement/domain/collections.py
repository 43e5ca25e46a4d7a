"""Collections: what a merchant owes, the withhold rate, and how a settlement repays loans."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from services.common.money import Money
from services.disbursement.domain.loans import AllocationOrder, Split, split_payment


@dataclass(frozen=True, slots=True)
class OpenLoan:
    loan_id: str
    opened_at: datetime  # age order: earlier is older
    principal_due: Money
    fee_due: Money
    expected_receivables: Money  # financed orders still expected to settle

    @property
    def remaining(self) -> Money:
        return self.principal_due + self.fee_due


@dataclass(frozen=True, slots=True)
class Instruction:
    owed: Money
    withhold_rate_bps: int
    loan_ids: tuple[str, ...]


def instruction(loans: Sequence[OpenLoan], currency: str, base_bps: int, shortfall_bps: int) -> Instruction:
    """Base withhold rate while anything is owed; the higher rate once the financed receivables no longer
    cover the balance (a financed order was refunded or cancelled)."""
    owed = Money.zero(currency)
    covered = Money.zero(currency)
    for loan in loans:
        owed = owed + loan.remaining
        covered = covered + loan.expected_receivables.min(loan.remaining)
    if owed.is_zero():
        return Instruction(owed, 0, ())
    rate = shortfall_bps if covered < owed else base_bps
    ids = tuple(ln.loan_id for ln in sorted(loans, key=lambda ln: (ln.opened_at, ln.loan_id)) if not ln.remaining.is_zero())
    return Instruction(owed, rate, ids)


@dataclass(frozen=True, slots=True)
class Allocation:
    per_loan: tuple[tuple[str, Split], ...]
    overpayment: Money


def allocate(withheld: Money, loans: Sequence[OpenLoan], priority_ids: frozenset[str],
             order: AllocationOrder) -> Allocation:
    """Loans whose financed orders are in this settlement first, then oldest first; the rest is overpaid."""
    ranked = sorted(loans, key=lambda ln: (ln.loan_id not in priority_ids, ln.opened_at, ln.loan_id))
    left = withheld
    out: list[tuple[str, Split]] = []
    for loan in ranked:
        if left.is_zero():
            break
        split = split_payment(left, loan.fee_due, loan.principal_due, order)
        if not split.total.is_zero():
            out.append((loan.loan_id, split))
            left = left - split.total
    return Allocation(tuple(out), left)
