"""The contract checker's fee rules: every offer, its due date capped at the longest term or not, keeps its fee
within the DESIGN band (about 0.03%-0.08% a day over the term) and discloses the APR of that fee over the days the
loan runs (DESIGN.md: The loan product)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from floatbridge.embedded import contract
from floatbridge.embedded.contract import Terms

pytestmark = pytest.mark.unit

T0 = datetime(2026, 6, 1, tzinfo=UTC)
AT = T0 + timedelta(days=40)
FEE_RULES = {"offer.fee", "offer.fee_band", "offer.apr_term"}


def rfc(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def inputs() -> list[dict[str, Any]]:
    return [{"specversion": "1.0", "id": "onb-1", "source": "test", "type": "merchant.onboarded", "subject": "m1",
             "time": rfc(T0), "data": {"category": "home", "country": "BR", "currency": "BRL"}}]


def offer(amount: int, fee: int, apr: str, due_days: int, pd: float = 0.0) -> dict[str, Any]:
    brl = lambda a: {"amount": a, "currency": "BRL"}  # noqa: E731
    return {"specversion": "1.0", "id": "ev-offer", "source": "floatbridge/underwriter", "type": "loan_offer.created",
            "subject": "m1", "topic": "loan.offers.v1", "time": rfc(AT),
            "data": {"offer_id": "of-1", "amount": brl(amount), "fee": brl(fee), "apr": apr, "pd": pd,
                     "due_at": rfc(AT + timedelta(days=due_days)), "expires_at": rfc(AT + timedelta(hours=24)),
                     "order_ids": ["o1"], "model_version": "v1", "trigger_event_id": "onb-1", "reasons": []}}


def fee_rules(event: dict[str, Any]) -> set[str]:
    return {v.rule for v in contract.check(inputs(), [event], Terms())} & FEE_RULES


def test_an_offer_due_at_the_longest_term_with_a_fee_of_ten_percent_breaks_the_fee_band_and_its_apr() -> None:
    # The old underwriter's pre-order offer: due in 60 days (capped), fee 10% priced over the ~325 days to the
    # pre-order's settlement, APR "0.1124" of that fee over those days (real: 0.61 over 60 days).
    assert fee_rules(offer(100_000, 10_000, "0.1123", 60)) == FEE_RULES


def test_an_offer_due_at_the_longest_term_priced_on_the_days_it_runs_keeps_the_fee_rules() -> None:
    t = Terms()
    for days in (t.max_term_days - t.grace_days, t.max_term_days - 1, t.max_term_days):
        fee, apr = contract._expected_fee(100_000, 0.0, days, t)
        assert fee_rules(offer(100_000, fee, apr, t.max_term_days)) == set(), days
    # Priced on one day more than the term: outside the days the loan runs.
    fee, apr = contract._expected_fee(100_000, 0.0, t.max_term_days + 1, t)
    assert "offer.apr_term" in fee_rules(offer(100_000, fee, apr, t.max_term_days))


def test_an_offer_due_before_the_cap_is_priced_exactly_on_its_days_to_settlement() -> None:
    t = Terms()
    fee, apr = contract._expected_fee(100_000, 0.05, 20 - t.grace_days, t)
    assert fee_rules(offer(100_000, fee, apr, 20, pd=0.05)) == set()
    assert "offer.fee" in fee_rules(offer(100_000, fee + 1, apr, 20, pd=0.05))
    # Its APR disclosed as if it ran a year: the fee is right, the APR is not that of the fee over its term.
    assert fee_rules(offer(100_000, fee, "0.0140", 20, pd=0.05)) == {"offer.fee", "offer.apr_term"}
    # A fee above 0.08% a day of the term, whatever PD it claims.
    assert "offer.fee_band" in fee_rules(offer(100_000, 100_000 * 900 * 20 // 1_000_000, apr, 20, pd=1.0))
