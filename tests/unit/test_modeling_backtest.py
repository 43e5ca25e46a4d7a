"""Backtest measures: approval per eligible decision point, brushing limit growth while placed GMV triples."""

from __future__ import annotations

import pytest

from floatbridge.modeling import backtest
from floatbridge.simulator import SimConfig, simulate
from services.underwriter.domain.scoring import FixedScorer

pytestmark = pytest.mark.unit

DAY = backtest.DAY


@pytest.fixture(scope="module")
def sample() -> list[dict]:
    return list(simulate(SimConfig(merchants=6, days=45, seed=2, mix={"steady": 1.0})))


def test_approval_rate_counts_eligible_merchant_days_not_merchants(sample):
    out = backtest.run(sample, None, "unused", scorer=FixedScorer(0.01))
    summary = backtest.summarise(out)["all"]
    # Minimum history (14 days' tenure, 5 settled orders) keeps the first days out of the decision points.
    assert 0 < summary["points"] < 6 * 45
    assert 0 < summary["points_offered"] <= summary["points"]
    assert summary["approval_rate"] == summary["points_offered"] / summary["points"]
    assert summary["merchants_offered_rate"] == summary["offered"] / summary["eligible"] > 0
    assert summary["approval_rate"] < summary["merchants_offered_rate"]


def test_a_model_that_refuses_everyone_has_eligible_points_but_zero_approval(sample):
    summary = backtest.summarise(backtest.run(sample, None, "unused", scorer=FixedScorer(0.99)))["all"]
    assert summary["points"] > 0
    assert summary["points_offered"] == 0 and summary["approval_rate"] == 0.0 and summary["offered"] == 0


def test_brushing_limit_growth_is_measured_until_placed_gmv_triples():
    c = 100
    placed = {d: 1_000 for d in range(c - 30, c)} | {d: 5_000 for d in range(c, c + 60)}
    limits = [((c - 40) * DAY, 10_000), ((c + 3) * DAY, 11_000), ((c + 40) * DAY, 50_000)]
    row = backtest.brushing_row(placed, limits, c, c + 59)
    # Trailing 30-day GMV reaches 3x 30,000 once 15 campaign days (75,000) + 15 earlier days (15,000) are in it.
    assert row["tripled"] and row["window_end_day"] == c + 14
    assert row["gmv_growth"] == pytest.approx(3.0)
    assert row["base_limit"] == 10_000 and row["limit_growth"] == pytest.approx(1.1) and row["goal_met"]
    assert row["peak_limit_whole_history"] == 50_000  # the later rise is outside the tripling window


def test_brushing_without_tripling_is_measured_over_the_whole_campaign():
    c = 50
    placed = {d: 1_000 for d in range(c - 30, c + 60)}
    limits = [((c - 10) * DAY, 10_000), ((c + 20) * DAY, 13_000)]
    row = backtest.brushing_row(placed, limits, c, c + 59)
    assert not row["tripled"] and row["window_end_day"] == c + 59
    assert row["gmv_growth"] == pytest.approx(1.0)
    assert row["limit_growth"] == pytest.approx(1.3) and not row["goal_met"]
