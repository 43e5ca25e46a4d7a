"""Disbursement attacked as a hostile merchant, a sloppy marketplace settlement system and a stale
underwriter: each test is one attack, run through bootstrap on SQLite (the embedded mode)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from services.disbursement.adapters.orm import financed_orders, loans, offers
from services.disbursement.service import AcceptOffer, DisbursementService, EventRejected
from services.disbursement.settings import DisbursementSettings
from tests.unit.disbursement_helpers import T0, disburse, ev, limit, m, offer, service_env, settlement

pytestmark = pytest.mark.unit


@pytest.fixture()
def env(tmp_path: Any) -> dict[str, Any]:
    return service_env(db_url=f"sqlite:///{tmp_path}/d.db")


def loan_row(svc: DisbursementService, loan_id: str) -> Any:
    with svc.engine.connect() as conn:
        return conn.execute(sa.select(loans).where(loans.c.loan_id == loan_id)).one()


def receivables(svc: DisbursementService) -> int:
    bal = svc.balances()
    return bal.get(("loan_principal_receivable", "BRL"), 0) + bal.get(("fee_receivable", "BRL"), 0)


# ----------------------------------------------------------------- sloppy marketplace settlement system

def test_settlement_resent_under_a_new_event_id_repays_the_loan_once(env: dict[str, Any]) -> None:
    svc, bus = env["svc"], env["bus"]
    loan = disburse(svc, "of1", 10_000, 500)
    first = settlement("m1", "st-1", 4_000, T0 + timedelta(days=1))
    resent = {**first, "id": "another-event-id"}  # same settlement_id, new envelope id
    svc.handle(first)
    svc.handle(resent)
    row = loan_row(svc, loan["loan_id"])
    assert row.principal_due + row.fee_due == 6_500
    assert receivables(svc) == 6_500  # the loan and the ledger agree
    assert len(bus.of_type("loan.repayment_applied")) == 1


def test_settlement_resent_in_the_same_batch_repays_the_loan_once(env: dict[str, Any]) -> None:
    svc = env["svc"]
    loan = disburse(svc, "of1", 10_000, 500)
    first = settlement("m1", "st-1", 4_000, T0 + timedelta(days=1))
    svc.handle_many([first, {**first, "id": "another-event-id"}])
    row = loan_row(svc, loan["loan_id"])
    assert row.principal_due + row.fee_due == 6_500 == receivables(svc)


def test_chargeback_of_a_financed_order_moves_the_shortfall_onto_the_withhold(env: dict[str, Any]) -> None:
    svc, bus = env["svc"], env["bus"]
    disburse(svc, "of1", 20_000, 0, order_ids=("o1", "o2"))
    assert bus.of_type("collection.instruction")[-1]["data"]["withhold_rate_bps"] == 2000
    svc.handle(ev("order.chargeback", "m1", {"order_id": "o2", "chargeback_id": "cb1", "amount": m(10_000)},
                  T0 + timedelta(days=1)))
    assert bus.of_type("collection.instruction")[-1]["data"]["withhold_rate_bps"] == 5000
    assert "o2" not in bus.of_type("collection.instruction")[-1]["data"]["financed_order_ids"]


def test_partial_refund_resent_under_a_new_event_id_counts_once(env: dict[str, Any]) -> None:
    svc = env["svc"]
    disburse(svc, "of1", 20_000, 0, order_ids=("o1", "o2"))
    refund = ev("order.refunded", "m1", {"order_id": "o1", "refund_id": "r1", "amount": m(3_000)},
                T0 + timedelta(days=1))
    svc.handle(refund)
    svc.handle({**refund, "id": "another-event-id"})
    with svc.engine.connect() as conn:
        expected = conn.execute(sa.select(financed_orders.c.expected).where(financed_orders.c.order_id == "o1")).one()
    assert expected[0] == 10_000 - 3_000


def test_settlement_for_a_merchant_never_onboarded_returns_what_was_withheld(env: dict[str, Any]) -> None:
    svc = env["svc"]
    svc.handle(settlement("stranger", "st-x", 2_500, T0 + timedelta(days=1)))
    assert svc.balances()[("merchant_payable", "BRL")] == -2_500
    assert svc.recover(T0 + timedelta(days=1)) == 1
    assert svc.balances()[("merchant_payable", "BRL")] == 0


def test_money_withheld_after_charge_off_is_a_recovery_not_a_refund(env: dict[str, Any]) -> None:
    svc, bus = env["svc"], env["bus"]
    loan = disburse(svc, "of1", 10_000, 400, due_days=10)
    svc.age(T0 + timedelta(days=70))
    assert loan_row(svc, loan["loan_id"]).state == "charged_off"
    # The settlement system still withholds from the stale instruction (or the financed order settles late).
    svc.handle(settlement("m1", "st-late", 3_000, T0 + timedelta(days=71), orders=(("o1", 3_000),)))
    bal = svc.balances()
    assert bal.get(("merchant_payable", "BRL"), 0) == 0, "a defaulted merchant's debt money was refunded"
    assert bal[("charge_off_loss", "BRL")] == 10_400 - 3_000
    assert sum(bal.values()) == 0
    recovered = [e["data"] for e in bus.of_type("loan.repayment_applied")]
    assert recovered[-1]["loan_id"] == loan["loan_id"] and recovered[-1]["amount"]["amount"] == 3_000
    # More than the loss: only the loss is recovered, the rest goes back to the merchant.
    svc.handle(settlement("m1", "st-later", 9_000, T0 + timedelta(days=72)))
    bal = svc.balances()
    assert bal[("charge_off_loss", "BRL")] == 0
    assert bal[("merchant_payable", "BRL")] == -(9_000 - 7_400)
    assert sum(bal.values()) == 0


def test_a_charged_off_loan_is_still_collected_until_recovered_and_the_audit_agrees(env: dict[str, Any]) -> None:
    from tests.unit.disbursement_helpers import audit_collections

    svc, bus = env["svc"], env["bus"]
    loan = disburse(svc, "of1", 10_000, 400, due_days=10, order_ids=("o1",))
    svc.age(T0 + timedelta(days=70))
    assert loan_row(svc, loan["loan_id"]).state == "charged_off"
    # Written off, still owed: the marketplace is told to keep withholding all of it, at the shortfall rate
    # (no receivable covers it any more), the written-off loan named and its financed order still first.
    ins = bus.of_type("collection.instruction")[-1]["data"]
    assert ins["owed"] == m(10_400) and ins["loan_ids"] == [loan["loan_id"]]
    assert ins["withhold_rate_bps"] == 5000 and ins["financed_order_ids"] == ["o1"]
    assert audit_collections(svc) == []
    svc.handle(settlement("m1", "st-late", 3_000, T0 + timedelta(days=71)))
    assert bus.of_type("collection.instruction")[-1]["data"]["owed"] == m(7_400)  # recovered 3 000
    assert svc.balances()[("charge_off_loss", "BRL")] == 7_400
    assert audit_collections(svc) == []
    svc.handle(settlement("m1", "st-last", 7_400, T0 + timedelta(days=72)))
    last = bus.of_type("collection.instruction")[-1]["data"]
    assert last["owed"] == m(0) and last["loan_ids"] == [] and last["withhold_rate_bps"] == 0
    bal = svc.balances()
    assert bal[("charge_off_loss", "BRL")] == 0 and bal.get(("merchant_payable", "BRL"), 0) == 0
    assert audit_collections(svc) == []


def test_a_written_off_balance_is_asked_after_the_open_loans_and_never_more_than_is_owed(
        env: dict[str, Any]) -> None:
    from tests.unit.disbursement_helpers import audit_collections

    svc, bus = env["svc"], env["bus"]
    old = disburse(svc, "ofA", 10_000, 0, due_days=10, order_ids=("oa",))
    young = disburse(svc, "ofB", 10_000, 0, at=T0 + timedelta(days=1), due_days=60, order_ids=("ob",))
    svc.age(T0 + timedelta(days=70))  # the old loan is charged off, the young one is past due but still open
    assert (loan_row(svc, old["loan_id"]).state, loan_row(svc, young["loan_id"]).state) == ("charged_off",
                                                                                           "delinquent")
    ins = bus.of_type("collection.instruction")[-1]["data"]
    assert ins["owed"] == m(20_000) and ins["loan_ids"] == [young["loan_id"], old["loan_id"]]
    svc.handle(settlement("m1", "st-1", 12_000, T0 + timedelta(days=71)))  # the open loan first, then recovery
    assert loan_row(svc, young["loan_id"]).state == "repaid"
    ins = bus.of_type("collection.instruction")[-1]["data"]
    assert ins["owed"] == m(8_000) and ins["loan_ids"] == [old["loan_id"]]
    svc.handle(settlement("m1", "st-2", 9_000, T0 + timedelta(days=72)))  # 1 000 more than is owed
    bal = svc.balances()
    assert bal[("charge_off_loss", "BRL")] == 0 and bal[("merchant_payable", "BRL")] == -1_000
    assert bus.of_type("collection.instruction")[-1]["data"]["owed"] == m(0)
    assert audit_collections(svc) == []


# ----------------------------------------------------------------- underwriter feeds (stale, replayed, inconsistent)

def test_offer_delivered_again_under_a_new_event_id_stays_open(env: dict[str, Any]) -> None:
    svc = env["svc"]
    svc.handle(limit("m1", 100_000))
    created = offer("m1", "of1", 10_000)
    svc.handle(created)
    svc.handle({**created, "id": "another-event-id"})
    result = svc.accept(AcceptOffer("of1", "m1", "k1", T0 + timedelta(minutes=1)))
    assert result.status_code == 200, result.body


def test_an_older_offer_arriving_after_a_newer_one_does_not_replace_it(env: dict[str, Any]) -> None:
    svc = env["svc"]
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of-new", 12_000, at=T0 + timedelta(hours=2), order_ids=("o2",)))
    svc.handle(offer("m1", "of-old", 10_000, at=T0, order_ids=("o1",)))
    now = T0 + timedelta(hours=3)
    assert svc.accept(AcceptOffer("of-old", "m1", "k1", now)).code == "offer_superseded"
    assert svc.accept(AcceptOffer("of-new", "m1", "k2", now)).status_code == 200
    with svc.engine.connect() as conn:  # and the merchant was never sent the stale offer
        hooks = conn.execute(sa.text("SELECT payload FROM webhook_deliveries WHERE event_type = 'loan_offer.created'"))
        assert [p for (p,) in hooks if "of-old" in p] == []


@pytest.mark.parametrize("change", ["fee_currency", "zero_amount", "duplicate_orders", "due_before_offer",
                                    "expired_on_arrival"])
def test_inconsistent_offer_is_rejected_and_never_stored(env: dict[str, Any], change: str) -> None:
    svc = env["svc"]
    bad = offer("m1", "of-bad", 10_000, 100, order_ids=("o1", "o2"))
    data = bad["data"]
    if change == "fee_currency":
        data["fee"] = m(100, "USD")
    elif change == "zero_amount":
        data["amount"] = m(0)
    elif change == "duplicate_orders":
        data["order_ids"] = ["o1", "o1"]
    elif change == "due_before_offer":
        data["due_at"] = "2025-02-28T12:00:00Z"
    else:
        data["expires_at"] = "2025-03-01T11:00:00Z"
    with pytest.raises(EventRejected):
        svc.handle(bad)
    with svc.engine.connect() as conn:
        assert conn.execute(sa.select(offers.c.offer_id)).all() == []


def test_acceptance_rechecks_a_stale_limit_against_loans_it_does_not_count_yet(env: dict[str, Any]) -> None:
    svc = env["svc"]
    disburse(svc, "of1", 60_000, 0, available=100_000, lim=100_000, order_ids=("o1",))
    # A limit computed before the underwriter saw the first loan: still 100 000 available of 100 000.
    later = T0 + timedelta(hours=1)
    svc.handle(limit("m1", 100_000, at=later, lim=100_000))
    svc.handle(offer("m1", "of2", 80_000, at=later, order_ids=("o2",)))
    result = svc.accept(AcceptOffer("of2", "m1", "k2", later + timedelta(minutes=1)))
    assert (result.status_code, result.code) == (409, "limit_exceeded")
    svc.handle(offer("m1", "of3", 40_000, at=later + timedelta(minutes=2), order_ids=("o3",)))
    assert svc.accept(AcceptOffer("of3", "m1", "k3", later + timedelta(minutes=3))).status_code == 200


def test_merchant_past_due_before_the_aging_pass_ran_is_refused(env: dict[str, Any]) -> None:
    svc = env["svc"]
    disburse(svc, "of1", 10_000, 0, due_days=5, order_ids=("o1",))
    late = T0 + timedelta(days=7)  # two days past due; no aging pass has run yet
    svc.handle(limit("m1", 500_000, at=late))
    svc.handle(offer("m1", "of2", 10_000, at=late, order_ids=("o2",)))
    result = svc.accept(AcceptOffer("of2", "m1", "k2", late))
    assert (result.status_code, result.code) == (409, "merchant_delinquent")


# ----------------------------------------------------------------- hostile merchant

@pytest.mark.parametrize("change", ["settled", "cancelled", "refunded", "charged_back"])
def test_offer_whose_orders_changed_before_acceptance_is_refused(env: dict[str, Any], change: str) -> None:
    svc = env["svc"]
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 10_000, order_ids=("o1", "o2")))
    at = T0 + timedelta(hours=1)
    if change == "settled":  # the payout reached the merchant before it accepted: nothing left to advance on
        svc.handle(settlement("m1", "st-1", 0, at, orders=(("o2", 8_000),)))
    elif change == "cancelled":
        svc.handle(ev("order.cancelled", "m1", {"order_id": "o2"}, at))
    elif change == "refunded":
        svc.handle(ev("order.refunded", "m1", {"order_id": "o2", "refund_id": "r1", "amount": m(8_000)}, at))
    else:
        svc.handle(ev("order.chargeback", "m1", {"order_id": "o2", "chargeback_id": "c1", "amount": m(8_000)}, at))
    result = svc.accept(AcceptOffer("of1", "m1", "k1", at + timedelta(minutes=1)))
    assert (result.status_code, result.code) == (409, "receivables_changed")
    assert "o2" in result.body["error"]["message"]


def test_orders_of_another_offer_changing_leave_the_open_offer_acceptable(env: dict[str, Any]) -> None:
    svc = env["svc"]
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 10_000, order_ids=("o1",)))
    svc.handle(settlement("m1", "st-1", 0, T0 + timedelta(hours=1), orders=(("o9", 8_000),)))
    svc.handle(ev("order.cancelled", "m1", {"order_id": "o8"}, T0 + timedelta(hours=1)))
    assert svc.accept(AcceptOffer("of1", "m1", "k1", T0 + timedelta(hours=2))).status_code == 200



def test_an_empty_api_key_never_authenticates(env: dict[str, Any]) -> None:
    svc = env["svc"]
    with pytest.raises(ValueError):
        svc.register_merchant("m-empty", None, "")
    assert svc.authenticate("") is None


def test_offer_in_a_second_currency_while_a_loan_is_owed_is_refused_and_nothing_breaks(env: dict[str, Any]) -> None:
    svc = env["svc"]
    disburse(svc, "of1", 10_000, 0, order_ids=("o1",))
    later = T0 + timedelta(hours=1)
    usd_limit = limit("m1", 50_000, at=later)
    for key in ("limit", "available", "outstanding", "eligible_receivables"):
        usd_limit["data"][key] = m(usd_limit["data"][key]["amount"], "USD")
    svc.handle(usd_limit)
    usd_offer = offer("m1", "of-usd", 20_000, 100, at=later, order_ids=("o2",))
    usd_offer["data"]["amount"], usd_offer["data"]["fee"] = m(20_000, "USD"), m(100, "USD")
    svc.handle(usd_offer)
    result = svc.accept(AcceptOffer("of-usd", "m1", "k-usd", later + timedelta(minutes=1)))
    assert (result.status_code, result.code) == (409, "currency_mismatch")
    # The BRL loan still collects normally.
    svc.handle(settlement("m1", "st-1", 10_000, later + timedelta(days=1)))
    assert svc.balances()[("loan_principal_receivable", "BRL")] == 0


def test_settlement_listing_an_order_without_an_id_still_repays_the_loan(env: dict[str, Any]) -> None:
    svc = env["svc"]
    loan = disburse(svc, "of1", 10_000, 0, order_ids=("o1",))
    bad = settlement("m1", "st-1", 4_000, T0 + timedelta(days=1), orders=(("o1", 4_000),))
    bad["data"]["orders"].append({"amount": m(1)})
    svc.handle(bad)
    assert loan_row(svc, loan["loan_id"]).principal_due == 6_000


def test_credit_limit_whose_available_is_in_another_currency_is_rejected(env: dict[str, Any]) -> None:
    svc = env["svc"]
    bad = limit("m1", 50_000)
    bad["data"]["available"] = m(50_000, "USD")
    with pytest.raises(EventRejected):
        svc.handle(bad)


# ----------------------------------------------------------------- a sloppy marketplace payout API

def test_payout_api_answering_garbage_is_a_failed_payout_that_recovery_pays_once(tmp_path: Any) -> None:
    import httpx

    from services.disbursement.adapters.payout_rails import HttpRail

    seen: list[httpx.Request] = []
    answers = [httpx.Response(200, text="<html>gateway hiccup</html>"),
               httpx.Response(200, json={"payout_id": "mp-po-1"})]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0) if answers else httpx.Response(200, json={"payout_id": "mp-po-1"})

    rail = HttpRail("https://payouts.example", api_key="payout-api-key",
                    client=httpx.Client(base_url="https://payouts.example", transport=httpx.MockTransport(handler)))
    svc = service_env(DisbursementSettings(recovery_after_seconds=0), db_url=f"sqlite:///{tmp_path}/d.db",
                      rail=rail, webhook_url=None)["svc"]
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 10_000))
    first = svc.accept(AcceptOffer("of1", "m1", "k1", T0 + timedelta(minutes=1)))
    assert first.status_code == 202 and first.body["state"] == "accepted"
    assert svc.recover(T0 + timedelta(minutes=5)) == 1
    assert svc.accept(AcceptOffer("of1", "m1", "k1", T0)).body["payout_id"] == "mp-po-1"
    assert {r.headers["Idempotency-Key"] for r in seen} == {first.body["loan_id"]}
    assert all(r.headers["Authorization"] == "Bearer payout-api-key" for r in seen)
