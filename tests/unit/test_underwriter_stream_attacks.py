"""Event streams a real or hostile marketplace sends, through the underwriter core (bootstrap with fakes).

Each test names the stream it feeds; together they pin down what the state, the limit and the offers do with
events nobody here wrote: late, repeated, contradictory or out-of-range ones.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas import codec
from services.underwriter.domain.features import INDEX, compute_features
from services.underwriter.domain.policy import PolicySettings
from services.underwriter.domain.state import (
    CHARGEBACK_GMV,
    CHARGEBACK_N,
    COUNTED_DAYS,
    DAY,
    HASH_HEX,
    MAX_COUNTED_IDS,
    R_PLACED,
    REFUND_GMV,
    REFUND_N,
    SETTLED_GMV,
    SETTLED_N,
    MerchantState,
    StateError,
)
from services.underwriter.synthetic import Profile, history
from tests.unit.underwriter_helpers import END, START, brl, engine, ev, feed, limits, order, steady, t_of

pytestmark = pytest.mark.unit












# ----- receivables: bounded, never resurrected, never inflated ------------------------------------------------


def test_refunds_of_orders_settled_long_ago_do_not_pile_up_as_phantom_receivables() -> None:
    # Returns refunded a month after the payout: the order is long forgotten when its refund arrives.
    base = steady(150)
    late = []
    for e in base:
        if e["type"] == "settlement.paid":
            o = e["data"]["orders"][0]
            late.append(ev("order.refunded", {"order_id": o["order_id"], "refund_id": "late-" + o["order_id"],
                                              "amount": brl(100)}, t_of(e) + timedelta(days=30), "late-" + o["order_id"]))
    events = sorted(base + [e for e in late if e["time"] <= base[-1]["time"]], key=lambda e: e["time"])
    u = engine()
    feed(u, events)
    s = u.state("m1")
    phantoms = [oid for oid, rec in s.receivables.items() if not rec[R_PLACED]]
    assert len(phantoms) <= 1  # the latest day's late refund at most: gone at the next day's first event
    # The phantoms leave nothing behind: the state stays within 4 KB apart from the ids of the refunds and
    # settlements counted in the last 32 days (kept so a re-send counts once: ~75 here, a refund a day, ~5.5 bytes
    # each), which come on top.
    assert len(replace(s, counted={}).to_bytes()) <= 4096
    assert len(s.to_bytes()) <= 4096 + 6 * sum(len(v) // HASH_HEX for v in s.counted.values())
    # The real receivables are all still there: the limit rests on the same eligible orders.
    clean = MerchantState("m1")
    for e in base:
        clean.apply(e)
    when = datetime.fromtimestamp(s.latest, UTC)
    assert compute_features(s, when)[INDEX["open_receivables_gmv"]] == \
        compute_features(clean, when)[INDEX["open_receivables_gmv"]]


def test_phantom_receivables_never_push_real_ones_out_of_the_bounded_table() -> None:
    s = MerchantState("m1")
    for e in steady(30, orders_per_day=2):
        s.apply(e)
    when = datetime.fromtimestamp(s.latest, UTC)
    before = compute_features(s, when)[INDEX["open_receivables_gmv"]]
    assert before > 0
    # 250 deliveries of orders this merchant never reported, all on the same day.
    t = datetime.fromtimestamp(s.latest, UTC)
    for i in range(250):
        s.apply(ev("order.delivered", {"order_id": f"ghost-{i}"}, t, f"ghost-{i}"))
    assert compute_features(s, when)[INDEX["open_receivables_gmv"]] == before


def test_events_older_than_the_window_arriving_late_leave_no_buckets_or_receivables() -> None:
    s = MerchantState("m1")
    for e in steady(60):
        s.apply(e)
    buckets, receivables = len(s.buckets), dict(s.receivables)
    for i in range(300):
        when = START - timedelta(days=40 + i)  # 100 to 400 days before the merchant's latest event
        for e in order(f"old-{i}", 5_000, when):
            s.apply(e)
        s.apply(ev("order.refunded", {"order_id": f"old-{i}", "refund_id": f"r-old-{i}", "amount": brl(10)},
                   when + timedelta(days=1), f"old-{i}-refund"))
    assert len(s.buckets) == buckets
    assert s.receivables == receivables
    assert len(s.to_bytes()) <= 4096


def test_a_year_of_silence_rolls_every_bucket_and_receivable_out() -> None:
    u = engine()
    feed(u, steady(60))
    assert u.state("m1").offer
    back = START + timedelta(days=60 + 365)
    out = feed(u, order("back-1", 8_000, back))
    s = u.state("m1")
    assert sorted(s.buckets) == [int(back.timestamp()) // 86_400]
    assert list(s.receivables) == ["back-1"]
    assert limits(out)[-1]["limit"]["amount"] == 0  # a year-old history is no history: nothing to lend on
    assert not [o for o in out if o["type"] == "loan_offer.created"]


def test_same_order_placed_twice_counts_once_and_cannot_raise_its_receivable() -> None:
    s = MerchantState("m1")
    for e in steady(60):
        s.apply(e)
    when = datetime.fromtimestamp(s.latest, UTC) + timedelta(hours=1)
    for e in order("dup-1", 10_000, when):
        s.apply(e)
    as_of = when + timedelta(hours=2)
    f1 = compute_features(s, as_of)
    # The same order re-sent under a fresh event id, later and for a hundred times the amount.
    s.apply(ev("order.placed", {"order_id": "dup-1", "buyer_id": "someone-else", "amount": brl(1_000_000)},
               when + timedelta(minutes=30), "dup-1-placed-again"))
    f2 = compute_features(s, as_of)
    for name in ("placed_gmv_7d", "placed_orders_7d", "open_receivables_gmv", "distinct_buyers_30d"):
        assert f2[INDEX[name]] == f1[INDEX[name]], name
    assert s.receivables["dup-1"][R_PLACED] == int(when.timestamp())


def test_order_paid_for_less_than_it_was_placed_finances_only_what_was_paid() -> None:
    s = MerchantState("m1")
    for e in steady(60):
        s.apply(e)
    when = datetime.fromtimestamp(s.latest, UTC) + timedelta(hours=1)
    placed, paid, shipped = order("under-1", 500_000, when)
    paid["data"]["amount"] = brl(5_000)
    for e in (paid, placed, shipped):  # paid seen first: the later placed must not raise the amount either
        s.apply(e)
    assert s.receivables["under-1"][0] == 5_000


def test_chargeback_seen_before_its_order_keeps_the_order_out_of_the_receivables() -> None:
    s = MerchantState("m1")
    for e in steady(60):
        s.apply(e)
    when = datetime.fromtimestamp(s.latest, UTC) + timedelta(hours=1)
    as_of = when + timedelta(hours=3)
    before = compute_features(s, as_of)[INDEX["open_receivables_gmv"]]
    s.apply(ev("order.chargeback", {"order_id": "cb-1", "chargeback_id": "c1", "amount": brl(20_000)},
               when, "cb-1-chargeback"))
    for e in order("cb-1", 20_000, when - timedelta(hours=1)):  # the order's own events arrive late
        s.apply(e)
    assert compute_features(s, as_of)[INDEX["open_receivables_gmv"]] == before


# ----- loans.v1 out of order and repeated ------------------------------------------------------------------------


def _loan(etype: str, data: dict[str, Any], when: datetime, eid: str) -> dict[str, Any]:
    return codec.new_event(etype, "m1", data, when, "floatbridge/disbursement", id=eid)


def _disbursed(loan_id: str, offer_id: str, when: datetime, eid: str) -> dict[str, Any]:
    return _loan("loan.disbursed", {"loan_id": loan_id, "offer_id": offer_id, "principal": brl(50_000),
                                    "fee": brl(500), "due_at": "2025-03-25T00:00:00Z", "payout_id": "p1"}, when, eid)


def test_loan_repaid_before_it_was_disbursed_and_repaid_again_counts_once_and_owes_nothing() -> None:
    u = engine()
    feed(u, steady(60))
    offer_id = u.state("m1").offer[0]
    t = END + timedelta(hours=1)
    feed(u, [
        _loan("loan.repayment_applied", {"loan_id": "L1", "settlement_id": "s1", "amount": brl(50_500),
                                         "remaining": brl(0)}, t, "rep-1"),
        _loan("loan.repaid", {"loan_id": "L1", "repaid_at": "2025-03-03T00:00:00Z"}, t + timedelta(minutes=1), "paid-1"),
        _disbursed("L1", offer_id, t - timedelta(hours=2), "disb-1"),  # the disbursement arrives last
        _loan("loan.repaid", {"loan_id": "L1", "repaid_at": "2025-03-03T00:00:00Z"}, t + timedelta(minutes=2),
              "paid-1-again"),
    ])
    s = u.state("m1")
    assert s.loans == {} and s.outstanding(s.latest) == 0
    f = compute_features(s, datetime.fromtimestamp(s.latest, UTC))
    assert f[INDEX["loans_repaid"]] == 1.0


def test_loan_disbursed_event_redelivered_after_repayment_does_not_revive_the_debt() -> None:
    u = engine()
    feed(u, steady(60))
    offer_id = u.state("m1").offer[0]
    t = END + timedelta(hours=1)
    feed(u, [_disbursed("L1", offer_id, t, "disb-1"),
             _loan("loan.repaid", {"loan_id": "L1", "repaid_at": "2025-03-05T00:00:00Z"}, t + timedelta(days=3), "paid-1")])
    filler = history("m1", t + timedelta(days=3), 20, Profile(), onboard=False, order_prefix="f")
    feed(u, filler)  # enough events that the redelivered id has left the recent-ids memory
    out = feed(u, [_disbursed("L1", offer_id, t, "disb-1-redelivered")])
    s = u.state("m1")
    assert s.loans == {} and s.outstanding(s.latest) == 0
    assert all(d["outstanding"]["amount"] == 0 for d in limits(out))


def test_loan_disbursed_re_sent_under_a_new_id_while_delinquent_keeps_the_repayments_and_the_freeze() -> None:
    u = engine()
    feed(u, steady(60))
    offer_id = u.state("m1").offer[0]
    t = END + timedelta(hours=1)
    feed(u, [
        _disbursed("L1", offer_id, t, "disb-1"),
        _loan("loan.repayment_applied", {"loan_id": "L1", "settlement_id": "s1", "amount": brl(20_500),
                                         "remaining": brl(30_000)}, t + timedelta(days=2), "rep-1"),
        _loan("loan.delinquent", {"loan_id": "L1", "days_past_due": 5, "bucket": "1-7", "remaining": brl(30_000)},
              t + timedelta(days=29), "dlq-1"),
    ])
    frozen = u.state("m1").last
    out = feed(u, [_disbursed("L1", offer_id, t, "disb-1-resent")])  # same loan, fresh event id
    s = u.state("m1")
    assert s.loans["L1"][:5] == [int(t.timestamp()), 50_500, 30_000, s.loans["L1"][3], 5]
    assert s.delinquent() and s.outstanding(s.latest) == 30_000
    assert s.last[0] == frozen[0] and s.last[1] == 0  # the limit stays frozen, nothing available
    assert all(d["available"]["amount"] == 0 for d in limits(out))
    assert not [o for o in out if o["type"] == "loan_offer.created"]


def _open_loan(u: Any) -> tuple[dict[str, Any], datetime, dict[str, int]]:
    """m1 with an accepted offer paid out as loan L1 (no new offers after it); its principal's exposure reserved."""
    feed(u, steady(60, category="electronics"))
    offer = u.state("m1").offer
    t = END + timedelta(hours=1)
    u.policy = PolicySettings(kill_switch=True)  # no new offer muddles the counters
    feed(u, [_loan("loan_offer.accepted", {"offer_id": offer[0]}, t, "acc-1"),
             _loan("loan.disbursed", {"loan_id": "L1", "offer_id": offer[0], "principal": brl(offer[1]),
                                      "fee": brl(2_000), "due_at": "2025-04-10T00:00:00Z", "payout_id": "p1"},
                   t + timedelta(minutes=1), "disb-1")])
    cats = u.portfolio.counters
    assert cats["cat:electronics:BRL"] == offer[1]
    return {"principal": offer[1], "fee": 2_000}, t, cats


