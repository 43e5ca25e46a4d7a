"""Third round of streams a merchant gaming its limit or a marketplace with messy data sends, through the core.

Each test names the stream it feeds and what a lender expects of the limit and the offers (DESIGN.md: Events,
The loan product, Underwriting).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas import codec
from services.underwriter.domain.features import INDEX, compute_features
from services.underwriter.domain.policy import LimitDecision, PolicySettings, decide_limit
from services.underwriter.domain.state import MAX_LOAN_HISTORY, MAX_LOANS, MAX_RECEIVABLES, MerchantState
from tests.unit.underwriter_helpers import END, brl, engine, ev, feed, limits, order, steady

pytestmark = pytest.mark.unit


def rfc(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def codes(d: dict[str, Any]) -> set[str]:
    return {r["code"] for r in d["reasons"]}


def decided(s: MerchantState, **policy: Any) -> LimitDecision:
    f = compute_features(s, datetime.fromtimestamp(s.latest, UTC))
    return decide_limit(s, f, 0.01, [], s.latest, PolicySettings(**policy))


def applied(events: list[dict[str, Any]]) -> MerchantState:
    s = MerchantState("m1")
    for e in events:
        s.apply(e)
    return s


def loan_ev(etype: str, data: dict[str, Any], when: datetime, eid: str) -> dict[str, Any]:
    return codec.new_event(etype, "m1", data, when, "floatbridge/disbursement", id=eid)


def disbursed(loan_id: str, when: datetime, principal: int = 50_000, offer_id: str = "o-x",
              order_ids: list[str] | None = None) -> dict[str, Any]:
    return loan_ev("loan.disbursed", {
        "loan_id": loan_id, "offer_id": offer_id, "principal": brl(principal), "fee": brl(principal // 100),
        "due_at": rfc(when + timedelta(days=20)), "payout_id": f"p-{loan_id}", "order_ids": order_ids or []},
        when, f"disb-{loan_id}")


def offered_orders(out: list[dict[str, Any]]) -> set[str]:
    return {o for e in out if e["type"] == "loan_offer.created" for o in e["data"]["order_ids"]}


# ----- receivables: what is lent against -------------------------------------------------------------------------


def test_orders_paid_and_shipped_without_their_placement_are_not_lent_against_until_it_arrives() -> None:
    # A burst of orders sent as order.paid + order.shipped only: no placement, so no placed sales (the spike and
    # placed-vs-settled guards never see them) and no buyer (the buyer-diversity cap never sees them). Sent with
    # their placements, the same burst fires GMV_SPIKE; without them it must not be lent against at all.
    burst = [e for i in range(60) for e in order(f"x{i}", 8_000, END + timedelta(hours=1, minutes=i))]
    placements = [e for e in burst if e["type"] == "order.placed"]
    unplaced = [e for e in burst if e["type"] != "order.placed"]
    base = decided(applied(steady(60)))
    with_placement = decided(applied(steady(60) + burst))
    without = applied(steady(60) + unplaced)
    d = decided(without)
    assert "GMV_SPIKE" in with_placement.codes
    assert d.eligible == base.eligible  # none of the unplaced orders is a receivable
    assert not {r.order_id for r in d.receivables} & {f"x{i}" for i in range(60)}
    assert d.limit == base.limit  # they add nothing: before the fix they bought twice the spiking merchant's limit
    # Their placements arrive late: now they are receivables, and the spike they make is seen.
    for e in placements:
        without.apply(e)
    late = decided(without)
    assert late.eligible == with_placement.eligible
    assert "GMV_SPIKE" in late.codes and late.limit == with_placement.limit


def test_an_order_charged_back_in_part_is_no_longer_lent_against() -> None:
    # A buyer disputes an order: whatever part the chargeback names, the payout of that order is contested.
    when = END + timedelta(hours=1)
    s = applied(steady(60) + order("cb-part", 40_000, when))
    assert "cb-part" in {r.order_id for r in decided(s).receivables}
    s.apply(ev("order.chargeback", {"order_id": "cb-part", "chargeback_id": "cb-1", "amount": brl(100)},
               when + timedelta(hours=2), "cb-part-1"))
    assert "cb-part" not in {r.order_id for r in decided(s).receivables}
    # And through the engine: no offer made after the chargeback names it.
    u = engine()
    feed(u, steady(60))
    feed(u, order("cb-part", 40_000, when))
    out = feed(u, [ev("order.chargeback", {"order_id": "cb-part", "chargeback_id": "cb-1", "amount": brl(100)},
                      when + timedelta(hours=2), "cb-part-1"),
                   *order("after-cb", 30_000, when + timedelta(hours=3))])
    assert "cb-part" not in offered_orders(out)


def test_a_refund_re_sent_under_its_id_with_a_larger_amount_counts_once_but_closes_the_order() -> None:
    # The marketplace amends refund r-1 of an order from 1.00 to the whole order (same refund_id, new event id):
    # the refund rates count it once, but the order is refunded in full and must not back an advance.
    when = END + timedelta(hours=1)
    s = applied(steady(60) + order("amend", 40_000, when))
    s.apply(ev("order.refunded", {"order_id": "amend", "refund_id": "r-1", "amount": brl(100)},
               when + timedelta(hours=2), "amend-r1"))
    f1 = compute_features(s, datetime.fromtimestamp(s.latest, UTC))
    s.apply(ev("order.refunded", {"order_id": "amend", "refund_id": "r-1", "amount": brl(40_000)},
               when + timedelta(hours=3), "amend-r1-amended"))
    f2 = compute_features(s, datetime.fromtimestamp(s.latest, UTC))
    assert f2[INDEX["refund_rate_7d"]] == f1[INDEX["refund_rate_7d"]]  # one refund, counted once
    assert "amend" not in {r.order_id for r in decided(s).receivables}
    # The same refund re-sent with the same amount takes nothing more off the order.
    t = applied(steady(60) + order("twice", 40_000, when))
    for n in range(2):
        t.apply(ev("order.refunded", {"order_id": "twice", "refund_id": "r-2", "amount": brl(10_000)},
                   when + timedelta(hours=2 + n), f"twice-r2-{n}"))
    assert {r.order_id: r.amount for r in decided(t).receivables}["twice"] == 30_000


# ----- loans: charge-offs, delinquency, many advances ------------------------------------------------------------


def test_a_charge_off_is_never_pushed_out_of_the_loan_history_by_later_repayments() -> None:
    # After a charge-off the merchant is never lent to again: not after two dozen loan.repaid naming loans this
    # merchant never had (messy data), nor after its other open advances are repaid one by one.
    u = engine()
    feed(u, steady(60))
    t = END
    out = feed(u, [disbursed("L0", t), loan_ev("loan.charged_off", {"loan_id": "L0", "amount": brl(50_500)},
                                               t + timedelta(hours=1), "co-L0")])
    assert "CHARGED_OFF" in codes(limits(out)[-1])
    later = t + timedelta(hours=2)
    stream = [loan_ev("loan.repaid", {"loan_id": f"other-{i}", "repaid_at": rfc(later)},
                      later + timedelta(minutes=i), f"rp-other-{i}") for i in range(MAX_LOAN_HISTORY + 6)]
    stream += [e for i in range(5) for e in order(f"n{i}", 9_000, later + timedelta(hours=1, minutes=i))]
    out = feed(u, stream)
    s = u.state("m1")
    assert s.charged_off()
    assert compute_features(s, datetime.fromtimestamp(s.latest, UTC))[INDEX["loans_charged_off"]] == 1.0
    assert not [e for e in out if e["type"] == "loan_offer.created"]
    assert all(d["limit"]["amount"] == 0 and "CHARGED_OFF" in codes(d) for d in limits(out))
    # Real advances repaid later push nothing out either.
    s2 = applied(steady(60) + [disbursed("L0", t), loan_ev("loan.charged_off", {
        "loan_id": "L0", "amount": brl(50_500)}, t + timedelta(hours=1), "co-L0")])
    for i in range(MAX_LOAN_HISTORY + 6):
        at = t + timedelta(hours=2, minutes=2 * i)
        s2.apply(disbursed(f"L{i + 1}", at, principal=20_000))
        s2.apply(loan_ev("loan.repaid", {"loan_id": f"L{i + 1}", "repaid_at": rfc(at)}, at + timedelta(minutes=1),
                         f"rp-L{i + 1}"))
    assert s2.charged_off() and decided(s2).limit == 0 and decided(s2).blocked


def test_a_delinquency_notice_for_a_loan_whose_disbursement_was_never_applied_still_freezes_the_limit() -> None:
    # The loan's loan.disbursed never reached the state (dead-lettered, say); disbursement then says the loan
    # is 5 days past due. No offer while it is, and the limit is frozen, until the loan is repaid.
    u = engine()
    feed(u, steady(60))
    assert u.state("m1").offer, "a steady merchant has an open offer"
    t = END + timedelta(hours=1)
    out = feed(u, [loan_ev("loan.delinquent", {"loan_id": "ghost", "days_past_due": 5, "bucket": "1-7",
                                               "remaining": brl(30_000)}, t, "dq-ghost")])
    assert [e["type"] for e in out if e["type"].startswith("loan_offer")] == ["loan_offer.withdrawn"]
    assert all("DELINQUENT" in codes(d) and d["available"]["amount"] == 0 for d in limits(out))
    frozen = limits(out)[-1]
    assert frozen["outstanding"]["amount"] >= 30_000
    out = feed(u, [e for i in range(3) for e in order(f"q{i}", 20_000, t + timedelta(hours=1, minutes=i))]
               + [ev("settlement.paid", {"settlement_id": "s-q", "gross": brl(0), "fees": brl(0), "withheld": brl(0),
                                         "net": brl(0), "orders": []}, t + timedelta(hours=2), "s-q")])
    assert not [e for e in out if e["type"] == "loan_offer.created"]
    assert all(d["limit"]["amount"] <= frozen["limit"]["amount"] for d in limits(out))
    repaid = loan_ev("loan.repaid", {"loan_id": "ghost", "repaid_at": rfc(t + timedelta(hours=3))},
                     t + timedelta(hours=3), "rp-ghost")
    assert u.state("m1").release_of(repaid) is None  # nothing was reserved for it here: nothing to release
    out = feed(u, [repaid])
    s = u.state("m1")
    assert not s.delinquent() and s.outstanding(s.latest) == 0
    assert [e for e in out if e["type"] == "loan_offer.created"], "repaid: lending resumes"
    # Late (after the repayment) the notice changes nothing.
    feed(u, [loan_ev("loan.delinquent", {"loan_id": "ghost", "days_past_due": 6, "bucket": "1-7",
                                         "remaining": brl(30_000)}, t + timedelta(hours=4), "dq-ghost-late")])
    assert not u.state("m1").delinquent()


def test_a_delinquency_seen_before_its_disbursement_keeps_the_loan_delinquent_and_its_exposure_releasable() -> None:
    t = END + timedelta(hours=1)
    s = applied(steady(60))
    s.apply(loan_ev("loan.delinquent", {"loan_id": "L9", "days_past_due": 3, "bucket": "1-7",
                                        "remaining": brl(40_000)}, t, "dq-L9"))
    s.apply(disbursed("L9", t - timedelta(days=25), principal=50_000))  # arrives after the notice
    assert s.delinquent() and s.outstanding(s.latest) == 40_000
    repaid = loan_ev("loan.repaid", {"loan_id": "L9", "repaid_at": rfc(t + timedelta(hours=1))},
                     t + timedelta(hours=1), "rp-L9")
    # Nothing was released for it before its disbursement was known: its repayment releases its whole principal.
    assert s.release_of(repaid) == ("electronics", 50_000)
    s.apply(repaid)
    assert not s.delinquent() and s.outstanding(s.latest) == 0


def test_many_small_advances_never_take_the_merchant_past_what_it_owes() -> None:
    # A merchant takes every offer as soon as it is made, one small order at a time: dozens of small advances
    # open at once. What is reported outstanding stays what the merchant owes, and no offer is made once the
    # state holds as many open advances as it can track (forgetting one would understate the debt).
    u = engine(min_offer_minor=100)
    feed(u, steady(60))
    t, owed, taken = END, 0, 0
    for i in range(MAX_LOANS + 20):
        t += timedelta(minutes=30)
        out = feed(u, order(f"z{i}", 200, t))
        s = u.state("m1")
        for d in limits(out):
            assert d["outstanding"]["amount"] == owed
            assert d["available"]["amount"] <= max(0, d["limit"]["amount"] - owed)
        if not s.offer:
            continue
        created = [e for e in out if e["type"] == "loan_offer.created"]
        offer_id, amount = s.offer[0], int(s.offer[1])
        t += timedelta(minutes=1)
        feed(u, [loan_ev("loan_offer.accepted", {"offer_id": offer_id, "loan_id": f"L{i}", "accepted_at": rfc(t)},
                         t, f"acc-{i}")])
        t += timedelta(minutes=1)
        feed(u, [loan_ev("loan.disbursed", {
            "loan_id": f"L{i}", "offer_id": offer_id, "principal": brl(amount), "fee": brl(1),
            "due_at": rfc(t + timedelta(days=20)), "payout_id": f"p{i}",
            "order_ids": created[-1]["data"]["order_ids"] if created else []}, t, f"disb-{i}")])
        owed += amount + 1
        taken += 1
    s = u.state("m1")
    assert taken == MAX_LOANS  # it took every offer it could: the cap, not the limit, stopped it
    assert len(s.loans) == taken and s.outstanding(s.latest) == owed
    d = decided(s, min_offer_minor=100)
    assert d.available == 0 and "OPEN_ADVANCES_CAP" in d.codes


def test_a_loan_disbursed_without_its_order_ids_leaves_no_order_of_its_offer_to_be_financed_again() -> None:
    # order_ids is optional in loan.disbursed: a disbursement that leaves it out must not let the next offer name
    # the receivables the accepted offer advanced against (double financing). Orders placed after the loan can.
    u = engine()
    out = feed(u, steady(60))
    created = [e for e in out if e["type"] == "loan_offer.created"][-1]["data"]
    t = END + timedelta(hours=1)
    feed(u, [loan_ev("loan_offer.accepted", {"offer_id": created["offer_id"], "loan_id": "L1",
                                             "accepted_at": rfc(t)}, t, "acc-L1"),
             loan_ev("loan.disbursed", {"loan_id": "L1", "offer_id": created["offer_id"], "principal": created["amount"],
                                        "fee": created["fee"], "due_at": created["due_at"], "payout_id": "p-L1"},
                     t + timedelta(minutes=1), "disb-L1")])
    fresh = [e for i in range(6) for e in order(f"new{i}", 30_000, t + timedelta(hours=2, minutes=i))]
    out = feed(u, fresh) + u.flush(t + timedelta(hours=3))
    named = offered_orders(out)
    assert named, "orders placed after the loan back a new offer"
    assert not named & set(created["order_ids"])
    assert named <= {f"new{i}" for i in range(6)}


def test_a_flood_of_orders_paid_but_never_placed_does_not_push_real_receivables_out_of_the_table() -> None:
    # The receivable table is bounded; orders never placed (no order.placed in a messy stream) go before real
    # ones when it is full, since they cannot be lent against anyway.
    when = END + timedelta(hours=1)
    s = applied(steady(60))
    real = decided(s)
    assert real.receivables
    for i in range(MAX_RECEIVABLES + 50):
        for e in order(f"ghost-{i}", 9_000, when + timedelta(seconds=20 * i))[1:]:  # paid and shipped only
            s.apply(e)
    after = decided(s)
    assert {r.order_id for r in real.receivables} <= {r.order_id for r in after.receivables}
    assert after.eligible == real.eligible


# ----- offers: no churn on a flapping guard ------------------------------------------------------------------------


def test_an_offer_cut_by_a_flapping_guard_is_not_raised_and_cut_again_every_time_the_guard_flips() -> None:
    # The 7-day refund rate hovers around the REFUND_SURGE threshold: a few refunds push it over, orders placed
    # (not yet paid, so no new receivables) pull it under, one more refund pushes it over again. The offer is cut
    # once; it is not raised as soon as the guard goes quiet only to be withdrawn again minutes later.
    u = engine()
    feed(u, steady(60))
    first = u.state("m1").offer
    assert first
    t = END + timedelta(minutes=5)

    def refund(k: int, at: datetime) -> dict[str, Any]:
        return ev("order.refunded", {"order_id": f"gone-{k}", "refund_id": f"rf-{k}", "amount": brl(100)}, at,
                  f"rf-{k}")

    out = feed(u, [refund(k, t + timedelta(minutes=k)) for k in range(3)])
    withdrawn = [e["data"]["reasons"][0]["code"] for e in out if e["type"] == "loan_offer.withdrawn"]
    assert withdrawn == ["REFUND_SURGE"]
    cut = int(u.state("m1").offer[1])
    assert cut < int(first[1])
    events: list[dict[str, Any]] = []
    for flip in range(3):
        at = t + timedelta(hours=1 + 2 * flip)
        # The guard goes quiet: orders placed, not yet paid or shipped (no new receivables) ...
        quiet = [ev("order.placed", {"order_id": f"p{flip}-{k}", "buyer_id": f"pb{flip}-{k}", "amount": brl(8_000)},
                    at + timedelta(minutes=k), f"p{flip}-{k}") for k in range(12)]
        # ... and a cancellation (material: decided at once) ... then it fires again: one more refund.
        quiet.append(ev("order.cancelled", {"order_id": f"p{flip}-0"}, at + timedelta(minutes=20), f"c{flip}"))
        events += quiet + [refund(100 + flip * 10 + k, at + timedelta(minutes=40 + k)) for k in range(4)]
    out = feed(u, events)
    guard = [e for e in out if e["type"] == "loan_offer.withdrawn"
             and e["data"]["reasons"][0]["code"] == "REFUND_SURGE"]
    raised = [e for e in out if e["type"] == "loan_offer.created" and e["data"]["amount"]["amount"] > cut * 5 // 4]
    assert not raised and not guard
