"""Backtest collections: the simulated settlement system honours collection.instruction, and a healthy merchant's
advances are repaid by the payouts of the orders they financed, on time."""

from __future__ import annotations

from collections import Counter

import pytest

from floatbridge.modeling import backtest
from floatbridge.simulator import SimConfig, simulate
from services.underwriter.domain.scoring import FixedScorer

pytestmark = pytest.mark.unit


def _payout(orders: dict[str, int], fee_bps: int = 500) -> dict:
    gross = sum(orders.values())
    return {"gross": {"amount": gross, "currency": "BRL"}, "fees": {"amount": gross * fee_bps // 10_000, "currency": "BRL"},
            "orders": [{"order_id": k, "amount": {"amount": v, "currency": "BRL"}} for k, v in orders.items()]}


def test_settlement_system_withholds_financed_orders_payouts_in_full_and_the_rest_at_the_rate():
    data = _payout({"o1": 6_000, "o2": 4_000})  # net 9,500
    # o1 is financed: its net (6,000 x 0.95 = 5,700) in full, then 20% of the other 3,800 = 760.
    assert backtest.withhold_amount(data, 100_000, 2_000, frozenset({"o1"})) == 5_700 + 760
    # Never more than owed, never more than the net.
    assert backtest.withhold_amount(data, 1_000, 2_000, frozenset({"o1"})) == 1_000
    assert backtest.withhold_amount(data, 100_000, 10_000, frozenset()) == 9_500
    # No financed order in the payout: the rate alone.
    assert backtest.withhold_amount(data, 100_000, 2_000, frozenset({"o9"})) == 1_900


@pytest.fixture(scope="module")
def steady_run() -> backtest.Outcome:
    events = list(simulate(SimConfig(merchants=4, days=90, seed=5, mix={"steady": 1.0})))
    return backtest.run(events, None, "unused", scorer=FixedScorer(0.01))


def test_a_healthy_merchants_orders_back_one_advance_each(steady_run):
    # Offers are accepted as a merchant would, the latest shown once the cores have read what happened at that
    # instant; and the underwriter makes no new offer between an acceptance and its loan.
    loans = steady_run.loans
    assert len(loans) >= 20
    uses = Counter(oid for loan in loans.values() for oid in loan["order_ids"])
    assert uses and max(uses.values()) == 1, uses.most_common(3)


def test_healthy_merchants_advances_are_repaid_by_their_financed_orders_before_they_fall_due(steady_run):
    loans = list(steady_run.loans.values())
    resolved = [ln for ln in loans if ln["state"] != "open"]
    past_due = [ln for ln in loans if ln["delinquent"]]
    assert len(resolved) >= 20 and all(ln["state"] == "repaid" for ln in resolved)
    assert len(past_due) <= 0.1 * len(loans), (len(past_due), len(loans))
    summary = backtest.summarise(steady_run)["all"]
    assert summary["loans_past_due"] == len(past_due)