def test_repayment_re_sent_under_a_new_id_releases_exposure_and_reduces_the_loan_once() -> None:
    u = engine()
    loan, t, cats = _open_loan(u)
    owed = loan["principal"] + loan["fee"]
    half = owed // 2
    rep = {"loan_id": "L1", "settlement_id": "s1", "amount": brl(half), "remaining": brl(owed - half)}
    feed(u, [_loan("loan.repayment_applied", rep, t + timedelta(days=3), "rep-1")])
    after_one = (cats["cat:electronics:BRL"], u.state("m1").loans["L1"][2])
    assert after_one == (owed - half, owed - half)  # fee first: the rest of the payment released principal
    feed(u, [_loan("loan.repayment_applied", rep, t + timedelta(days=3), "rep-1-resent"),
             _loan("loan.repayment_applied", rep, t + timedelta(days=4), "rep-1-resent-later")])
    assert (cats["cat:electronics:BRL"], u.state("m1").loans["L1"][2]) == after_one


@pytest.mark.parametrize("payments", [
    [2_000, None],  # the fee first, then the principal in one settlement
    [1_000, 30_000, None],  # part of the fee, then principal, then the rest
    [None],  # all in one settlement
])
def test_repayments_however_split_between_fee_and_principal_release_exactly_the_principal(
        payments: list[int | None]) -> None:
    u = engine()
    loan, t, cats = _open_loan(u)
    other = 7_000  # another loan's exposure in the same category must stay counted
    u.portfolio.reserve(0, "electronics", "BRL", other)
    remaining = loan["principal"] + loan["fee"]
    for n, amount in enumerate(payments):
        paid = remaining if amount is None else amount
        remaining -= paid
        feed(u, [_loan("loan.repayment_applied", {"loan_id": "L1", "settlement_id": f"s{n}", "amount": brl(paid),
                                                  "remaining": brl(remaining)}, t + timedelta(days=n + 1), f"rep-{n}")])
        assert cats["cat:electronics:BRL"] == other + min(remaining, loan["principal"])
    feed(u, [_loan("loan.repaid", {"loan_id": "L1", "repaid_at": "2025-03-10T00:00:00Z"}, t + timedelta(days=9),
                   "paid-1")])
    assert cats["cat:electronics:BRL"] == other  # released: the principal, not principal + fee


