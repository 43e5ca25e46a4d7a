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


def test_approval_of_eligible_merchants_counts_days_with_an_approved_limit(sample):
    approving = backtest.summarise(backtest.run(sample, None, "unused", scorer=FixedScorer(0.01)))["all"]
    refusing = backtest.summarise(backtest.run(sample, None, "unused", scorer=FixedScorer(0.99)))["all"]
    assert 0 < approving["points_approved"] <= approving["points"]
    assert approving["eligible_approved_rate"] == approving["points_approved"] / approving["points"]
    # A limit is approved whether or not it is drawn that day: higher than the offer-at-the-point rate.
    assert approving["eligible_approved_rate"] > approving["approval_rate"]
    assert refusing["points"] > 0 and refusing["points_approved"] == 0 and refusing["eligible_approved_rate"] == 0.0


def test_backtest_report_writes_charts_for_approval_loss_and_yield(sample, tmp_path):
    from floatbridge.modeling import report

    summary = backtest.summarise(backtest.run(sample, None, "unused", scorer=FixedScorer(0.01)))
    paths = report.write(summary, str(tmp_path))
    for key in ("eligible_approved_rate", "approval_rate", "loss_rate", "fee_yield"):
        assert "<rect" in (tmp_path / f"{key}.svg").read_text()
    page = (tmp_path / "report.html").read_text()
    assert "eligible_approved_rate" in page and paths[0].endswith("report.json")


def test_brushing_limit_growth_compares_30_day_limit_levels_until_placed_gmv_triples():
    c = 100
    placed = {d: 1_000 for d in range(c - 30, c)} | {d: 5_000 for d in range(c, c + 60)}
    limits = [((c - 40) * DAY, 10_000), ((c + 3) * DAY, 11_000), ((c + 40) * DAY, 50_000)]
    row = backtest.brushing_row(placed, limits, c, c + 59, history_from=c - 40)
    # Trailing 30-day GMV reaches 3x 30,000 once 15 campaign days (75,000) + 15 earlier days (15,000) are in it.
    assert row["tripled"] and row["window_end_day"] == c + 14
    assert row["gmv_growth"] == pytest.approx(3.0)
    # Level: 3 days at 10,000 and 12 at 11,000 in the window, against 30 days at 10,000 before.
    assert row["base_limit_level"] == 10_000 and row["limit_growth"] == pytest.approx(1.08) and row["goal_met"]
    assert row["peak_limit_growth"] == pytest.approx(1.1)  # the old peak-over-day-before figure, kept for comparison
    assert row["peak_limit_whole_history"] == 50_000  # the later rise is outside the tripling window


def test_brushing_without_tripling_is_measured_over_the_whole_campaign():
    c = 50
    placed = {d: 1_000 for d in range(c - 30, c + 60)}
    limits = [((c - 10) * DAY, 10_000), ((c + 20) * DAY, 13_000)]
    row = backtest.brushing_row(placed, limits, c, c + 59, history_from=c - 10)
    assert not row["tripled"] and row["window_end_day"] == c + 59
    assert row["gmv_growth"] == pytest.approx(1.0)
    # Baseline: the 10 days with the minimum history; window: the last 30 days, all at 13,000.
    assert row["base_days"] == 10 and row["limit_growth"] == pytest.approx(1.3) and not row["goal_met"]


def test_brushing_baseline_skips_frozen_days_and_needs_a_week_of_history():
    c = 60
    placed = {d: 1_000 for d in range(c - 30, c)} | {d: 2_000 for d in range(c, c + 40)}
    limits = [((c - 30) * DAY, 20_000), ((c - 15) * DAY, 5_000), ((c + 1) * DAY, 20_000)]
    frozen = set(range(c - 15, c))  # a delinquency froze a stale limit for the last 15 days before the campaign
    row = backtest.brushing_row(placed, limits, c, c + 39, frozen=frozen, history_from=c - 30)
    assert row["base_days"] == 15 and row["base_limit_level"] == 20_000 and row["limit_growth"] == pytest.approx(1.0)
    assert row["peak_limit_growth"] == pytest.approx(4.0)  # the stale frozen limit as a baseline would show 4x
    thin = backtest.brushing_row(placed, limits, c, c + 39, history_from=c - 3)
    assert thin["no_baseline"] and thin["limit_growth"] is None and not thin["goal_met"]


def test_rule_based_advance_policy_lends_a_fixed_rate_whatever_the_pd_and_the_guards():
    from floatbridge.modeling.rule_backtest import rule_env
    from services.common import settings as common
    from services.underwriter.domain.features import FEATURE_NAMES, INDEX
    from services.underwriter.domain.policy import PolicySettings, base_rate_bps, guards

    p = common.load(PolicySettings, "FLOATBRIDGE_UNDERWRITER_", environ=rule_env(2800))
    assert base_rate_bps(0.0, p) == base_rate_bps(0.99, p) == 2800
    f = [0.0] * len(FEATURE_NAMES)
    for name, value in (("tenure_days", 200), ("placed_orders_30d", 100), ("top_buyer_share_30d", 0.9),
                        ("repeat_buyer_share_30d", 0.9), ("distinct_buyers_30d", 3), ("refund_rate_30d", 0.5),
                        ("cancel_rate_30d", 0.5), ("placed_gmv_7d", 1e6), ("placed_gmv_30d", 1e6)):
        f[INDEX[name]] = value
    assert guards(f, p) == [] and guards(f, PolicySettings())  # the same merchant trips the real policy's guards


def test_the_backtest_command_prints_both_approval_measures_by_name(tmp_path, capsys):
    import json

    from floatbridge.cli import main

    events, truth = tmp_path / "events.ndjson.gz", tmp_path / "truth.json"
    assert main(["simulate", "--merchants", "6", "--days", "45", "--seed", "2", "--out", str(events),
                 "--truth", str(truth)]) == 0
    assert main(["backtest", "--events", str(events), "--truth", str(truth), "--out", str(tmp_path / "r")]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    report = json.loads((tmp_path / "r" / "report.json").read_text())["all"]
    assert f"with an approved limit {report['eligible_approved_rate']:.1%}" in line
    assert f"with an offer made or open {report['approval_rate']:.1%}" in line
