"""Double-entry journal rules: immutable entries in integer minor units that must balance per currency."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from services.common.money import Money


class Account(StrEnum):
    LOAN_PRINCIPAL_RECEIVABLE = "loan_principal_receivable"
    FEE_RECEIVABLE = "fee_receivable"
    FEE_INCOME = "fee_income"
    FUNDING_CASH = "funding_cash"
    MERCHANT_PAYABLE = "merchant_payable"
    CHARGE_OFF_LOSS = "charge_off_loss"


class Side(StrEnum):
    DEBIT = "D"
    CREDIT = "C"


# Allowed sign of each account's balance measured as debits minus credits.
# +1: never below zero (debit-normal), -1: never above zero (credit-normal), 0: either sign.
NORMAL_SIGN: dict[Account, int] = {
    Account.LOAN_PRINCIPAL_RECEIVABLE: 1,
    Account.FEE_RECEIVABLE: 1,
    Account.FEE_INCOME: -1,
    Account.FUNDING_CASH: 0,  # the funding line is drawn (negative) and refilled (positive)
    Account.MERCHANT_PAYABLE: -1,
    Account.CHARGE_OFF_LOSS: 1,
}


class UnbalancedEntry(ValueError):
    """An entry whose debits and credits differ for some currency, or that is malformed."""


@dataclass(frozen=True, slots=True)
class JournalLine:
    account: Account
    side: Side
    amount: Money


@dataclass(frozen=True, slots=True)
class JournalEntry:
    entry_id: str
    kind: str
    loan_id: str | None
    lines: tuple[JournalLine, ...]
    reverses: str | None = None


def validate_entry(entry: JournalEntry) -> JournalEntry:
    """Raise UnbalancedEntry unless every line is positive and debits equal credits per currency."""
    if len(entry.lines) < 2:
        raise UnbalancedEntry(f"entry {entry.entry_id}: needs at least two lines, has {len(entry.lines)}")
    totals: dict[str, int] = {}
    for i, line in enumerate(entry.lines):
        if not isinstance(line.account, Account) or not isinstance(line.side, Side):
            raise UnbalancedEntry(f"entry {entry.entry_id} line {i}: unknown account or side")
        if line.amount.amount <= 0:
            raise UnbalancedEntry(f"entry {entry.entry_id} line {i}: amount must be > 0, got {line.amount.amount}")
        sign = 1 if line.side is Side.DEBIT else -1
        totals[line.amount.currency] = totals.get(line.amount.currency, 0) + sign * line.amount.amount
    bad = {cur: diff for cur, diff in totals.items() if diff != 0}
    if bad:
        detail = ", ".join(f"{cur}: debits-credits={diff}" for cur, diff in sorted(bad.items()))
        raise UnbalancedEntry(f"entry {entry.entry_id} does not balance ({detail})")
    return entry


def make_entry(entry_id: str, kind: str, loan_id: str | None,
               lines: Iterable[tuple[Account, Side, Money]]) -> JournalEntry:
    """Build and validate an entry, dropping zero-amount lines (e.g. a loan without a fee)."""
    kept = tuple(JournalLine(a, s, m) for a, s, m in lines if m.amount != 0)
    return validate_entry(JournalEntry(entry_id, kind, loan_id, kept))


def reversing_entry(entry: JournalEntry, entry_id: str) -> JournalEntry:
    """The correction of a posted entry: the same lines with sides swapped."""
    flipped = tuple(
        JournalLine(ln.account, Side.CREDIT if ln.side is Side.DEBIT else Side.DEBIT, ln.amount) for ln in entry.lines
    )
    return validate_entry(JournalEntry(entry_id, f"reversal:{entry.kind}", entry.loan_id, flipped, entry.entry_id))


def disbursement(entry_id: str, loan_id: str, principal: Money, fee: Money) -> JournalEntry:
    """At acceptance: the merchant owes principal and fee, and until the payout sends it Floatbridge owes the
    merchant the principal (a payable, not cash: a payout that fails or is still retrying has moved no money).
    Fee income is recognised here against a fee receivable (kept simple on purpose)."""
    return make_entry(entry_id, "disbursement", loan_id, [
        (Account.LOAN_PRINCIPAL_RECEIVABLE, Side.DEBIT, principal),
        (Account.MERCHANT_PAYABLE, Side.CREDIT, principal),
        (Account.FEE_RECEIVABLE, Side.DEBIT, fee),
        (Account.FEE_INCOME, Side.CREDIT, fee),
    ])


def payout(entry_id: str, loan_id: str, principal: Money) -> JournalEntry:
    """The payout rail sent the principal: the payable to the merchant is settled in cash."""
    return make_entry(entry_id, "payout", loan_id, [
        (Account.MERCHANT_PAYABLE, Side.DEBIT, principal),
        (Account.FUNDING_CASH, Side.CREDIT, principal),
    ])


def repayment(entry_id: str, loan_id: str, fee_part: Money, principal_part: Money) -> JournalEntry:
    total = fee_part + principal_part
    return make_entry(entry_id, "repayment", loan_id, [
        (Account.FUNDING_CASH, Side.DEBIT, total),
        (Account.FEE_RECEIVABLE, Side.CREDIT, fee_part),
        (Account.LOAN_PRINCIPAL_RECEIVABLE, Side.CREDIT, principal_part),
    ])


def overpayment(entry_id: str, amount: Money) -> JournalEntry:
    """Money received beyond what is owed is the merchant's: a payable, never income."""
    return make_entry(entry_id, "overpayment", None, [
        (Account.FUNDING_CASH, Side.DEBIT, amount),
        (Account.MERCHANT_PAYABLE, Side.CREDIT, amount),
    ])


