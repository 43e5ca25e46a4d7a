"""Underwriter scenarios on hand-built states and synthetic histories (no servers)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas import codec
from services.underwriter.bootstrap import bootstrap
from services.underwriter.domain.features import FEATURE_NAMES, INDEX, compute_features
from services.underwriter.domain.policy import PolicySettings, decide_limit
from services.underwriter.domain.scoring import FixedScorer
from services.underwriter.domain.state import MerchantState, StateError
from services.underwriter.settings import load
from services.underwriter.synthetic import Profile, history

pytestmark = pytest.mark.unit

START = datetime(2025, 1, 1, tzinfo=UTC)


def engine(**policy: Any) -> Any:
    return bootstrap(settings=load(debounce_seconds=30), scorer=FixedScorer(0.01), policy=PolicySettings(**policy))


def run(events: list[dict[str, Any]], **policy: Any) -> tuple[Any, list[dict[str, Any]]]:
    u = engine(**policy)
    out: list[dict[str, Any]] = []
    for e in events:
        out += u.handle(e)
    return u, out


def last_limit(out: list[dict[str, Any]]) -> dict[str, Any]:
    return [o for o in out if o["type"] == "credit_limit.updated"][-1]["data"]


def build(events: list[dict[str, Any]], mid: str = "m1") -> MerchantState:
    s = MerchantState(mid)
    for e in events:
        s.apply(e)
    return s


def limit_of(state: MerchantState, pd: float = 0.01, p: PolicySettings | None = None) -> Any:
    f = compute_features(state, datetime.fromtimestamp(state.latest, UTC))
    return decide_limit(state, f, pd, [], state.latest, p or PolicySettings())


def test_steady_merchant_gets_a_limit_and_an_offer() -> None:
    _, out = run(history("m1", START, 60, Profile()))
    data = last_limit(out)
    assert data["limit"]["amount"] > 0
    assert data["available"]["amount"] == data["limit"]["amount"]
    assert data["pd"] == 0.01 and data["model_version"] == "fixed-0"
    offers = [o for o in out if o["type"] == "loan_offer.created"]
    assert offers
    for o in out:
        assert codec.validate(o) == [], o
    offer = offers[-1]["data"]
    assert 0 < offer["fee"]["amount"] < offer["amount"]["amount"] // 10
    assert len(offer["apr"].split(".")[1]) == 4 and offer["order_ids"]
    assert offer["due_at"] > offer["expires_at"] > offers[-1]["time"]


def test_new_merchant_gets_no_limit() -> None:
    _, out = run(history("m1", START, 8, Profile()))
    data = last_limit(out)
    assert data["limit"]["amount"] == 0
    assert data["reasons"][0]["code"] == "INSUFFICIENT_HISTORY"
    assert not [o for o in out if o["type"] == "loan_offer.created"]


def test_brushing_merchant_does_not_see_its_limit_rise_in_step() -> None:
    base = history("m1", START, 60, Profile(orders_per_day=4))
    before = limit_of(build(base))
    # Orders triple for a week, from five buyers, with many cancellations.
    fake = history("m1", START + timedelta(days=53), 7, Profile(orders_per_day=8, buyers=5, cancel_rate=0.3),
                   onboard=False, order_prefix="fake")
    after_state = build(sorted(base + fake, key=lambda e: e["time"]))
    after = limit_of(after_state)
    f = compute_features(after_state, datetime.fromtimestamp(after_state.latest, UTC))
    assert f[INDEX["placed_gmv_7d"]] >= 2.5 * compute_features(build(base), datetime.fromtimestamp(build(base).latest, UTC))[INDEX["placed_gmv_7d"]]
    assert before.limit > 0
    assert after.limit <= before.limit * 1.2
    codes = {r.code for r in after.reasons}
    assert {"GMV_SPIKE", "CANCEL_SURGE"} <= codes


def test_merchant_selling_to_a_few_repeat_buyers_is_cut_as_self_dealing() -> None:
    honest = limit_of(build(history("m1", START, 60, Profile())))
    dealing = limit_of(build(history("m1", START, 60, Profile(buyers=3))))
    codes = {r.code for r in dealing.reasons}
    assert {"SELF_DEALING_PATTERN", "BUYER_CONCENTRATION"} <= codes
    assert dealing.advance_rate_bps <= honest.advance_rate_bps // 8


def test_refund_surge_cuts_the_advance_rate_and_names_it() -> None:
    steady = build(history("m1", START, 60, Profile(refund_rate=0.0)))
    surging = build(history("m1", START, 60, Profile(refund_rate=0.0))
                    + history("m1", START + timedelta(days=50), 10, Profile(refund_rate=0.5), onboard=False, order_prefix="r"))
    a, b = limit_of(steady), limit_of(surging)
    assert b.advance_rate_bps == a.advance_rate_bps // 2
    surge = [r for r in b.reasons if r.code == "REFUND_SURGE"]
    assert surge and "refund rate rose to" in surge[0].text and "%" in surge[0].text


def test_chargebacks_cut_the_advance_rate() -> None:
    s = build(history("m1", START, 60, Profile(chargeback_rate=0.05)))
    d = limit_of(s)
    assert d.advance_rate_bps == 4000
    assert any(r.code == "CHARGEBACKS" for r in d.reasons)


def _loan_event(etype: str, data: dict[str, Any], t: datetime, n: int) -> dict[str, Any]:
    return codec.new_event(etype, "m1", data, t, "floatbridge/disbursement", id=f"loan-ev-{n}")


def test_delinquent_merchant_has_limit_frozen_and_offer_withdrawn() -> None:
    events = history("m1", START, 60, Profile())
    u, out = run(events)
    offer = [o for o in out if o["type"] == "loan_offer.created"][-1]["data"]
    frozen_limit = last_limit(out)["limit"]["amount"]
    t = START + timedelta(days=60, hours=1)
    assert u.state("m1").offer
    brl = lambda a: {"amount": a, "currency": "BRL"}  # noqa: E731
    out1 = u.handle(_loan_event("loan.disbursed", {"loan_id": "L1", "offer_id": "other", "principal": brl(5000), "fee": brl(50),
                                            "due_at": "2025-03-05T00:00:00Z", "payout_id": "p1"}, t, 1))
    created = [o for o in out1 if o["type"] == "loan_offer.created"]
    offer = created[-1]["data"] if created else offer
    out2 = u.handle(_loan_event("loan.delinquent", {"loan_id": "L1", "days_past_due": 9, "bucket": "8-30",
                                                    "remaining": brl(5050)}, t + timedelta(hours=1), 2))
    kinds = [o["type"] for o in out2]
    assert "loan_offer.withdrawn" in kinds
    withdrawn = [o for o in out2 if o["type"] == "loan_offer.withdrawn"][0]["data"]
    assert withdrawn["offer_id"] == offer["offer_id"] and withdrawn["reasons"][0]["code"] == "DELINQUENT"
    upd = [o for o in out2 if o["type"] == "credit_limit.updated"][0]["data"]
    assert upd["limit"]["amount"] == frozen_limit and upd["available"]["amount"] == 0
    # More sales while delinquent: no new offer.
    later = history("m1", START + timedelta(days=60, hours=3), 3, Profile(), onboard=False, order_prefix="late")
    more = [o for e in later for o in u.handle(e)]
    assert not [o for o in more if o["type"] == "loan_offer.created"]


def test_out_of_order_events_give_the_same_state_as_in_order() -> None:
    events = history("m1", START, 30, Profile())
    rng = random.Random(7)
    # Every event up to two days late, in random order (events of the same order overtake each other).
    jitter = {e["id"]: rng.uniform(0, 2 * 86_400) for e in events}
    shuffled = sorted(events, key=lambda e: datetime.fromisoformat(e["time"]).timestamp() + jitter[e["id"]])
    assert shuffled != events
    a, b = build(events), build(shuffled)
    when = datetime.fromtimestamp(a.latest, UTC)
    assert a.latest == b.latest
    assert compute_features(a, when) == compute_features(b, when)
    assert a.buckets == b.buckets and a.buyers == b.buyers
    assert {k: v for k, v in a.receivables.items()} == b.receivables


def test_settlement_before_shipping_never_resurrects_the_order() -> None:
    all_events = history("m1", START, 10, Profile(orders_per_day=1, cancel_rate=0, refund_rate=0))
    oid = next(e["data"]["order_id"] for e in all_events if e["type"] == "order.placed")
    ev = {e["type"]: e for e in all_events if e["data"].get("order_id") == oid}
    ev["settlement.paid"] = next(e for e in all_events if e["type"] == "settlement.paid"
                                 and oid in [o["order_id"] for o in e["data"]["orders"]])
    s = MerchantState("m1")
    for etype in ("order.placed", "order.paid", "settlement.paid", "order.shipped", "order.delivered"):
        s.apply(ev[etype])
    when = datetime.fromtimestamp(s.latest, UTC) + timedelta(days=1)
    assert compute_features(s, when)[INDEX["open_receivables_count"]] == 0


def test_duplicate_events_are_ignored() -> None:
    events = history("m1", START, 30, Profile())
    u, out = run(events)
    before = u.state("m1").to_dict()
    again = [o for e in events[-40:] for o in u.handle(e)]
    assert again == []
    assert u.state("m1").to_dict() == before


def test_features_at_t_are_unchanged_by_events_after_t() -> None:
    events = history("m1", START, 40, Profile())
    cut = (START + timedelta(days=30, hours=12)).strftime("%Y-%m-%dT%H:%M:%SZ")
    t = START + timedelta(days=30, hours=12)
    before = build([e for e in events if e["time"] <= cut])
    # Events up to one day later: orders, shipping, settlements of orders placed before t.
    horizon = (t + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    after = build([e for e in events if e["time"] <= horizon])
    # Bucket features are daily: compare as of the end of the previous day.
    as_of = t.replace(hour=0) - timedelta(seconds=1)
    assert compute_features(before, as_of) == compute_features(after, as_of)
    assert len(FEATURE_NAMES) == len(compute_features(after, as_of))


def test_state_round_trips_and_stays_small() -> None:
    s = build(history("m1", START, 90, Profile(orders_per_day=4)))
    raw = s.to_bytes()
    assert MerchantState.from_bytes(raw) == s
    assert len(raw) <= 4096


def test_event_for_another_merchant_is_rejected() -> None:
    e = history("m2", START, 1, Profile())[0]
    with pytest.raises(StateError, match="not 'm1'"):
        MerchantState("m1").apply(e)


def test_kill_switch_withdraws_the_open_offer_and_stops_new_ones() -> None:
    events = history("m1", START, 60, Profile())
    u, out = run(events)
    assert u.state("m1").offer
    u.policy = PolicySettings(kill_switch=True)
    more = [o for e in history("m1", START + timedelta(days=60), 2, Profile(), onboard=False, order_prefix="k")
            for o in u.handle(e)]
    assert any(o["type"] == "loan_offer.withdrawn" and o["data"]["reasons"][0]["code"] == "KILL_SWITCH" for o in more)
    assert not any(o["type"] == "loan_offer.created" for o in more)


def test_burst_of_orders_is_debounced_and_flushed_within_the_bound() -> None:
    u = engine()
    for e in history("m1", START, 60, Profile()):
        u.handle(e)
    t = START + timedelta(days=60, hours=2)
    scored_before = u.state("m1").last_scored
    burst = []
    for i in range(50):
        when = t + timedelta(seconds=i / 2)
        money = {"amount": 1000, "currency": "BRL"}
        burst.append(codec.new_event("order.placed", "m1", {"order_id": f"b{i}", "buyer_id": f"x{i}", "amount": money},
                                     when, "test", id=f"burst-{i}"))
    outs = [u.handle(e) for e in burst]
    assert u.state("m1").last_scored in (scored_before, int(t.timestamp()))  # at most the first one scored
    assert sum(1 for o in outs if o) <= 1
    assert "m1" in u.pending
    assert u.flush(t + timedelta(seconds=10)) == [] and "m1" in u.pending
    u.flush(t + timedelta(seconds=80))
    assert "m1" not in u.pending
    assert u.state("m1").last_scored == int((t + timedelta(seconds=24.5)).timestamp())


def test_replayed_decisions_have_the_same_event_ids() -> None:
    events = history("m1", START, 45, Profile())
    _, a = run(events)
    _, b = run(events)
    assert [o["id"] for o in a] == [o["id"] for o in b] and len({o["id"] for o in a}) == len(a)


# ----- portfolio exposure follows the category it was reserved in ----------------------------------------------


def _portfolio_run() -> tuple[Any, dict[str, Any], datetime]:
    events = history("m1", START, 60, Profile(category="electronics"))
    u, out = run(events)
    offer = [o for o in out if o["type"] == "loan_offer.created"][-1]["data"]
    assert u.state("m1").offer[0] == offer["offer_id"]
    assert u.portfolio.counters["cat:electronics:BRL"] == offer["amount"]["amount"]
    return u, offer, START + timedelta(days=60, hours=1)


def _ev(etype: str, data: dict[str, Any], when: datetime, eid: str) -> dict[str, Any]:
    return codec.new_event(etype, "m1", data, when, "test", id=eid)


def test_repayments_and_charge_offs_after_a_category_change_release_the_category_the_loan_was_reserved_in() -> None:
    u, offer, t = _portfolio_run()
    amount = offer["amount"]["amount"]
    u.policy = PolicySettings(kill_switch=True)  # no new offer muddles the counters
    cats = u.portfolio.counters
    u.handle(_ev("loan_offer.accepted", {"offer_id": offer["offer_id"]}, t, "acc-1"))
    # The merchant moves to another category between the acceptance and the payout.
    u.handle(_ev("merchant.updated", {"category": "books"}, t + timedelta(minutes=1), "upd-1"))
    u.handle(_ev("loan.disbursed", {"loan_id": "L1", "offer_id": offer["offer_id"], "principal": offer["amount"],
                                    "fee": offer["fee"], "due_at": offer["due_at"], "payout_id": "p1",
                                    "order_ids": offer["order_ids"]}, t + timedelta(minutes=2), "disb-1"))
    assert u.state("m1").category == "books"
    assert (cats["cat:electronics:BRL"], cats.get("cat:books:BRL", 0)) == (amount, 0)
    quarter, fee = amount // 4, offer["fee"]["amount"]
    left = amount + fee - quarter
    u.handle(_ev("loan.repayment_applied", {"loan_id": "L1", "settlement_id": "s1", "amount": brl(quarter),
                                            "remaining": brl(left)}, t + timedelta(days=1), "rep-1"))
    # Its fee is paid first (the exposure reserved was the principal): the rest of it releases principal.
    assert quarter > fee
    assert (cats["cat:electronics:BRL"], cats.get("cat:books:BRL", 0)) == (left, 0)
    u.handle(_ev("loan.charged_off", {"loan_id": "L1", "amount": brl(left)}, t + timedelta(days=40), "co-1"))
    assert cats["cat:electronics:BRL"] == 0  # what the loan still held: all its principal is released
    # The charge-off re-sent under a new event id, and a recovery after it, release nothing more.
    u.handle(_ev("loan.charged_off", {"loan_id": "L1", "amount": brl(left)}, t + timedelta(days=41), "co-2"))
    u.handle(_ev("loan.repayment_applied", {"loan_id": "L1", "settlement_id": "s2", "amount": brl(quarter),
                                            "remaining": brl(0)}, t + timedelta(days=42), "rep-2"))
    assert (cats["cat:electronics:BRL"], cats.get("cat:books:BRL", 0)) == (0, 0)


def test_open_offer_withdrawn_after_a_category_change_is_released_where_it_was_reserved() -> None:
    u, offer, t = _portfolio_run()
    cats = u.portfolio.counters
    u.handle(_ev("merchant.updated", {"category": "books"}, t, "upd-1"))
    assert u.state("m1").offer[0] == offer["offer_id"]  # not stale: kept
    u.policy = PolicySettings(kill_switch=True)
    out = u.handle(_ev("merchant.updated", {"status": "active"}, t + timedelta(minutes=1), "upd-2"))
    assert [o["data"]["offer_id"] for o in out if o["type"] == "loan_offer.withdrawn"] == [offer["offer_id"]]
    assert (cats["cat:electronics:BRL"], cats.get("cat:books:BRL", 0)) == (0, 0)


def test_state_saved_before_loans_remembered_their_category_still_loads_and_releases_the_current_one() -> None:
    s = build(history("m1", START, 30, Profile()))
    s.loans["L0"] = [s.latest, 1_000, 1_000, s.latest + 10 * 86_400, 0]  # a five-field row of an older state
    restored = MerchantState.from_bytes(s.to_bytes())
    charge_off = _ev("loan.charged_off", {"loan_id": "L0", "amount": brl(400)}, START + timedelta(days=30), "co-0")
    assert restored.release_of(charge_off) == ("electronics", 400)
    restored.apply(charge_off)
    assert restored.release_of(dict(charge_off, id="co-0-again")) is None


def brl(amount: int) -> dict[str, Any]:
    return {"amount": amount, "currency": "BRL"}
