"""The acceptance rules: why an offer can or cannot become a loan right now."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from services.common.money import Money


class OfferState(StrEnum):
    OPEN = "open"
    ACCEPTED = "accepted"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"


# Refusals that hold only while the world stays as it is (the switch, the merchant's status, its loans, its
# limit): the same request may succeed later, so such an answer is never stored under an Idempotency-Key
# (a retry with the same key is decided again). Every other refusal is final for that offer.
TRANSIENT_REFUSALS = frozenset({"kill_switch", "merchant_inactive", "merchant_delinquent", "no_credit_limit",
                                "currency_mismatch", "limit_exceeded"})


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str
    message: str

    @property
    def final(self) -> bool:
        """True when no later retry of the same acceptance can succeed."""
        return self.code not in TRANSIENT_REFUSALS


@dataclass(frozen=True, slots=True)
class AcceptanceFacts:
    """Everything the decision needs, read in one transaction with the offer row locked."""

    offer_state: OfferState
    offer_amount: Money
    expires_at: datetime
    now: datetime
    kill_switch: bool
    merchant_status: str
    merchant_delinquent: bool
    available: Money | None  # latest available limit minus what was disbursed since; None = no limit yet
    # Orders of this offer that already back another open loan: one receivable never backs two loans.
    already_financed: tuple[str, ...] = ()
    # Currencies of the loans the merchant still owes: one currency at a time (collections speak one).
    owed_currencies: tuple[str, ...] = ()
    # Orders of this offer settled, cancelled, refunded or charged back since the offer was made.
    changed_receivables: tuple[str, ...] = ()
    # When the loan would be due: an offer still open after that (its receivables were late) would lend money
    # already past due on the day it is paid.
    due_at: datetime | None = None


def refusal(f: AcceptanceFacts) -> Refusal | None:
    """The first reason to refuse, or None when the offer may be accepted."""
    if f.kill_switch:
        return Refusal("kill_switch", "new loans are paused; please try again later")
    if f.offer_state is OfferState.ACCEPTED:
        return Refusal("offer_already_accepted", "this offer has already been accepted")
    if f.offer_state is OfferState.WITHDRAWN:
        return Refusal("offer_withdrawn", "this offer was withdrawn")
    if f.offer_state is OfferState.SUPERSEDED:
        return Refusal("offer_superseded", "a newer offer replaced this one")
    if f.offer_state is OfferState.EXPIRED or f.now >= f.expires_at:
        return Refusal("offer_expired", "this offer has expired")
    if f.due_at is not None and f.now >= f.due_at:
        return Refusal("offer_expired", "this offer's due date has passed; a fresh offer will follow")
    if f.merchant_status != "active":
        return Refusal("merchant_inactive", f"merchant status is {f.merchant_status}")
    if f.merchant_delinquent:
        return Refusal("merchant_delinquent", "a loan is past due; new loans resume once it is repaid")
    if f.available is None:
        return Refusal("no_credit_limit", "no credit limit is available for this merchant")
    if f.available.currency != f.offer_amount.currency:
        return Refusal("currency_mismatch", f"offer in {f.offer_amount.currency}, limit in {f.available.currency}")
    other = sorted(c for c in set(f.owed_currencies) if c != f.offer_amount.currency)
    if other:
        return Refusal("currency_mismatch", f"a loan in {', '.join(other)} is still owed; "
                                            f"offers in {f.offer_amount.currency} resume once it is repaid")
    if f.offer_amount.amount > f.available.amount:
        return Refusal(
            "limit_exceeded",
            f"offer amount {f.offer_amount} exceeds the available limit {f.available.clamp_floor_zero()}",
        )
    if f.already_financed:
        shown = ", ".join(f.already_financed[:5])
        return Refusal("receivables_already_financed",
                       f"{len(f.already_financed)} of this offer's orders already back another loan ({shown})")
    if f.changed_receivables:
        shown = ", ".join(f.changed_receivables[:5])
        return Refusal("receivables_changed",
                       f"{len(f.changed_receivables)} of this offer's orders were settled, cancelled, refunded or "
                       f"charged back since it was made ({shown}); a fresh offer will follow")
    return None
