"""Collections: what a merchant owes, the withhold rate, and how a settlement repays loans."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def instruction(loans: Sequence[OpenLoan], currency: str, base_bps: int, shortfall_bps: int,
                written_off: Sequence[tuple[str, Money]] = ()) -> Instruction:
    """Base withhold rate while anything is owed; the higher rate once the financed receivables no longer
    cover the balance (a financed order was refunded or cancelled).

    `written_off`: (loan id, amount still unrecovered) of the merchant's charged-off loans, oldest first. A
    charge-off is the lender's accounting, not a release: the merchant still owes that money, so it stays in
    `owed` (money withheld for it is booked as a recovery) and, as no receivable covers it any more, it is
    collected at the shortfall rate. Those loans follow the open ones in `loan_ids`."""
    owed = Money.zero(currency)
    covered = Money.zero(currency)
    for loan in loans:
        owed = owed + loan.remaining
        covered = covered + loan.expected_receivables.min(loan.remaining)
    lost = [(loan_id, amount) for loan_id, amount in written_off if amount.amount > 0]
    for _loan_id, amount in lost:
        owed = owed + amount
    if owed.is_zero():
        return Instruction(owed, 0, ())
    rate = shortfall_bps if covered < owed else base_bps
    ids = tuple(ln.loan_id for ln in sorted(loans, key=lambda ln: (ln.opened_at, ln.loan_id)) if not ln.remaining.is_zero())
    return Instruction(owed, rate, ids + tuple(loan_id for loan_id, _ in lost if loan_id not in ids))


def repayable_by(loans: Sequence[OpenLoan], settled_at: datetime) -> list[OpenLoan]:
    """The loans a settlement's withheld money may repay: those disbursed at or before the settlement's time.

    The marketplace withholds because collections.v1 asks it to, and a settlement answers the instruction in force
    at its own time. An instruction naming a loan is published when the loan is disbursed, so a settlement dated
    before a loan's disbursement (arriving late, or back-dated) was withheld for the loans of its time only, never
    for that loan: applying it there would repay the loan "before it existed" (a repayment, a `loan.repaid` and a
    journal entry dated before the payout), and would shrink what the marketplace is asked for behind its back.
    What no loan of its time takes is the merchant's, like any withholding with no loan to repay (recovery of a
    write-off of its time first, else merchant payable and an overpayment refund); the younger loan stays owed
    and is collected under its own instruction. A marketplace that dates settlements earlier than it computes
    them (e.g. by business day) loses nothing by this: the money goes back to the merchant and the loan keeps
    being collected. (Stamping the repayment at max(settlement time, disbursed_at) instead would spend money
    withheld under an instruction that did not name the loan, and make the answer depend on arrival order.)"""
    return [ln for ln in loans if ln.opened_at is not None and ln.opened_at <= settled_at]


@dataclass(frozen=True, slots=True)
class Allocation:
    per_loan: tuple[tuple[str, Split], ...]
    overpayment: Money


def allocate(withheld: Money, loans: Sequence[OpenLoan], earmarks: Mapping[str, Money],
             order: AllocationOrder) -> Allocation:
    """Repay from one settlement's withheld money.

    Each loan first takes what its own financed orders paid in this settlement (`earmarks`, up to what it
    owes), so an older loan never takes the payout of a younger loan's receivables; what is left repays
    loans oldest first; the rest is an overpayment. One split per loan.
    """
    ranked = sorted(loans, key=lambda ln: (ln.opened_at, ln.loan_id))
    dues = {ln.loan_id: (ln.fee_due, ln.principal_due) for ln in ranked}
    paid: dict[str, Split] = {}
    left = withheld

    def pay(loan_id: str, cap: Money) -> None:
        nonlocal left
        fee_due, principal_due = dues[loan_id]
        split = split_payment(left.min(cap), fee_due, principal_due, order)
        if split.total.is_zero():
            return
        dues[loan_id] = (fee_due - split.fee, principal_due - split.principal)
        before = paid.get(loan_id)
        paid[loan_id] = split if before is None else Split(before.fee + split.fee, before.principal + split.principal)
        left = left - split.total

    for loan in ranked:
        mark = earmarks.get(loan.loan_id)
        if mark is not None and mark.currency == withheld.currency and mark.amount > 0:
            pay(loan.loan_id, mark)
    for loan in ranked:
        if left.is_zero():
            break
        pay(loan.loan_id, left)
    return Allocation(tuple(paid.items()), left)


def financed_shares(owed: int, order_ids: Sequence[str], amounts: Mapping[str, int]) -> dict[str, int]:
    """What each financed order of a loan is expected to bring back towards it (financed_orders.expected).

    With every order's own amount known: what is owed split in proportion to those amounts (largest remainder,
    ties to the earlier order), so no order is expected to bring more than itself. A refund then takes its amount
    off its own order's share, and a refund of the whole order (at once or in parts) always closes it, like a
    cancellation. When the orders are worth less than what is owed, each is expected to bring its whole amount
    and the rest is uncovered from the start (collected at the shortfall rate). With any amount unknown: an equal
    split, the first order taking the remainder (a full refund of a small order may then leave part of its share
    open)."""
    if not order_ids:
        return {}
    if any(amounts.get(oid) is None for oid in order_ids):
        share, rest = divmod(owed, len(order_ids))
        return {oid: share + (rest if i == 0 else 0) for i, oid in enumerate(order_ids)}
    total = sum(amounts[oid] for oid in order_ids)
    if total <= owed:
        return {oid: amounts[oid] for oid in order_ids}
    out = {oid: owed * amounts[oid] // total for oid in order_ids}
    left = owed - sum(out.values())
    ranked = sorted(range(len(order_ids)), key=lambda i: (-(owed * amounts[order_ids[i]] % total), i))
    for i in ranked[:left]:
        out[order_ids[i]] += 1
    return out
