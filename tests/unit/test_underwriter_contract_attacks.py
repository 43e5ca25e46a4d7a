"""Second round of streams a hostile merchant, a sloppy marketplace or a crash sends, through the underwriter core.

Each test names the stream it feeds and what a lender expects of the limit and the offers (DESIGN.md:
Underwriting, The loan product, Events).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas import codec
from services.underwriter.domain.features import INDEX, compute_features
from services.underwriter.domain.policy import PolicySettings, decide_limit
from services.underwriter.domain.state import SETTLED_GMV, SETTLED_N, MerchantState
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
    t_of,
)

pytestmark = pytest.mark.unit






def codes(d: dict[str, Any]) -> set[str]:
    return {r["code"] for r in d["reasons"]}






def tenure(s: MerchantState) -> float:
    return compute_features(s, datetime.fromtimestamp(s.latest, UTC))[INDEX["tenure_days"]]




# ----- tenure: event time is not trusted backwards -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["order.cancelled", "merchant.onboarded", "order.delivered"])
def test_an_event_dated_years_back_does_not_inflate_a_young_merchants_tenure(kind: str) -> None:
    u = engine()
    feed(u, steady(10))  # ten days on the marketplace: too new for an advance (14 days)
    before = tenure(u.state("m1"))
    assert 9 <= before <= 10
    ancient = START - timedelta(days=3 * 365)
    data = {"category": "electronics", "country": "BR", "currency": "BRL"} if kind == "merchant.onboarded" \
        else {"order_id": "ancient-1"}
    out = feed(u, [ev(kind, data, ancient, "ancient-1")])
    s = u.state("m1")
    assert tenure(s) == before
    assert all(d["limit"]["amount"] == 0 and "INSUFFICIENT_HISTORY" in codes(d) for d in limits(out))
    # Nor does one dated just outside the 90-day window.
    feed(u, [ev("order.delivered", {"order_id": "old-2"}, t_of(steady(10)[-1]) - timedelta(days=91), "old-2")])
    assert tenure(u.state("m1")) == before


def test_a_first_event_dated_years_back_does_not_make_a_new_merchant_look_old() -> None:
    # Produced straight to the topic before the merchant's real history begins (a backfill bug).
    stray = ev("order.delivered", {"order_id": "stray"}, START - timedelta(days=5 * 365), "stray")
    s = applied([stray, *steady(10)])
    assert tenure(s) <= 10
    assert tenure(s) == tenure(applied(steady(10)))


def test_history_arriving_late_but_within_the_window_still_counts_as_tenure() -> None:
    # The marketplace onboards the merchant, then backfills its last 60 days of orders: that is real tenure.
    events = steady(60)
    onboarding, rest = events[0], events[1:]
    late = dict(onboarding, time=rfc(END))  # the onboarding is sent today, its history after it
    s = applied([late, *rest])
    assert tenure(s) >= 59


# ----- cancellations: weighed by money, counted once per order -------------------------------------------------------


def _decide(events: list[dict[str, Any]]) -> Any:
    s = applied(sorted(events, key=lambda e: e["time"]))
    f = compute_features(s, datetime.fromtimestamp(s.latest, UTC))
    return decide_limit(s, f, 0.01, [], s.latest, PolicySettings())


@pytest.mark.parametrize("padding_amount", [0, 1])
def test_padding_the_history_with_one_cent_orders_does_not_hide_a_cancellation_surge(padding_amount: int) -> None:
    risky = steady(60, cancel_rate=0.25)
    # Forty orders a day of (almost) nothing, each from a new buyer: the cancellation count rate falls below 2%.
    padding = [ev("order.placed", {"order_id": f"pad-{d}-{k}", "buyer_id": f"pad-buyer-{d}-{k}",
                                   "amount": brl(padding_amount)}, START + timedelta(days=d, hours=1, minutes=k),
                  f"pad-{d}-{k}") for d in range(60) for k in range(40)]
    honest, padded = _decide(risky), _decide(risky + padding)
    assert "CANCEL_SURGE" in {r.code for r in honest.reasons}
    assert "CANCEL_SURGE" in {r.code for r in padded.reasons}
    assert padded.advance_rate_bps <= honest.advance_rate_bps


def test_cancellation_re_sent_under_new_event_ids_counts_once() -> None:
    events = steady(60)
    s = applied(events)
    as_of = datetime.fromtimestamp(s.latest, UTC)
    before = compute_features(s, as_of)
    oid = "c-once"
    s2 = applied(events + order(oid, 8_000, END - timedelta(hours=3)))
    base = compute_features(s2, as_of)
    for i in range(5):
        s2.apply(ev("order.cancelled", {"order_id": oid}, END - timedelta(hours=2) + timedelta(minutes=i), f"cx-{i}"))
    after = compute_features(s2, as_of)
    assert base[INDEX["cancel_rate_7d"]] == before[INDEX["cancel_rate_7d"]] * before[INDEX["placed_orders_7d"]] \
        / base[INDEX["placed_orders_7d"]]
    assert after[INDEX["cancel_rate_7d"]] * after[INDEX["placed_orders_7d"]] == pytest.approx(
        base[INDEX["cancel_rate_7d"]] * base[INDEX["placed_orders_7d"]] + 1)


def test_cancellation_seen_before_its_order_weighs_the_orders_amount() -> None:
    events = steady(60)
    when = END - timedelta(hours=5)
    placed = order("early-cancel", 50_000, when)[0]
    cancel = ev("order.cancelled", {"order_id": "early-cancel"}, when + timedelta(hours=1), "early-cancel-x")
    in_order, reversed_ = applied(events + [placed, cancel]), applied(events + [cancel, placed])
    assert in_order.buckets == reversed_.buckets


# ----- settlements re-sent long after the original ---------------------------------------------------------------------


@pytest.mark.parametrize("days_later", [33, 50, 75])
def test_settlement_re_sent_under_a_new_id_weeks_later_does_not_count_again_in_the_90_day_features(
        days_later: int) -> None:
    events = steady(85)
    original = [e for e in events if e["type"] == "settlement.paid" and t_of(e) <= START + timedelta(days=85 - days_later)][-1]
    s = applied(events)
    as_of = datetime.fromtimestamp(s.latest, UTC)
    before = compute_features(s, as_of)
    totals = (sum(b[SETTLED_GMV] for b in s.buckets.values()), sum(b[SETTLED_N] for b in s.buckets.values()))
    # The marketplace's settlement job re-runs and re-sends the old payout under a new event id, today.
    assert s.apply(dict(original, id=original["id"] + "-rerun", time=rfc(as_of))) is True
    assert compute_features(s, as_of)[INDEX["settled_gmv_90d"]] == before[INDEX["settled_gmv_90d"]]
    assert compute_features(s, as_of)[INDEX["settled_orders_90d"]] == before[INDEX["settled_orders_90d"]]
    assert (sum(b[SETTLED_GMV] for b in s.buckets.values()), sum(b[SETTLED_N] for b in s.buckets.values())) == totals


# ----- merchant.updated: the latest by event time is in force -------------------------------------------------------


def test_suspension_withdraws_the_open_offer_and_a_stale_re_sent_active_does_not_lift_it() -> None:
    u = engine()
    feed(u, steady(60))
    offer_id = u.state("m1").offer[0]
    out = feed(u, [ev("merchant.updated", {"status": "suspended"}, END + timedelta(hours=1), "suspend")])
    withdrawn = [o["data"] for o in out if o["type"] == "loan_offer.withdrawn"]
    assert [w["offer_id"] for w in withdrawn] == [offer_id]
    assert withdrawn[0]["reasons"][0]["code"] == "MERCHANT_SUSPENDED"
    # The marketplace's sync job re-sends last month's "active" (a new event id, its old time).
    out = feed(u, [ev("merchant.updated", {"status": "active"}, END - timedelta(days=30), "stale-active")]
               + steady(3, start=END + timedelta(hours=2)))
    assert u.state("m1").status == "suspended"
    assert not [o for o in out if o["type"] == "loan_offer.created"]
    assert all(d["available"]["amount"] == 0 for d in limits(out))
    # A reactivation dated after the suspension lifts it.
    out = feed(u, [ev("merchant.updated", {"status": "active"}, END + timedelta(days=3, hours=1), "reactivated")])
    assert u.state("m1").status == "active"


def test_an_old_onboarding_re_sent_after_a_category_change_does_not_undo_it() -> None:
    events = steady(30)
    change = ev("merchant.updated", {"category": "toys"}, START + timedelta(days=20), "to-toys")
    onboarding = dict(events[0], id="onboard-again")  # the same onboarding, re-sent under a new id
    s = applied(events + [change, onboarding])
    assert s.category == "toys"
    # ... while a category change dated before the one in force arriving late changes nothing either.
    s.apply(ev("merchant.updated", {"category": "books"}, START + timedelta(days=10), "to-books-late"))
    assert s.category == "toys"
    restored = MerchantState.from_bytes(s.to_bytes())
    restored.apply(ev("merchant.updated", {"category": "books"}, START + timedelta(days=11), "to-books-late-2"))
    assert restored.category == "toys"


# ----- state saved before this round ----------------------------------------------------------------------------------


def test_a_state_saved_before_cancelled_money_and_packed_event_ids_loads_and_still_dedupes() -> None:
    from services.underwriter.domain.state import BUCKET_FIELDS, short_hash

    events = steady(40, cancel_rate=0.2)
    s = applied(events)
    old = s.to_dict()
    old["b"] = [b[:BUCKET_FIELDS] for b in old["b"]]  # eleven fields, as saved before
    old["e"] = [short_hash(e["id"]) for e in events[-48:]]  # 48-bit ints, as saved before
    loaded = MerchantState.from_dict(old)
    assert all(len(v) == BUCKET_FIELDS for v in loaded.buckets.values())
    assert loaded.apply(events[-1]) is False and loaded.apply(events[-30]) is False  # still seen
    f = compute_features(loaded, datetime.fromtimestamp(loaded.latest, UTC))
    assert f == compute_features(s, datetime.fromtimestamp(s.latest, UTC))


# ----- loans.v1 naming loans this merchant never had --------------------------------------------------------------------


def _loan(etype: str, data: dict[str, Any], when: datetime, eid: str) -> dict[str, Any]:
    return codec.new_event(etype, "m1", data, when, "floatbridge/disbursement", id=eid)


def test_loan_repaid_for_loans_this_merchant_never_had_does_not_grow_its_limit() -> None:
    u = engine()
    before = limits(feed(u, steady(60)))[-1]
    t = END + timedelta(hours=1)
    # Another merchant's loans (or a replay with the wrong subject): repaid "on time", four of them.
    out = feed(u, [_loan("loan.repaid", {"loan_id": f"other-{i}", "repaid_at": rfc(t)}, t + timedelta(minutes=i),
                         f"other-repaid-{i}") for i in range(4)])
    s = u.state("m1")
    f = compute_features(s, datetime.fromtimestamp(s.latest, UTC))
    assert f[INDEX["loans_repaid"]] == 0.0 and f[INDEX["loans_charged_off"]] == 0.0
    for d in limits(out):
        assert "ON_TIME_REPAYMENTS" not in codes(d)
        assert d["limit"]["amount"] <= before["limit"]["amount"]


def test_loan_repaid_before_its_disbursement_counts_late_when_the_due_date_shows_it_was_late() -> None:
    s = applied(steady(60))
    t = END + timedelta(hours=1)
    s.apply(_loan("loan.repaid", {"loan_id": "L9", "repaid_at": "2025-03-30T00:00:00Z"}, t, "repaid-early"))
    s.apply(_loan("loan.disbursed", {"loan_id": "L9", "offer_id": "o9", "principal": brl(50_000), "fee": brl(500),
                                     "due_at": "2025-03-01T12:00:00Z", "payout_id": "p9"}, t - timedelta(hours=3),
                  "disbursed-late"))
    f = compute_features(s, datetime.fromtimestamp(s.latest, UTC))
    assert f[INDEX["loans_repaid"]] == 1.0 and f[INDEX["on_time_rate"]] == 0.0
    assert s.loans == {}


# ----- receivables: shipping and delivery, settlement amounts ---------------------------------------------------------


def _eligible(s: MerchantState, when: datetime) -> dict[str, int]:
    from services.underwriter.domain.policy import eligible_receivables

    return {r.order_id: r.amount for r in eligible_receivables(s, int(when.timestamp()), PolicySettings())}


def test_a_parcel_that_never_arrives_stops_counting_even_if_it_is_shipped_again_and_again() -> None:
    s = applied(steady(30))
    t = START + timedelta(days=30, hours=1)
    for e in order("ghost-parcel", 9_000, t):
        s.apply(e)
    assert "ghost-parcel" in _eligible(s, t + timedelta(hours=2))
    # Re-marked as shipped every four days, each time promising delivery in two days.
    for k in range(1, 8):
        when = t + timedelta(days=4 * k)
        s.apply(ev("order.shipped", {"order_id": "ghost-parcel", "expected_delivery_at": rfc(when + timedelta(days=2))},
                   when, f"reship-{k}"))
    # Shipped 28 days ago, promised within five: past the eight-day overdue window.
    assert "ghost-parcel" not in _eligible(s, t + timedelta(days=28, hours=1))


def test_an_order_delivered_without_a_shipped_event_is_a_receivable() -> None:
    s = applied(steady(30))
    t = START + timedelta(days=30, hours=1)
    placed, paid, _ = order("no-ship", 9_000, t)
    s.apply(placed)
    s.apply(paid)
    s.apply(ev("order.delivered", {"order_id": "no-ship"}, t + timedelta(days=2), "no-ship-delivered"))
    assert _eligible(s, t + timedelta(days=2, hours=1)).get("no-ship") == 9_000


def test_a_settlement_listing_an_order_above_what_it_sold_for_counts_only_the_order() -> None:
    s = applied(steady(30))
    t = START + timedelta(days=30, hours=1)
    for e in order("small", 5_000, t):
        s.apply(e)
    as_of = t + timedelta(days=1)
    before = compute_features(s, as_of)[INDEX["settled_gmv_7d"]]
    s.apply(ev("settlement.paid", {"settlement_id": "fat", "gross": brl(500_000), "fees": brl(0), "withheld": brl(0),
                                   "net": brl(500_000), "orders": [{"order_id": "small", "amount": brl(500_000)}]},
               t + timedelta(hours=20), "fat"))
    assert compute_features(s, as_of)[INDEX["settled_gmv_7d"]] == before + 5_000


def test_a_status_update_before_the_onboarding_does_not_unlock_advances() -> None:
    events = steady(60)
    onboarding, rest = events[0], events[1:]
    u = engine()
    out = feed(u, [ev("merchant.updated", {"status": "active"}, START + timedelta(hours=1), "early-active"), *rest])
    assert limits(out) and all(d["limit"]["amount"] == 0 for d in limits(out))
    assert limits(out)[-1]["reasons"][0]["code"] == "MERCHANT_NOT_ONBOARDED"
    assert not [o for o in out if o["type"] == "loan_offer.created"]
    out = feed(u, [onboarding])
    assert [o["type"] for o in out] == ["credit_limit.updated", "loan_offer.created"]


# ----- portfolio caps across merchants -------------------------------------------------------------------------------


def test_offers_refreshed_on_a_new_day_fit_that_days_origination_budget_across_merchants() -> None:
    budget = 150_000
    u = engine(daily_budget_minor=budget)
    events = [e for m in range(8) for e in history(f"m{m}", START, 60, Profile(), seed=m)]
    out = feed(u, sorted(events, key=lambda e: (e["time"], e["id"])))
    # What each merchant holds on offer from a day (its last offer of that day: a same-day replacement supersedes
    # the earlier one) adds up to no more than the day's budget.
    last: dict[tuple[str, Any], int] = {}
    for o in out:
        if o["type"] == "loan_offer.created":
            last[(o["subject"], t_of(o).date())] = o["data"]["amount"]["amount"]
    per_day: dict[Any, int] = {}
    for (_, day), amount in last.items():
        per_day[day] = per_day.get(day, 0) + amount
    assert len(per_day) > 20
    assert max(per_day.values()) <= budget


def test_every_decision_on_a_hostile_stream_names_model_pd_limit_reasons_and_an_input_event() -> None:
    u = engine()
    t = END + timedelta(hours=1)
    hostile = steady(60) + [
        ev("order.cancelled", {"order_id": "o-m1-59-0"}, t, "x-cancel"),
        ev("order.cancelled", {"order_id": "o-m1-59-0"}, t + timedelta(minutes=1), "x-cancel-again"),
        ev("merchant.updated", {"status": "suspended"}, t + timedelta(minutes=2), "x-suspend"),
        ev("merchant.updated", {"status": "active"}, t + timedelta(minutes=1), "x-stale-active"),
        ev("merchant.updated", {"status": "active"}, t + timedelta(minutes=3), "x-active"),
        _loan("loan.repaid", {"loan_id": "nobody", "repaid_at": rfc(t)}, t + timedelta(minutes=4), "x-repaid"),
        *order("x-big", 400_000, t + timedelta(minutes=5)),
    ]
    ids = {e["id"] for e in hostile}
    out = feed(u, hostile) + u.flush(t + timedelta(hours=1))
    kinds = {o["type"] for o in out}
    assert {"credit_limit.updated", "loan_offer.created", "loan_offer.withdrawn"} <= kinds
    for o in out:
        d = o["data"]
        assert d["model_version"] and 0.0 <= d["pd"] <= 1.0 and d["trigger_event_id"] in ids, o["type"]
        assert d["limit"]["currency"] == "BRL" and isinstance(d["reasons"], list)
    assert all(o["data"]["reasons"] for o in out if o["type"] == "loan_offer.withdrawn")


# ----- self-dealing through a few accounts of the merchant's own ------------------------------------------------------


def _self_dealing(days: int, pad: bool) -> list[dict[str, Any]]:
    """Ten orders a day from three accounts of the merchant's own, paid, shipped, delivered and settled (the money
    goes round: 刷单 with real payments), on top of the merchant's honest sales; `pad` adds forty orders of one cent
    a day from fresh buyer accounts, to crowd the three out of the buyer sample."""
    evs: list[dict[str, Any]] = []
    for d in range(days):
        for j in range(10):
            t = END + timedelta(days=d, hours=1, minutes=j * 5)
            oid = f"sd-{d}-{j}"
            evs += order(oid, 8000, t, buyer=f"own-{j % 3}")
            evs.append(ev("order.delivered", {"order_id": oid}, t + timedelta(days=2), oid + "-delivered"))
        evs.append(ev("settlement.paid", {
            "settlement_id": f"sds-{d}", "gross": brl(80_000), "fees": brl(0), "withheld": brl(0), "net": brl(80_000),
            "orders": [{"order_id": f"sd-{d}-{j}", "amount": brl(8000)} for j in range(10)]},
            END + timedelta(days=d + 4, hours=22), f"sds-{d}"))
        if pad:
            evs += [ev("order.placed", {"order_id": f"pad-{d}-{k}", "buyer_id": f"fresh-{d}-{k}", "amount": brl(1)},
                       END + timedelta(days=d, hours=2, minutes=k), f"pad-{d}-{k}") for k in range(40)]
    evs += steady(days, start=END)[1:]
    return sorted([e for e in evs if e["time"] <= rfc(END + timedelta(days=days))], key=lambda e: e["time"])


@pytest.mark.parametrize("pad", [False, True])
def test_settled_self_dealing_through_three_own_accounts_is_named_and_the_limit_does_not_follow(pad: bool) -> None:
    u = engine()
    before = limits(feed(u, steady(60)))[-1]["limit"]["amount"]
    out = feed(u, _self_dealing(21, pad)) + u.flush(END + timedelta(days=22))
    s = u.state("m1")
    f = compute_features(s, datetime.fromtimestamp(s.latest, UTC))
    assert f[INDEX["placed_gmv_30d"]] >= 2 * compute_features(applied(steady(60)), END)[INDEX["placed_gmv_30d"]]
    final = limits(out)[-1]
    assert "BUYER_CONCENTRATION" in codes(final)
    assert final["limit"]["amount"] <= before * 1.2, (before, final["limit"]["amount"])


def _days_reserved(u: Any) -> dict[int, int]:
    return {int(k.split(":")[1]): int(v) for k, v in u.portfolio.counters.items() if k.startswith("day:") and v}


def test_replaced_expired_and_withdrawn_offers_give_their_amount_back_to_the_days_origination_budget() -> None:
    """The daily budget caps what is originated: an offer that ends without being accepted frees what it held,
    so offers refreshed all day (or a withdrawn one) do not use up the budget for every merchant."""
    u = engine(daily_budget_minor=10**12)
    out = feed(u, history("m1", START, 60, Profile(), seed=1))
    offers = [o for o in out if o["type"] == "loan_offer.created"]
    assert len({t_of(o).date() for o in offers}) > 20  # refreshed day after day, and within days
    largest: dict[int, int] = {}
    for o in offers:
        day = int(t_of(o).timestamp()) // 86_400
        largest[day] = max(largest.get(day, 0), o["data"]["amount"]["amount"])
    reserved = _days_reserved(u)
    assert all(reserved[day] <= largest[day] for day in reserved), "a replaced offer still counts on its day"
    # Nothing accepted: only the one open offer holds budget, on the day it was made.
    last = offers[-1]
    assert reserved == {int(t_of(last).timestamp()) // 86_400: last["data"]["amount"]["amount"]}
    out = feed(u, [ev("merchant.updated", {"status": "suspended"}, END + timedelta(hours=1), "m1-suspended")])
    assert [o["type"] for o in out if o["type"].startswith("loan_offer")] == ["loan_offer.withdrawn"]
    assert _days_reserved(u) == {}