def test_loan_repaid_without_its_repayments_seen_releases_its_principal_once() -> None:
    u = engine()
    loan, t, cats = _open_loan(u)
    for n in range(2):
        feed(u, [_loan("loan.repaid", {"loan_id": "L1", "repaid_at": "2025-03-10T00:00:00Z"},
                       t + timedelta(days=9 + n), f"paid-{n}")])
        assert cats["cat:electronics:BRL"] == 0


# ----- money: one currency, amounts within the schema -----------------------------------------------------------


def test_order_in_another_currency_is_rejected_and_never_summed_with_the_merchants() -> None:
    u = engine()
    feed(u, steady(60))
    before = u.state("m1").to_dict()
    usd = order("usd-1", 1_000_000, END + timedelta(hours=1), currency="USD")
    with pytest.raises(StateError, match="currency"):
        u.handle(usd[0])
    out, errors = u.handle_batch(usd)
    assert [i for i, _ in errors] == [0, 1] and out == []  # shipped has no money: it applies, to an unknown order
    s = u.state("m1")
    assert s.to_dict()["b"] == before["b"]
    assert "usd-1" not in s.receivables or not s.receivables["usd-1"][R_PLACED]


def test_onboarding_again_in_another_currency_mid_stream_is_rejected() -> None:
    u = engine()
    feed(u, steady(60))
    again = ev("merchant.onboarded", {"category": "toys", "country": "US", "currency": "USD"},
               END + timedelta(hours=1), "onboard-again")
    with pytest.raises(StateError, match="currency"):
        u.handle(again)
    s = u.state("m1")
    assert (s.currency, s.category) == ("BRL", "electronics")