def overpayment_returned(entry_id: str, amount: Money) -> JournalEntry:
    return make_entry(entry_id, "overpayment_returned", None, [
        (Account.MERCHANT_PAYABLE, Side.DEBIT, amount),
        (Account.FUNDING_CASH, Side.CREDIT, amount),
    ])


def charge_off(entry_id: str, loan_id: str, principal_left: Money, fee_left: Money) -> JournalEntry:
    return make_entry(entry_id, "charge_off", loan_id, [
        (Account.CHARGE_OFF_LOSS, Side.DEBIT, principal_left + fee_left),
        (Account.LOAN_PRINCIPAL_RECEIVABLE, Side.CREDIT, principal_left),
        (Account.FEE_RECEIVABLE, Side.CREDIT, fee_left),
    ])


def recovery(entry_id: str, loan_id: str, amount: Money) -> JournalEntry:
    """Money received for a loan already charged off: it reduces the loss (never more than was written off)."""
    return make_entry(entry_id, "recovery", loan_id, [
        (Account.FUNDING_CASH, Side.DEBIT, amount),
        (Account.CHARGE_OFF_LOSS, Side.CREDIT, amount),
    ])


def balances(entries: Iterable[JournalEntry]) -> dict[tuple[Account, str], int]:
    """Debits minus credits per (account, currency)."""
    out: dict[tuple[Account, str], int] = {}
    for entry in entries:
        for ln in entry.lines:
            key = (ln.account, ln.amount.currency)
            out[key] = out.get(key, 0) + (ln.amount.amount if ln.side is Side.DEBIT else -ln.amount.amount)
    return out


def sign_violations(bals: Mapping[tuple[Account, str], int]) -> list[str]:
    """Accounts whose balance has the wrong sign for their kind (empty when all is well)."""
    bad = []
    for (account, cur), value in bals.items():
        normal = NORMAL_SIGN[account]
        if (normal == 1 and value < 0) or (normal == -1 and value > 0):
            bad.append(f"{account.value} {cur} balance {value} has the wrong sign")
    return bad
