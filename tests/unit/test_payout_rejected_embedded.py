"""The embedded engine counts cancelled loans; its contract check refuses a cancellation of no accepted loan."""

from __future__ import annotations

from datetime import UTC, datetime

from floatbridge.embedded.contract import check
from floatbridge.embedded.engine import Tally
from schemas import topics
from schemas.codec import new_event

T = datetime(2025, 3, 1, 12, tzinfo=UTC)


def _cancelled(loan_id: str = "ln_1", offer_id: str = "of1") -> dict:
    return new_event("loan.cancelled", "m1", {"loan_id": loan_id, "offer_id": offer_id, "reason": "payout_rejected"},
                     T, "urn:floatbridge:disbursement", id="evt-can-1")


def test_the_tally_counts_a_cancelled_loan_and_lends_nothing_for_it() -> None:
    tally = Tally()
    tally.watch(topics.LOANS, _cancelled())
    assert (tally.cancelled, tally.accepted, tally.disbursed, tally.outstanding("BRL")) == (1, 0, 0, 0)


def test_the_contract_refuses_a_cancellation_of_a_loan_never_accepted() -> None:
    inputs = [new_event("merchant.onboarded", "m1", {"category": "toys", "country": "BR", "currency": "BRL"}, T,
                        "urn:test", id="evt-on-1")]
    rules = {v.rule for v in check(inputs, [{**_cancelled(), "topic": "loans.v1"}])}
    assert "loan.cancelled_unknown" in rules
