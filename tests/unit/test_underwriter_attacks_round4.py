"""Fourth round of streams against the underwriter: fees priced past the term, delivery promised for 2099,
refunds and chargebacks numbered per order, offers to a merchant never onboarded.

Each test names the stream it feeds and what a lender expects (DESIGN.md: The loan product, Underwriting).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest

from services.underwriter.domain.decisions import plan_offer, price
from services.underwriter.domain.features import compute_features
from services.underwriter.domain.policy import (
    LimitDecision,
    PolicySettings,
    Receivable,
    decide_limit,
    eligible_receivables,
)
from services.underwriter.domain.state import CHARGEBACK_N, DAY, REFUND_N, MerchantState
from services.underwriter.synthetic import Profile, history
from tests.unit.underwriter_helpers import (
    END,
    START,
    applied,
    brl,
    engine,
    ev,
    feed,
    limits,
    order,
    rfc,
    steady,
)

pytestmark = pytest.mark.unit

P = PolicySettings()




def decided(s: MerchantState, as_of: int | None = None) -> LimitDecision:
    at = s.latest if as_of is None else as_of
    f = compute_features(s, datetime.fromtimestamp(at, UTC))
    return decide_limit(s, f, 0.01, [], at, P)


def shipped_order(oid: str, amount: int, when: datetime, promised: datetime) -> list[dict[str, Any]]:
    """Placed and paid, shipped an hour later with a delivery promised for `promised`; never delivered."""
    placed, paid, _ = order(oid, amount, when)
    return [placed, paid, ev("order.shipped", {"order_id": oid, "expected_delivery_at": rfc(promised)},
                             when + timedelta(hours=1), f"{oid}-shipped")]


def apr_of(fee: int, amount: int, days: int) -> str:
    return str((Decimal(fee) / Decimal(amount) * Decimal(365) / Decimal(days)).quantize(Decimal("0.0001"),
                                                                                          ROUND_HALF_UP))


def assert_priced_within_term(fee: int, apr: str, amount: int, as_of: int, due: int) -> None:
    """DESIGN: a fee of 0.03%-0.08% a day over a term of at most 60 days, its APR that of the fee over the days
    the loan runs."""
    term = -(-(due - as_of) // DAY)
    assert 0 < term <= P.max_term_days
    assert fee * 1_000_000 <= amount * P.fee_max_ppm_per_day * term + 999_999, (fee, amount, term)
    assert any(apr_of(fee, amount, d) == apr for d in range(1, term + 1)), (apr, fee, amount, term)


# ----- 1. the fee is priced on the days the loan runs ------------------------------------------------------------


def test_a_pre_order_promised_a_year_out_is_priced_on_the_days_the_loan_runs_not_on_its_promised_delivery() -> None:
    # An ordinary merchant plus one pre-order shipped with a delivery promised 365 days ahead. An offer that
    # finances every receivable (the pre-order included, if it is one at all) is due within 60 days and its fee
    # stays within the daily band over that term: before, the fee ran to the pre-order's settlement (10% and more).
    s = applied(steady(60) + shipped_order("pre", 30_000, END, END + timedelta(days=365)))
    d = decided(s)
    amount = sum(r.amount for r in d.receivables) * d.advance_rate_bps // 10_000
    offer = plan_offer(d, amount, 0.01, s.latest, P, "o-1")
    assert_priced_within_term(offer.fee, offer.apr, offer.amount, s.latest, offer.due_at)
    assert all(r.expected_settlement <= s.latest + P.max_term_days * DAY for r in d.receivables)


def test_a_receivable_settling_after_the_longest_term_is_neither_financed_nor_counted_in_the_limit() -> None:
    # A marketplace that pays out 70 days after the order: no receivable can repay an advance within 60 days, so
    # none backs the limit or an offer (eligible 0); with a 10-day lag the same orders are eligible.
    s = applied(steady(60))
    assert eligible_receivables(s, s.latest, P, lag_days=10.0)
    assert eligible_receivables(s, s.latest, P, lag_days=70.0) == []


def test_an_offer_is_never_priced_on_more_days_than_its_term_even_on_a_receivable_settling_later() -> None:
    # plan_offer on its own (a decision built by hand with a receivable settling in 200 days): due at the
    # longest term, and the fee is that of those days, with the APR of the same days.
    as_of = int(END.timestamp())
    d = LimitDecision(1_000_000, 1_000_000, 0, 500_000, 8000, (), False, False,
                      (Receivable("late", 500_000, as_of + 200 * DAY),))
    offer = plan_offer(d, 100_000, 0.0, as_of, P, "o-1")
    assert offer.due_at == as_of + P.max_term_days * DAY
    assert (offer.fee, offer.apr) == price(100_000, 0.0, P.max_term_days, P)
    assert_priced_within_term(offer.fee, offer.apr, offer.amount, as_of, offer.due_at)


def test_a_parcel_promised_for_2099_and_never_delivered_stops_counting_like_any_overdue_parcel() -> None:
    # Every shipment promising 2099-12-31 kept a never-delivered (fake) order eligible up to the 60-day age limit.
    # The promise counts up to max_delivery_days after shipping: the order is lent against as one due then, and
    # once that plus the overdue window has passed without a delivery it is no receivable.
    s = applied(steady(60) + shipped_order("fake", 9_000, END, datetime(2099, 12, 31, tzinfo=UTC)))
    shipped = int((END + timedelta(hours=1)).timestamp())
    soon = shipped + 10 * DAY
    fake = [r for r in eligible_receivables(s, soon, P) if r.order_id == "fake"]
    assert fake and fake[0].expected_settlement <= shipped + (P.max_delivery_days + P.payout_delay_days) * DAY
    late = shipped + (P.max_delivery_days + P.receivable_overdue_days + 1) * DAY
    assert "fake" not in {r.order_id for r in eligible_receivables(s, late, P)}
    # A real parcel promised in 10 days and delivered late still counts until its own overdue window ends.
    t = END + timedelta(hours=2)
    s2 = applied(steady(60) + shipped_order("real", 9_000, t, t + timedelta(days=10)))
    assert "real" in {r.order_id for r in eligible_receivables(s2, int(t.timestamp()) + 15 * DAY, P)}


def test_every_offer_on_a_stream_promising_delivery_in_2099_keeps_the_fee_band_and_term() -> None:
    # Through the core: every order of the last days promises 2099; each offer made is due within 60 days, with a
    # fee within 0.08% a day of its term and the APR of that fee.
    u = engine()
    feed(u, steady(60))
    far = datetime(2099, 12, 31, tzinfo=UTC)
    events = [e for i in range(12) for e in shipped_order(f"f{i}", 8_000, END + timedelta(hours=2 * i + 1), far)]
    out = feed(u, events) + u.flush(END + timedelta(days=1))
    created = [e for e in out if e["type"] == "loan_offer.created"]
    assert created
    for e in created:
        o, at = e["data"], int(datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp())
        due = int(datetime.fromisoformat(o["due_at"].replace("Z", "+00:00")).timestamp())
        assert_priced_within_term(o["fee"]["amount"], o["apr"], o["amount"]["amount"], at, due)


# ----- 2. refunds and chargebacks are counted per order ----------------------------------------------------------


def _chargeback(oid: str, cb_id: str, amount: int, when: datetime, eid: str) -> dict[str, Any]:
    return ev("order.chargeback", {"order_id": oid, "chargeback_id": cb_id, "amount": brl(amount)}, when, eid)


def _refund(oid: str, rf_id: str, amount: int, when: datetime, eid: str) -> dict[str, Any]:
    return ev("order.refunded", {"order_id": oid, "refund_id": rf_id, "amount": brl(amount)}, when, eid)


def test_chargebacks_numbered_per_order_each_close_their_own_order_and_each_count() -> None:
    # A marketplace numbers chargebacks per order ("1" for each order's first one), as disbursement keys them
    # (<order_id>:<ref>). Before, the second order's "1" was taken for a re-send of the first: not counted, and
    # its order stayed a receivable (lent against again and again).
    t = END + timedelta(hours=1)
    s = applied(steady(60) + order("A", 9_000, t) + order("B", 9_000, t + timedelta(minutes=10)))
    before = sum(b[CHARGEBACK_N] for b in s.buckets.values())
    assert {"A", "B"} <= {r.order_id for r in decided(s).receivables}
    s.apply(_chargeback("A", "1", 9_000, t + timedelta(hours=2), "cb-A"))
    s.apply(_chargeback("B", "1", 9_000, t + timedelta(hours=3), "cb-B"))
    assert sum(b[CHARGEBACK_N] for b in s.buckets.values()) == before + 2
    assert not {"A", "B"} & {r.order_id for r in decided(s).receivables}
    # The same chargeback of B re-sent under a fresh event id still counts once.
    s.apply(_chargeback("B", "1", 9_000, t + timedelta(hours=4), "cb-B-again"))
    assert sum(b[CHARGEBACK_N] for b in s.buckets.values()) == before + 2


def test_refunds_numbered_per_order_each_count_and_each_reduce_their_own_order() -> None:
    t = END + timedelta(hours=1)
    s = applied(steady(60) + order("A", 9_000, t) + order("B", 9_000, t + timedelta(minutes=10)))
    before = sum(b[REFUND_N] for b in s.buckets.values())
    s.apply(_refund("A", "1", 4_000, t + timedelta(hours=2), "rf-A"))
    s.apply(_refund("B", "1", 9_000, t + timedelta(hours=3), "rf-B"))
    assert sum(b[REFUND_N] for b in s.buckets.values()) == before + 2
    eligible = {r.order_id: r.amount for r in decided(s).receivables}
    assert eligible.get("A") == 5_000 and "B" not in eligible
    s.apply(_refund("A", "1", 4_000, t + timedelta(hours=4), "rf-A-again"))  # a re-send: counts once
    assert sum(b[REFUND_N] for b in s.buckets.values()) == before + 2
    assert {r.order_id: r.amount for r in decided(s).receivables}.get("A") == 5_000


def test_a_state_saved_with_merchant_wide_chargeback_ids_loads_and_counts_the_next_order_s_chargeback() -> None:
    # A state saved before ids were scoped per order holds the merchant-wide hash of chargeback "1". It loads as
    # it was; that old key matches no per-order id (it ages out with its week), so order B's chargeback "1" counts
    # and closes B (a re-send of a chargeback counted before the upgrade, under a fresh event id, counts once more:
    # the rates read high for a while, never low).
    t = END + timedelta(hours=1)
    s = applied(steady(60) + order("B", 9_000, t))
    saved = s.to_dict()
    legacy = MerchantState._counted_hash("c", "1")
    assert legacy is not None
    saved["i"] = {f"c{(s.latest // DAY) // 7}": legacy}
    old = MerchantState.from_dict(saved)
    before = sum(b[CHARGEBACK_N] for b in old.buckets.values())
    old.apply(_chargeback("B", "1", 9_000, t + timedelta(hours=2), "cb-B"))
    assert sum(b[CHARGEBACK_N] for b in old.buckets.values()) == before + 1
    assert "B" not in {r.order_id for r in decided(old).receivables}
    assert MerchantState.from_bytes(old.to_bytes()).to_dict() == old.to_dict()


# ----- 3. only merchant.onboarded onboards -----------------------------------------------------------------------


def _never_onboarded() -> list[dict[str, Any]]:
    update = ev("merchant.updated", {"status": "active", "category": "fashion"}, START, "upd-1")
    return [update, *history("m1", START, 60, Profile(), onboard=False)]


def test_a_merchant_only_ever_updated_and_never_onboarded_gets_no_offer() -> None:
    # merchant.updated {"status": "active", "category": "fashion"} and normal trade, but no merchant.onboarded
    # (no country, no onboarded currency): no offer, and the limit says why. Its onboarding then lets it borrow.
    u = engine()
    out = feed(u, _never_onboarded())
    assert not [e for e in out if e["type"] == "loan_offer.created"]
    assert limits(out) and "MERCHANT_NOT_ONBOARDED" in {r["code"] for r in limits(out)[-1]["reasons"]}
    onboard = ev("merchant.onboarded", {"category": "fashion", "country": "BR", "currency": "BRL"},
                 END + timedelta(minutes=1), "onb-1")
    out = feed(u, [onboard]) + u.flush(END + timedelta(hours=1))
    assert [e for e in out if e["type"] == "loan_offer.created"]


def test_an_updated_but_never_onboarded_merchant_stays_so_through_a_save_and_legacy_states_stay_onboarded() -> None:
    s = applied(_never_onboarded())
    assert s.status == "active" and s.category == "fashion" and not s.onboarded
    assert not MerchantState.from_bytes(s.to_bytes()).onboarded
    assert decided(s).blocked and "MERCHANT_NOT_ONBOARDED" in decided(s).codes
    onboarded = applied(steady(60))
    assert onboarded.onboarded and MerchantState.from_bytes(onboarded.to_bytes()).onboarded
    assert "g" not in onboarded.to_dict()  # nothing more saved for the usual merchant
    # A state saved before onboarding was tracked: status and category set means it was onboarded (the old rule).
    legacy = onboarded.to_dict()
    legacy.pop("g", None)
    assert MerchantState.from_dict(legacy).onboarded


# ----- 4. caps and the smallest offer per currency ---------------------------------------------------------------


def _business(currency: str, ticket: int) -> MerchantState:
    s = MerchantState("m1")
    for e in history("m1", START, 60, Profile(currency=currency, ticket_minor=ticket)):
        s.apply(e)
    return s


def test_an_idr_merchant_is_capped_at_the_idr_cap_not_at_fifty_thousand_rupiah() -> None:
    # The per-merchant cap was one number of minor units whatever the currency: Rp 50,000 for a merchant selling
    # Rp 15M a month. The same business in BRL and in IDR (tickets ~2,900x) now gets limits of the same size.
    brl_d, idr_d = decided(_business("BRL", 8_000)), decided(_business("IDR", 8_000 * 2_900))
    assert "MERCHANT_CAP" not in idr_d.codes
    assert idr_d.limit > 1_000 * brl_d.limit > 0
    idr = P.for_currency("IDR")
    assert idr is not None and idr.merchant_cap_minor > 1_000 * P.merchant_cap_minor
    assert idr.min_offer_minor > 1_000 * P.min_offer_minor


def test_the_limits_currency_keeps_the_flat_settings_and_a_listed_currency_uses_its_row() -> None:
    p = PolicySettings(merchant_cap_minor=123_456, currency_limits="USD:1000000:2000:200000000:1000000000")
    assert p.for_currency("BRL") is p
    usd = p.for_currency("USD")
    assert usd is not None
    assert (usd.merchant_cap_minor, usd.min_offer_minor, usd.daily_budget_minor, usd.category_cap_minor) == (
        1_000_000, 2_000, 200_000_000, 1_000_000_000)
    assert p.for_currency("IDR") is None  # not in this table
    for bad in ("USD:1:2", "XXX:1:2:3:4", "USD:-1:2:3:4", "USD:1:2:3:4,USD:1:2:3:4", "USD:a:2:3:4"):
        with pytest.raises(ValueError):
            PolicySettings(currency_limits=bad).validate()
    PolicySettings().validate()


def test_a_merchant_in_a_currency_without_configured_limits_gets_no_limit_and_a_reason_naming_it() -> None:
    p = PolicySettings(currency_limits="USD:1000000:2000:200000000:1000000000")
    s = _business("CHF", 8_000)
    f = compute_features(s, datetime.fromtimestamp(s.latest, UTC))
    d = decide_limit(s, f, 0.01, [], s.latest, p)
    assert d.blocked and d.limit == 0 and d.reasons[0].code == "CURRENCY_NOT_SUPPORTED"
    assert "CHF" in d.reasons[0].text
    # Through the core with the default table: no offer in CHF, one in BRL.
    for currency, offers in (("CHF", False), ("BRL", True)):
        u = engine(currency_limits="USD:1000000:2000:200000000:1000000000")
        out = feed(u, history("m1", START, 60, Profile(currency=currency)))
        assert bool([e for e in out if e["type"] == "loan_offer.created"]) is offers, currency