@pytest.mark.parametrize("amount", [2**63 - 1, 10**15 + 1])
def test_amount_beyond_the_schema_maximum_is_rejected(amount: int) -> None:
    u = engine()
    feed(u, steady(60))
    with pytest.raises(StateError, match="bad amount"):
        u.handle(order("huge-1", amount, END + timedelta(hours=1))[0])


def test_orders_at_the_schema_maximum_still_emit_schema_valid_decisions() -> None:
    u = engine()
    feed(u, steady(60))
    big = [e for i in range(20) for e in order(f"max-{i}", 10**15, END + timedelta(minutes=10 * i))]
    out = feed(u, big)  # feed validates every emitted event against its schema
    out += u.flush(END + timedelta(days=1))
    for o in out:
        assert codec.validate(o) == [], (o["type"], codec.validate(o))
    assert limits(out) and limits(out)[-1]["eligible_receivables"]["amount"] == 10**15


# ----- decisions ---------------------------------------------------------------------------------------------------


def test_withdrawal_names_each_reason_once() -> None:
    u = engine()
    feed(u, steady(60))
    assert u.state("m1").offer
    out = feed(u, [ev("merchant.updated", {"status": "suspended"}, END + timedelta(hours=1), "suspend")])
    withdrawn = [o["data"] for o in out if o["type"] == "loan_offer.withdrawn"]
    assert withdrawn and withdrawn[0]["reasons"][0]["code"] == "MERCHANT_SUSPENDED"
    codes = [r["code"] for r in withdrawn[0]["reasons"]]
    assert len(codes) == len(set(codes)), codes
    more = feed(u, history("m1", END + timedelta(hours=2), 5, Profile(), onboard=False, order_prefix="s"))
    assert not [o for o in more if o["type"] == "loan_offer.created"]


# ----- merchants the marketplace never onboarded ----------------------------------------------------------------


def test_merchant_never_onboarded_gets_no_offer_until_its_onboarding_arrives() -> None:
    events = steady(60)
    onboarding, rest = events[0], events[1:]
    assert onboarding["type"] == "merchant.onboarded"
    u = engine()
    out = feed(u, rest)
    assert limits(out) and all(d["limit"]["amount"] == 0 for d in limits(out))
    assert limits(out)[-1]["reasons"][0]["code"] == "MERCHANT_NOT_ONBOARDED"
    assert not [o for o in out if o["type"] == "loan_offer.created"]
    # The onboarding arrives late (placed by its own event time, before the first order): lending can start.
    out = feed(u, [onboarding])
    assert [o["type"] for o in out] == ["credit_limit.updated", "loan_offer.created"]
    assert u.state("m1").category == "electronics"


# ----- events that skipped ingest's validation (produced straight to the topic) -----------------------------------

_BAD = {
    "order id not a string": ("order.shipped", {"order_id": 5}),
    "settlement order id null": ("settlement.paid", {
        "settlement_id": "s-bad", "gross": brl(100), "fees": brl(0), "withheld": brl(0), "net": brl(100),
        "orders": [{"order_id": "o-m1-0-0", "amount": brl(50)}, {"order_id": None, "amount": brl(50)}]}),
    "data not an object": ("order.shipped", ["o-m1-0-0"]),
    "status not a string": ("merchant.updated", {"status": 5}),
    "status outside the enum": ("merchant.updated", {"status": "on hold"}),
    "charge-off without its amount": ("loan.charged_off", {"loan_id": "L9"}),
    "repayment without its amount": ("loan.repayment_applied", {"loan_id": "L9", "settlement_id": "s",
                                                                "remaining": brl(0)}),
    "disbursed with unhashable order ids": ("loan.disbursed", {
        "loan_id": "L9", "offer_id": "o9", "principal": brl(5_000), "fee": brl(50), "due_at": "2025-03-20T00:00:00Z",
        "payout_id": "p9", "order_ids": [["o-m1-0-0"]]}),
}


