"""Loan states and the split of a payment between fee and principal."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from services.common.money import Money


class LoanState(StrEnum):
    ACCEPTED = "accepted"
    DISBURSED = "disbursed"
    REPAYING = "repaying"
    REPAID = "repaid"
    DELINQUENT = "delinquent"
    CHARGED_OFF = "charged_off"
    CANCELLED = "cancelled"  # the rail refused the payout for good: never disbursed, nothing owed


OPEN_STATES = frozenset({LoanState.DISBURSED, LoanState.REPAYING, LoanState.DELINQUENT})

_TRANSITIONS: dict[LoanState, frozenset[LoanState]] = {
    LoanState.ACCEPTED: frozenset({LoanState.DISBURSED, LoanState.CANCELLED}),
    LoanState.DISBURSED: frozenset({LoanState.REPAYING, LoanState.REPAID, LoanState.DELINQUENT}),
    LoanState.REPAYING: frozenset({LoanState.REPAYING, LoanState.REPAID, LoanState.DELINQUENT}),
    LoanState.DELINQUENT: frozenset({LoanState.DELINQUENT, LoanState.REPAID, LoanState.CHARGED_OFF}),
    LoanState.REPAID: frozenset(),
    LoanState.CHARGED_OFF: frozenset(),
    LoanState.CANCELLED: frozenset(),
}


class IllegalTransition(ValueError):
    pass


def transition(current: LoanState, target: LoanState) -> LoanState:
    if target not in _TRANSITIONS[current]:
        raise IllegalTransition(f"loan cannot go from {current.value} to {target.value}")
    return target


class AllocationOrder(StrEnum):
    FEE_FIRST = "fee_first"
    PRINCIPAL_FIRST = "principal_first"


@dataclass(frozen=True, slots=True)
class Split:
    fee: Money
    principal: Money

    @property
    def total(self) -> Money:
        return self.fee + self.principal


def split_payment(available: Money, fee_due: Money, principal_due: Money, order: AllocationOrder) -> Split:
    """How much of `available` goes to fee and to principal; never more than what is due."""
    if available.amount < 0:
        raise ValueError("payment cannot be negative")
    if order is AllocationOrder.FEE_FIRST:
        fee = available.min(fee_due)
        principal = (available - fee).min(principal_due)
    else:
        principal = available.min(principal_due)
        fee = (available - principal).min(fee_due)
    return Split(fee, principal)