@pytest.mark.parametrize("case", sorted(_BAD))
def test_malformed_event_is_refused_without_stopping_the_batch_or_touching_the_state(case: str) -> None:
    u = engine()
    feed(u, steady(60))
    before = u.state("m1").to_dict()
    etype, data = _BAD[case]
    bad = ev(etype, {}, END + timedelta(hours=1), "bad-1")
    bad["data"] = data
    good = order("after-1", 9_000, END + timedelta(hours=2))
    out, errors = u.handle_batch([bad, *good])
    assert [i for i, _ in errors] == [0]
    assert all(codec.validate(o) == [] for o in out)
    after = u.state("m1")
    assert "after-1" in after.receivables  # the rest of the batch applied
    assert after.status == before["s"] and after.loans == before["l"] and after.loan_history == before["h"]


@pytest.mark.parametrize("eid", [None, "", "has space", "x" * 129])
def test_event_without_a_usable_id_is_refused_so_no_decision_names_an_invalid_trigger(eid: Any) -> None:
    u = engine()
    feed(u, steady(60))
    e = order("noid-1", 9_000, END + timedelta(hours=1))[0]
    if eid is None:
        del e["id"]
    else:
        e["id"] = eid
    out, errors = u.handle_batch([e, ev("merchant.updated", {"status": "suspended"}, END + timedelta(hours=2), "ok-1")])
    assert [i for i, _ in errors] == [0]
    assert out and all(codec.validate(o) == [] for o in out)
    assert "noid-1" not in u.state("m1").receivables


# ----- manipulation: diluting count-based rates ---------------------------------------------------------------------


@pytest.mark.parametrize("padding_amount", [0, 1])
def test_padding_the_history_with_tiny_orders_does_not_hide_refunds_and_chargebacks(padding_amount: int) -> None:
    from services.underwriter.domain.policy import decide_limit

    def decide(events: list[dict[str, Any]]) -> Any:
        s = MerchantState("m1")
        for e in sorted(events, key=lambda e: e["time"]):
            s.apply(e)
        f = compute_features(s, datetime.fromtimestamp(s.latest, UTC))
        return decide_limit(s, f, 0.01, [], s.latest, PolicySettings())

    risky = steady(60, refund_rate=0.15, chargeback_rate=0.05)
    # Forty orders a day of (almost) nothing, each from a new buyer: order counts grow twelvefold.
    padding = [ev("order.placed", {"order_id": f"pad-{d}-{k}", "buyer_id": f"pad-buyer-{d}-{k}",
                                   "amount": brl(padding_amount)}, START + timedelta(days=d, hours=1, minutes=k),
                  f"pad-{d}-{k}") for d in range(60) for k in range(40)]
    honest, padded = decide(risky), decide(risky + padding)
    assert {"REFUND_SURGE", "CHARGEBACKS"} <= {r.code for r in honest.reasons}
    assert {"REFUND_SURGE", "CHARGEBACKS"} <= {r.code for r in padded.reasons}
    assert padded.advance_rate_bps <= honest.advance_rate_bps


# ----- repayment history ----------------------------------------------------------------------------------------------


def test_repaying_on_time_grows_the_limit_and_repaying_late_does_not() -> None:
    from services.underwriter.domain.policy import decide_limit

    def limit_after(repaid_at: str | None, pd: float, policy: PolicySettings) -> int:
        s = MerchantState("m1")
        for e in steady(60):
            s.apply(e)
        t = END + timedelta(hours=1)
        if repaid_at is not None:
            s.apply(_disbursed("L1", "o1", t, "disb-1"))
            s.apply(_loan("loan.repaid", {"loan_id": "L1", "repaid_at": repaid_at}, t + timedelta(hours=1), "paid-1"))
        as_of = int((t + timedelta(hours=1)).timestamp())
        f = compute_features(s, datetime.fromtimestamp(as_of, UTC))
        return decide_limit(s, f, pd, [], as_of, policy).limit

    # The best tier with its receivables capped at the settled pace (the caps grow); the next tier (the rate grows).
    for pd, policy in ((0.01, PolicySettings(receivables_pace_bps=5_000)), (0.03, PolicySettings())):
        never = limit_after(None, pd, policy)
        on_time = limit_after("2025-03-02T02:00:00Z", pd, policy)
        late = limit_after("2025-03-30T00:00:00Z", pd, policy)  # due 2025-03-25
        assert never > 0
        assert on_time > never, pd
        assert late <= never


# ----- every offer, whatever the stream -----------------------------------------------------------------------------


def _hostile_stream(seed: int) -> list[dict[str, Any]]:
    """A steady merchant plus what a sloppy or hostile marketplace adds: orders re-placed for more, settlements
    before shipping, cancellations and refunds after payout, refunds beyond the order, chargebacks on unknown
    orders, late events, zero-amount and foreign-currency orders, all in event-time order with some jitter."""
    import random

    rng = random.Random(seed)
    events = history("m1", START, 75, Profile(orders_per_day=5, refund_rate=0.05, cancel_rate=0.05), seed=seed)
    orders = [e for e in events if e["type"] == "order.placed"]
    extra: list[dict[str, Any]] = []
    for n, placed in enumerate(rng.sample(orders, 60)):
        oid, amount, t = placed["data"]["order_id"], placed["data"]["amount"]["amount"], t_of(placed)
        kind = rng.randrange(8)
        later = t + timedelta(hours=rng.randrange(1, 24 * 20))
        if kind == 0:
            extra.append(ev("order.placed", {"order_id": oid, "buyer_id": "again", "amount": brl(amount * 50)}, later, f"h{n}"))
        elif kind == 1:
            extra.append(ev("settlement.paid", {"settlement_id": f"hs{n}", "gross": brl(amount), "fees": brl(0),
                                                "withheld": brl(0), "net": brl(amount),
                                                "orders": [{"order_id": oid, "amount": brl(amount)}]},
                            t + timedelta(hours=2), f"h{n}"))
        elif kind == 2:
            extra.append(ev("order.cancelled", {"order_id": oid}, later, f"h{n}"))
        elif kind == 3:
            extra.append(ev("order.refunded", {"order_id": oid, "refund_id": f"hr{n}", "amount": brl(amount * 3)}, later, f"h{n}"))
        elif kind == 4:
            extra.append(ev("order.chargeback", {"order_id": f"unknown-{n}", "chargeback_id": f"hc{n}",
                                                 "amount": brl(amount)}, later, f"h{n}"))
        elif kind == 5:
            extra += order(f"zero-{n}", 0, later)
        elif kind == 6:
            extra += order(f"usd-{n}", amount, later, currency="USD")
        else:
            extra.append(ev("order.refunded", {"order_id": oid, "refund_id": f"hp{n}", "amount": brl(amount // 2)},
                            later, f"h{n}-a"))
            extra.append(ev("order.refunded", {"order_id": oid, "refund_id": f"hq{n}", "amount": brl(amount // 2 + 1)},
                            later + timedelta(hours=1), f"h{n}-b"))
    stream = sorted(events + extra, key=lambda e: e["time"])
    # Some events arrive up to three days late.
    return sorted(stream, key=lambda e: t_of(e) + timedelta(hours=rng.choice([0, 0, 0, 0, 1, 30, 72])))


def _eligible_by_oracle(applied: list[dict[str, Any]], as_of: datetime) -> dict[str, int]:
    """Order id -> amount still owed by the buyer, for orders paid and shipped by `as_of`, placed within 60 days,
    not settled, cancelled or fully refunded by then: rebuilt from the applied events alone."""
    o: dict[str, dict[str, Any]] = {}
    for e in applied:
        t = t_of(e)
        if t > as_of:
            continue
        data = e["data"]
        ids = [x["order_id"] for x in data["orders"]] if e["type"] == "settlement.paid" else [data.get("order_id")]
        for oid in ids:
            r = o.setdefault(oid, {"amounts": [], "refunded": 0, "placed": None, "flags": set()})
            if e["type"] in ("order.placed", "order.paid"):
                r["amounts"].append(data["amount"]["amount"])
                r["placed"] = min(filter(None, [r["placed"], t]))
            if e["type"] in ("order.refunded", "order.chargeback"):
                r["refunded"] += data["amount"]["amount"]
            r["flags"].add(e["type"])
    out = {}
    for oid, r in o.items():
        if not {"order.paid", "order.shipped"} <= r["flags"] or {"settlement.paid", "order.cancelled"} & r["flags"]:
            continue
        if r["placed"] is None or as_of - r["placed"] >= timedelta(days=60):
            continue
        left = min(r["amounts"]) - r["refunded"]
        if left > 0:
            out[oid] = left
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_offer_on_a_hostile_stream_is_covered_by_eligible_orders_and_the_limit(seed: int) -> None:
    stream = _hostile_stream(seed)
    u = engine()
    applied: list[dict[str, Any]] = []
    emitted: list[dict[str, Any]] = []
    financed: set[str] = set()
    fed: list[dict[str, Any]] = []
    offers = 0
    for n, e in enumerate(stream):
        fed.append(e)
        out, errors = u.handle_batch([e])
        if not errors:
            applied.append(e)
        for o in out:
            assert codec.validate(o) == [], (o["type"], codec.validate(o))
        emitted += out
        for i, o in enumerate(out):
            if o["type"] != "loan_offer.created":
                continue
            offers += 1
            limit = [x for x in out[:i] if x["type"] == "credit_limit.updated"][-1]["data"]  # the same decision's
            amount, ids = o["data"]["amount"]["amount"], o["data"]["order_ids"]
            eligible = _eligible_by_oracle(applied, t_of(o))
            assert set(ids) <= eligible.keys(), set(ids) - eligible.keys()
            assert not set(ids) & financed
            assert amount <= limit["available"]["amount"]
            assert amount * 10_000 <= limit["advance_rate_bps"] * sum(eligible[i] for i in ids)
            if n % 3 == 0:  # some offers are taken: their orders are financed from then on
                loan = _loan("loan.disbursed", {"loan_id": f"L{n}", "offer_id": o["data"]["offer_id"],
                                                "principal": o["data"]["amount"], "fee": o["data"]["fee"],
                                                "due_at": o["data"]["due_at"], "payout_id": f"p{n}",
                                                "order_ids": ids}, t_of(o), f"disb-{n}")
                fed.append(loan)
                emitted += u.handle_batch([loan])[0]
                financed |= set(ids)
    assert offers >= 3
    # The same stream again gives the same decisions, event for event.
    again = engine()
    assert [o for e in fed for o in again.handle_batch([e])[0]] == emitted


# ----- bust-out ----------------------------------------------------------------------------------------------------


def test_bust_out_with_a_few_outsized_orders_cuts_the_rate_and_the_limit_does_not_follow() -> None:
    u = engine()
    out = feed(u, steady(60))
    before = limits(out)[-1]
    offered = [o["data"]["amount"]["amount"] for o in out if o["type"] == "loan_offer.created"][-1]
    # Sudden orders at 25 times the usual ticket, from fresh buyers, paid and shipped at once.
    big = [e for i in range(3) for e in order(f"big-{i}", 200_000, END + timedelta(hours=1, minutes=20 * i))]
    out = feed(u, big) + u.flush(END + timedelta(hours=3))
    after = limits(out)
    assert after, "the outsized orders are a risk signal: the limit is re-issued"
    for d in after:
        assert d["limit"]["amount"] <= before["limit"]["amount"] * 1.05
        assert d["advance_rate_bps"] < before["advance_rate_bps"]
    assert "LARGE_ORDERS" in {r["code"] for r in after[0]["reasons"]}
    assert all(o["data"]["amount"]["amount"] <= offered for o in out if o["type"] == "loan_offer.created")


def test_settlement_resent_under_a_new_event_id_does_not_count_its_sales_twice() -> None:
    s = MerchantState("m1")
    events = steady(60)
    for e in events:
        s.apply(e)
    last = [e for e in events if e["type"] == "settlement.paid"][-1]
    as_of = datetime.fromtimestamp(s.latest, UTC) + timedelta(hours=2)
    before = compute_features(s, as_of)
    again = dict(last, id=last["id"] + "-resent", time=(t_of(last) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    s.apply(again)
    # ... and an order listed twice in one settlement counts once too.
    twice = ev("settlement.paid", {"settlement_id": "s-twice", "gross": brl(2_000), "fees": brl(0), "withheld": brl(0),
                                   "net": brl(2_000), "orders": [{"order_id": "t-1", "amount": brl(1_000)},
                                                                 {"order_id": "t-1", "amount": brl(1_000)}]},
               t_of(last) + timedelta(hours=1), "s-twice")
    for e in order("t-1", 1_000, t_of(last) - timedelta(days=3)):
        s.apply(e)
    s.apply(twice)
    after = compute_features(s, as_of)
    for name in ("settled_gmv_7d", "settled_orders_7d", "settled_gmv_30d"):
        assert after[INDEX[name]] == before[INDEX[name]] + (1_000 if "gmv" in name else 1), name


def test_a_merchant_with_many_open_advances_keeps_its_overdue_one_and_its_whole_debt() -> None:
    # Merchants who take every offer hold dozens of advances at once (the demo with --accept all reaches 72).
    s = MerchantState("m1")
    for e in steady(60):
        s.apply(e)
    t = END + timedelta(hours=1)
    s.apply(_disbursed("L0", "o0", t, "disb-0"))
    s.apply(_loan("loan.delinquent", {"loan_id": "L0", "days_past_due": 3, "bucket": "1-7", "remaining": brl(50_500)},
                  t + timedelta(minutes=1), "late-0"))
    for i in range(1, 40):
        s.apply(_disbursed(f"L{i}", f"o{i}", t + timedelta(minutes=1 + i), f"disb-{i}"))
    assert s.delinquent()  # still frozen: the past-due advance was not forgotten to make room
    assert s.outstanding(s.latest) == 40 * 50_500


# ----- refunds, chargebacks and settlements re-sent under a fresh event id ------------------------------------------


def _totals(s: MerchantState) -> dict[str, int]:
    return {name: sum(b[field] for b in s.buckets.values()) for name, field in (
        ("refunds", REFUND_N), ("refunded", REFUND_GMV), ("chargebacks", CHARGEBACK_N),
        ("charged_back", CHARGEBACK_GMV), ("settled", SETTLED_N), ("settled_gmv", SETTLED_GMV))}


def _resent(e: dict[str, Any], when: datetime, suffix: str) -> dict[str, Any]:
    return dict(e, id=e["id"] + suffix, time=when.strftime("%Y-%m-%dT%H:%M:%SZ"))


def test_refund_resent_under_a_new_event_id_with_the_same_refund_id_counts_once() -> None:
    events = steady(60, refund_rate=0.1)
    s = MerchantState("m1")
    for e in events:
        s.apply(e)
    refund = [e for e in events if e["type"] == "order.refunded" and t_of(e) < END - timedelta(days=7)][-1]
    before, features_before = _totals(s), compute_features(s, datetime.fromtimestamp(s.latest, UTC))
    # Re-sent at its own time and again five days later (its receivable forgotten by then), each under a new id.
    assert s.apply(_resent(refund, t_of(refund), "-again")) is True
    assert s.apply(_resent(refund, t_of(refund) + timedelta(days=5), "-later")) is True
    assert _totals(s) == before
    assert compute_features(s, datetime.fromtimestamp(s.latest, UTC)) == features_before
    # Another refund of the same order (its own refund_id) still counts.
    other = dict(refund, id="other-refund", data=dict(refund["data"], refund_id="r-second", amount=brl(10)))
    s.apply(other)
    assert _totals(s)["refunds"] == before["refunds"] + 1 and _totals(s)["refunded"] == before["refunded"] + 10


def test_chargeback_resent_under_a_new_event_id_with_the_same_chargeback_id_counts_once() -> None:
    events = steady(60, chargeback_rate=0.05)
    s = MerchantState("m1")
    for e in events:
        s.apply(e)
    chargeback = [e for e in events if e["type"] == "order.chargeback"][-1]
    before = _totals(s)
    assert before["chargebacks"] > 0
    s.apply(_resent(chargeback, t_of(chargeback), "-again"))
    s.apply(_resent(chargeback, t_of(chargeback) + timedelta(days=20), "-later"))
    assert _totals(s) == before


def test_settlement_resent_under_a_new_event_id_more_than_two_days_later_counts_once() -> None:
    events = steady(60)
    s = MerchantState("m1")
    for e in events:
        s.apply(e)
    settlements = [e for e in events if e["type"] == "settlement.paid"]
    old = [e for e in settlements if t_of(e) < END - timedelta(days=10)][-1]  # its receivables are long forgotten
    as_of = datetime.fromtimestamp(s.latest, UTC)
    before, features_before = _totals(s), compute_features(s, as_of)
    s.apply(_resent(old, t_of(old), "-again"))  # its own time, ten days on
    s.apply(_resent(old, as_of, "-today"))  # or dated today
    assert _totals(s) == before
    assert compute_features(s, as_of) == features_before
    # The state round-trips what it remembers: a restored worker still counts it once.
    restored = MerchantState.from_bytes(s.to_bytes())
    restored.apply(_resent(old, as_of, "-after-restore"))
    assert _totals(restored) == before


def test_refund_and_settlement_ids_are_forgotten_with_the_window_that_reads_them() -> None:
    s = MerchantState("m1")
    for e in steady(60, refund_rate=0.1, chargeback_rate=0.05):
        s.apply(e)
    kinds = {key[0] for key in s.counted}
    assert kinds == {"r", "c", "s", "S"}  # "S": settlement ids older than 32 days, kept short
    today = s.latest // DAY
    for key in s.counted:
        assert int(key[1:]) * 7 + 6 > today - COUNTED_DAYS[key[0]]
    assert min(int(k[1:]) for k in s.counted if k[0] == "r") * 7 >= today - 32 - 6  # 32 days of refunds
    assert min(int(k[1:]) for k in s.counted if k[0] == "s") * 7 >= today - 32 - 6  # 32 days of full ones
    assert min(int(k[1:]) for k in s.counted if k[0] == "S") * 7 < today - 40  # 90 days of settlements
    assert min(int(k[1:]) for k in s.counted if k[0] == "c") * 7 < today - 40  # and of chargebacks


def test_a_flood_of_distinct_refunds_keeps_the_remembered_ids_bounded() -> None:
    s = MerchantState("m1")
    for e in steady(30):
        s.apply(e)
    t = START + timedelta(days=30)
    for i in range(400):
        s.apply(ev("order.refunded", {"order_id": f"f-{i}", "refund_id": f"flood-{i}", "amount": brl(1)},
                   t + timedelta(minutes=i), f"flood-{i}"))
    assert sum(map(len, s.counted.values())) <= MAX_COUNTED_IDS * HASH_HEX
    assert len(s.to_bytes()) <= 4096 + 6 * MAX_COUNTED_IDS
    # The latest ones are remembered: re-sent, they count nothing.
    before = _totals(s)
    s.apply(ev("order.refunded", {"order_id": "f-399", "refund_id": "flood-399", "amount": brl(1)},
               t + timedelta(hours=9), "flood-399-again"))
    assert _totals(s) == before
