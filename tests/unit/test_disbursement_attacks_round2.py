"""Disbursement attacked again (second round): a merchant retrying, a sloppy or hostile sender of events,
a late operator command and garbage ids. Each test is one attack, through bootstrap on SQLite."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from services.disbursement.adapters.http_api import create_app
from services.disbursement.adapters.orm import financed_orders, loans, offers, webhook_deliveries
from services.disbursement.service import AcceptOffer, EventRejected
from services.disbursement.settings import DisbursementSettings
from tests.unit.disbursement_helpers import (
    M1_KEY,
    T0,
    DownThenUpRail,
    disburse,
    ev,
    limit,
    m,
    offer,
    service_env,
    settlement,
)

pytestmark = pytest.mark.unit


@pytest.fixture()
def env(tmp_path: Any) -> dict[str, Any]:
    return service_env(db_url=f"sqlite:///{tmp_path}/d.db")


def loan_state(svc: Any) -> tuple[str, int, str | None]:
    with svc.engine.connect() as conn:
        row = conn.execute(sa.select(loans.c.state, loans.c.dpd, loans.c.bucket)).one()
    return str(row.state), int(row.dpd), row.bucket


# ----------------------------------------------------------------- a merchant retrying with the same key
@pytest.mark.parametrize("cause", ["kill_switch", "merchant_inactive", "limit_exceeded"])
def test_a_refusal_that_no_longer_holds_is_decided_again_on_a_retry_with_the_same_key(
        env: dict[str, Any], cause: str) -> None:
    svc = env["svc"]
    svc.handle(limit("m1", 5_000 if cause == "limit_exceeded" else 100_000))
    svc.handle(offer("m1", "of1", 10_000))
    if cause == "kill_switch":
        svc.set_kill_switch(True)
    if cause == "merchant_inactive":
        svc.handle(ev("merchant.updated", "m1", {"status": "suspended"}, T0))
    first = svc.accept(AcceptOffer("of1", "m1", "retry-key", T0 + timedelta(minutes=1)))
    assert (first.status_code, first.code) == (409, cause)
    # the cause goes away; the merchant retries the same request, as told to
    if cause == "kill_switch":
        svc.set_kill_switch(False)
    if cause == "merchant_inactive":
        svc.handle(ev("merchant.updated", "m1", {"status": "active"}, T0 + timedelta(seconds=1)))
    if cause == "limit_exceeded":
        svc.handle(limit("m1", 100_000, at=T0 + timedelta(seconds=1)))
    again = svc.accept(AcceptOffer("of1", "m1", "retry-key", T0 + timedelta(minutes=2)))
    assert again.status_code == 200 and not again.replayed, again.body
    # and from then on the key replays the loan it made
    replay = svc.accept(AcceptOffer("of1", "m1", "retry-key", T0 + timedelta(minutes=3)))
    assert replay.replayed and replay.body["loan_id"] == again.body["loan_id"]


def test_a_final_refusal_is_still_replayed_under_its_key(env: dict[str, Any]) -> None:
    svc = env["svc"]
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 10_000, expires_hours=1))
    first = svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(hours=2)))
    assert first.code == "offer_expired"
    again = svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(hours=3)))
    assert again.replayed and again.code == "offer_expired"


def test_accepting_an_offer_before_it_arrives_then_retrying_with_the_same_key_takes_the_offer(
        env: dict[str, Any]) -> None:
    # A merchant app that reads loan.offers.v1 can be ahead of the disbursement consumer: the 404 must not stick
    # to the Idempotency-Key once the offer is stored.
    svc = env["svc"]
    svc.handle(limit("m1", 100_000))
    early = svc.accept(AcceptOffer("of1", "m1", "early-key", T0 + timedelta(seconds=1)))
    assert (early.status_code, early.code) == (404, "offer_not_found")
    svc.handle(offer("m1", "of1", 10_000))
    again = svc.accept(AcceptOffer("of1", "m1", "early-key", T0 + timedelta(minutes=1)))
    assert again.status_code == 200 and not again.replayed, again.body
    assert svc.accept(AcceptOffer("of1", "m1", "early-key", T0 + timedelta(minutes=2))).body["loan_id"] == \
        again.body["loan_id"]


# ----------------------------------------------------------------- offers nobody should lend on
def test_offer_due_later_than_the_longest_term_is_refused_and_never_stored(env: dict[str, Any]) -> None:
    svc = env["svc"]
    svc.handle(limit("m1", 100_000))
    with pytest.raises(EventRejected, match="more than 60 days"):
        svc.handle(offer("m1", "of-10y", 10_000, due_days=3650, expires_hours=24 * 3650))
    svc.handle(offer("m1", "of-60d", 10_000, due_days=60))  # exactly the longest term is fine
    with svc.engine.connect() as conn:
        assert conn.execute(sa.select(offers.c.offer_id)).scalars().all() == ["of-60d"]


def test_offer_still_open_after_its_due_date_cannot_be_accepted(env: dict[str, Any]) -> None:
    svc = env["svc"]
    svc.handle(limit("m1", 100_000))
    # receivables already late: due in 3 days, but the offer stays open for 5
    svc.handle(offer("m1", "of1", 10_000, due_days=3, expires_hours=5 * 24))
    late = svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(days=4)))
    assert (late.status_code, late.code) == (409, "offer_expired")
    with svc.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(loans)).scalar_one() == 0


# ----------------------------------------------------------------- a hostile or sloppy event sender
def test_settlement_withholding_a_negative_amount_is_rejected_and_books_nothing(env: dict[str, Any]) -> None:
    svc = env["svc"]
    disburse(svc, "of1", 10_000, 500)
    before = svc.balances()
    with pytest.raises(EventRejected, match="negative"):
        svc.handle(settlement("m1", "s-neg", -5_000, T0 + timedelta(days=1)))
    assert svc.balances() == before


@pytest.mark.parametrize("etype,ref", [("order.refunded", "refund_id"), ("order.chargeback", "chargeback_id")])
def test_negative_refund_or_chargeback_never_raises_what_a_financed_order_is_expected_to_bring(
        env: dict[str, Any], etype: str, ref: str) -> None:
    svc = env["svc"]
    disburse(svc, "of1", 10_000, 500)
    with pytest.raises(EventRejected, match="negative"):
        svc.handle(ev(etype, "m1", {"order_id": "o1", ref: "r1", "amount": m(-50_000)}, T0 + timedelta(days=1)))
    with svc.engine.connect() as conn:
        assert conn.execute(sa.select(financed_orders.c.expected)).scalar_one() == 10_500


def test_refund_of_a_financed_order_in_another_currency_is_rejected_not_subtracted(env: dict[str, Any]) -> None:
    svc = env["svc"]
    disburse(svc, "of1", 10_000, 500)
    with pytest.raises(EventRejected, match="USD"):
        svc.handle(ev("order.refunded", "m1", {"order_id": "o1", "refund_id": "r1", "amount": m(5_000, "USD")},
                      T0 + timedelta(days=1)))
    with svc.engine.connect() as conn:
        assert conn.execute(sa.select(financed_orders.c.expected, financed_orders.c.state)).one() == (10_500, "open")
    # the same refund in the loan's currency is applied
    svc.handle(ev("order.refunded", "m1", {"order_id": "o1", "refund_id": "r1", "amount": m(5_000)},
                  T0 + timedelta(days=1)))
    with svc.engine.connect() as conn:
        assert conn.execute(sa.select(financed_orders.c.expected)).scalar_one() == 5_500


# ----------------------------------------------------------------- aging
def test_an_aging_pass_at_an_earlier_time_never_moves_a_loan_back_a_bucket(env: dict[str, Any]) -> None:
    svc, bus = env["svc"], env["bus"]
    disburse(svc, "of1", 10_000, 500)  # due T0 + 10 days
    due = T0 + timedelta(days=10)
    svc.age(due + timedelta(days=10))
    assert loan_state(svc) == ("delinquent", 10, "8-30")
    svc.age(due + timedelta(days=3))  # an operator's late `age --now`, or a clock that went back
    assert loan_state(svc) == ("delinquent", 10, "8-30")
    assert [e["data"]["bucket"] for e in bus.of_type("loan.delinquent")] == ["8-30"]
    svc.age(due + timedelta(days=31))
    assert loan_state(svc) == ("delinquent", 31, "31-60")
    assert [e["data"]["bucket"] for e in bus.of_type("loan.delinquent")] == ["8-30", "31-60"]


# ----------------------------------------------------------------- garbage ids
@pytest.mark.parametrize("offer_id,key,code", [
    ("of\x001", "k1", "offer_not_found"), ("\ud800", "k1", "offer_not_found"),
    ("of1", "k\x00", "idempotency_key_invalid"), ("of1", "\udfff", "idempotency_key_invalid")])
def test_ids_no_database_can_hold_are_refused_cleanly(env: dict[str, Any], offer_id: str, key: str,
                                                      code: str) -> None:
    svc = env["svc"]
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 10_000))
    result = svc.accept(AcceptOffer(offer_id, "m1", key, T0 + timedelta(minutes=1)))
    assert result.code == code
    if offer_id != "of1":
        assert svc.get_offer("m1", offer_id) is None
    assert svc.get_loan("m1", "ln\x00") is None


def test_a_nul_in_the_path_is_not_found_over_http(env: dict[str, Any]) -> None:
    client = TestClient(create_app(env["svc"]))
    auth = {"Authorization": f"Bearer {M1_KEY}", "Idempotency-Key": "k1"}
    assert client.post("/v1/offers/of%001/accept", headers=auth).status_code == 404
    assert client.get("/v1/offers/a%00b", headers=auth).status_code == 404
    assert client.get("/v1/loans/a%00b", headers=auth).status_code == 404


# ----------------------------------------------------------------- audit trail
def test_every_acceptance_decision_payout_charge_off_and_operator_action_is_in_the_audit_trail(
        env: dict[str, Any]) -> None:
    svc = env["svc"]
    secret = svc.register_merchant("m2", "https://m2.example/hooks?token=abc", "key-m2-0123456789abcdef")
    svc.rotate_secret("m2")
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 10_000, 500))
    svc.set_kill_switch(True)
    svc.accept(AcceptOffer("of1", "m1", "k1", T0 + timedelta(minutes=1)))
    svc.accept(AcceptOffer("of1", "m2", "k1", T0 + timedelta(minutes=1)))  # another merchant's offer
    svc.set_kill_switch(False)
    loan_id = svc.accept(AcceptOffer("of1", "m1", "k1", T0 + timedelta(minutes=2))).body["loan_id"]
    svc.age(T0 + timedelta(days=10 + 61))
    trail = [(r["actor"], r["action"], r["merchant_id"], r["ref"], r["outcome"]) for r in svc.audit_trail()]
    assert trail[-9:] == [
        ("operator", "merchant_registered", "m2", None, "ok"),
        ("operator", "webhook_secret_rotated", "m2", None, "ok"),
        ("operator", "kill_switch", None, None, "on"),
        ("merchant:m1", "accept", "m1", "of1", "kill_switch"),
        ("merchant:m2", "accept", "m2", "of1", "offer_not_found"),
        ("operator", "kill_switch", None, None, "off"),
        ("merchant:m1", "accept", "m1", "of1", "accepted"),
        ("system", "payout", "m1", loan_id, "paid"),
        ("system", "charge_off", "m1", loan_id, "charged_off"),
    ]
    text = repr(svc.audit_trail())
    assert secret not in text and "key-m2-0123456789abcdef" not in text and "token=abc" not in text


def test_a_failed_payout_is_in_the_audit_trail(tmp_path: Any) -> None:
    from services.disbursement.ports import PayoutFailed, PayoutRequest

    class DownRail:
        def pay(self, request: PayoutRequest) -> str:
            raise PayoutFailed("rail answered 503")

    svc = service_env(db_url=f"sqlite:///{tmp_path}/d.db", rail=DownRail())["svc"]
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 10_000))
    assert svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(minutes=1))).status_code == 202
    last = svc.audit_trail("m1")[-1]
    assert (last["action"], last["outcome"], last["detail"]["error"]) == ("payout", "failed", "rail answered 503")


@pytest.mark.parametrize("statement", ["UPDATE audit_log SET outcome = 'accepted'", "DELETE FROM audit_log"])
def test_the_audit_trail_is_append_only(env: dict[str, Any], statement: str) -> None:
    svc = env["svc"]
    svc.set_kill_switch(True)
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), svc.engine.begin() as conn:
        conn.execute(sa.text(statement))
    assert [r["outcome"] for r in svc.audit_trail()][-1] == "on"


def test_withdrawing_an_offer_the_merchant_already_accepted_changes_nothing_and_tells_nobody(
        env: dict[str, Any]) -> None:
    svc = env["svc"]

    def withdrawn_webhooks() -> list[str]:
        with svc.engine.connect() as conn:
            return [json.loads(p)["data"]["offer_id"] for p in conn.execute(
                sa.select(webhook_deliveries.c.payload).where(
                    webhook_deliveries.c.event_type == "loan_offer.withdrawn")).scalars()]

    disburse(svc, "of1", 10_000, 500)
    # the underwriter had not heard of the acceptance yet
    svc.handle(ev("loan_offer.withdrawn", "m1", {"offer_id": "of1", "reasons": []}, T0 + timedelta(minutes=2)))
    with svc.engine.connect() as conn:
        assert conn.execute(sa.select(offers.c.state)).scalar_one() == "accepted"
    assert withdrawn_webhooks() == []
    # an open offer is still withdrawn and announced
    svc.handle(offer("m1", "of2", 5_000, at=T0 + timedelta(minutes=3), order_ids=("o2",)))
    svc.handle(ev("loan_offer.withdrawn", "m1", {"offer_id": "of2", "reasons": []}, T0 + timedelta(minutes=4)))
    assert withdrawn_webhooks() == ["of2"]


def test_an_old_merchant_update_re_sent_late_does_not_lift_a_suspension(env: dict[str, Any]) -> None:
    svc = env["svc"]
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 10_000))
    svc.handle(ev("merchant.updated", "m1", {"status": "active"}, T0 + timedelta(hours=1), eid="upd-active"))
    svc.handle(ev("merchant.updated", "m1", {"status": "suspended"}, T0 + timedelta(hours=2)))
    # the marketplace re-sends its earlier "active" under a new event id
    svc.handle(ev("merchant.updated", "m1", {"status": "active"}, T0 + timedelta(hours=1), eid="upd-active-again"))
    refused = svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(hours=3)))
    assert (refused.status_code, refused.code) == (409, "merchant_inactive")
    svc.handle(ev("merchant.updated", "m1", {"status": "active"}, T0 + timedelta(hours=4)))
    assert svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(hours=5))).status_code == 200


def test_a_payout_rail_that_crashes_leaves_an_accepted_loan_that_recovery_pays_once(tmp_path: Any) -> None:
    from services.disbursement.adapters.payout_rails import SandboxRail
    from services.disbursement.ports import PayoutRequest

    class BuggyRail:
        def __init__(self) -> None:
            self.inner: SandboxRail | None = None
            self.broken = True

        def pay(self, request: PayoutRequest) -> str:
            if self.broken:
                raise KeyError("payout_id")  # an adapter bug, not a PayoutFailed
            assert self.inner is not None
            return self.inner.pay(request)

    rail = BuggyRail()
    svc = service_env(DisbursementSettings(recovery_after_seconds=0), db_url=f"sqlite:///{tmp_path}/d.db",
                      rail=rail)["svc"]
    rail.inner = SandboxRail(svc.engine)
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 10_000))
    first = svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(minutes=1)))
    assert first.status_code == 202 and first.body["state"] == "accepted"
    rail.broken = False
    assert svc.recover(T0 + timedelta(minutes=2)) == 1
    assert svc.recover(T0 + timedelta(minutes=3)) == 0
    assert rail.inner.count() == 1
    replay = svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(minutes=4)))
    assert replay.status_code == 200 and replay.body["state"] == "disbursed"


@pytest.mark.parametrize("etype,data", [
    ("merchant.updated", ["status", "active"]),
    ("merchant.onboarded", "toys"),
    ("settlement.paid", {"settlement_id": "s1", "gross": [1], "fees": [0], "withheld": [1], "net": [0],
                         "orders": []}),
    ("order.refunded", {"order_id": "o1", "refund_id": "r1", "amount": "5000 BRL"}),
    ("credit_limit.updated", {"limit": "lots", "available": "lots"}),
])
def test_an_event_with_a_list_or_text_where_an_object_belongs_is_dead_lettered_by_the_consumer(
        env: dict[str, Any], etype: str, data: Any) -> None:
    from types import SimpleNamespace

    from schemas import topics
    from schemas.codec import encode
    from services.disbursement.adapters import kafka

    svc = env["svc"]
    disburse(svc, "of1", 10_000, 500)
    event = ev(etype, "m1", {}, T0 + timedelta(days=1))
    event["data"] = data
    with pytest.raises(EventRejected, match="malformed"):
        svc.handle(event)
    topic = topics.CREDIT_LIMITS if etype == "credit_limit.updated" else topics.MARKETPLACE_EVENTS
    record = SimpleNamespace(value=encode(event), topic=topic, partition=0, offset=7)
    letter = kafka._apply(svc, record)  # the consumer dead-letters it instead of retrying it forever
    assert letter is not None and letter["type"] == "ingest.rejected"


def test_one_idempotency_key_used_by_two_merchants_is_two_independent_requests(env: dict[str, Any]) -> None:
    svc = env["svc"]
    svc.register_merchant("m2", None, "key-m2-0123456789abcdef")
    for mid, oid in (("m1", "of1"), ("m2", "of2")):
        svc.handle(ev("merchant.onboarded", mid, {"category": "toys", "country": "BR", "currency": "BRL"}, T0))
        svc.handle(limit(mid, 100_000))
        svc.handle(offer(mid, oid, 10_000, order_ids=(f"o-{mid}",)))
    first = svc.accept(AcceptOffer("of1", "m1", "shared-key", T0 + timedelta(minutes=1)))
    second = svc.accept(AcceptOffer("of2", "m2", "shared-key", T0 + timedelta(minutes=1)))
    assert first.status_code == second.status_code == 200
    assert not second.replayed and first.body["loan_id"] != second.body["loan_id"]
    # and m2 cannot replay m1's answer (or learn of m1's offer) through the key
    probe = svc.accept(AcceptOffer("of1", "m2", "shared-key", T0 + timedelta(minutes=2)))
    assert probe.code == "idempotency_key_reused" and "of1" not in repr(probe.body) and "m1" not in repr(probe.body)


@pytest.mark.parametrize("orders", [
    [{"order_id": "o1", "amount": 5_000}], [{"order_id": "o-other", "amount": m(5_000)}],
    [{"order_id": "o1", "amount": m(5_000, "USD")}], [{"order_id": "o1", "amount": m(-1)}], "o1", [["o1", 1]],
])
def test_an_offer_with_per_order_amounts_that_cannot_be_used_is_refused_instead_of_failing_every_acceptance(
        env: dict[str, Any], orders: Any) -> None:
    svc = env["svc"]
    svc.handle(limit("m1", 100_000))
    with pytest.raises(EventRejected, match="orders"):
        svc.handle(offer("m1", "of1", 10_000, orders=orders))
    svc.handle(offer("m1", "of2", 10_000, orders=[{"order_id": "o1", "amount": m(7_000)}]))
    assert svc.accept(AcceptOffer("of2", "m1", "k", T0 + timedelta(minutes=1))).status_code == 200
    with svc.engine.connect() as conn:
        assert conn.execute(sa.select(financed_orders.c.expected)).scalar_one() == 7_000


# ----------------------------------------------------------------- ledger constraints in the database
@pytest.mark.parametrize("account,currency", [("free_money", "BRL"), ("funding_cash", "brl"), ("funding_cash", "BR")])
def test_a_balanced_entry_on_an_invented_account_or_currency_is_refused_by_sqlite(
        env: dict[str, Any], account: str, currency: str) -> None:
    with pytest.raises(sa.exc.DatabaseError, match="unknown account or currency"), env["svc"].engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO journal_entries (entry_id, kind, created_at) "
                             "VALUES ('x1', 'manual', '2025-03-01 00:00:00')"))
        conn.execute(sa.text("INSERT INTO journal_lines (entry_id, account, side, amount, currency) VALUES "
                             "('x1', :a, 'D', 100, :c), ('x1', 'funding_cash', 'C', 100, :c)"),
                     {"a": account, "c": currency})


def test_the_database_knows_every_ledger_account_and_no_other() -> None:
    import importlib

    from services.disbursement.domain.ledger import Account

    migration = importlib.import_module("services.disbursement.migrations.versions.0008_journal_accounts_known")
    assert set(migration.ACCOUNTS) == {a.value for a in Account}, "a new account needs a migration widening 0008's"


# ----------------------------------------------------------------- offers delivered again or colliding
def _offer_webhooks(svc: Any, merchant: str) -> list[str]:
    with svc.engine.connect() as conn:
        return [json.loads(p)["data"]["offer_id"] for p in conn.execute(
            sa.select(webhook_deliveries.c.payload).where(webhook_deliveries.c.event_type == "loan_offer.created",
                                                          webhook_deliveries.c.merchant_id == merchant)).scalars()]


def test_an_offer_delivered_again_under_a_new_event_id_is_announced_to_the_merchant_once(
        env: dict[str, Any]) -> None:
    svc = env["svc"]
    svc.handle(limit("m1", 100_000))
    first = offer("m1", "of1", 10_000)
    svc.handle(first)
    svc.handle({**first, "id": "resent-" + first["id"]})
    assert _offer_webhooks(svc, "m1") == ["of1"]


def test_an_offer_id_of_another_merchant_is_refused_and_leaves_the_merchants_open_offer_alone(
        env: dict[str, Any]) -> None:
    svc = env["svc"]
    svc.register_merchant("m2", "https://m2.example/hooks", "key-m2-0123456789abcdef")
    svc.handle(limit("m1", 100_000))
    svc.handle(limit("m2", 100_000))
    svc.handle(offer("m1", "of1", 10_000))
    svc.handle(offer("m2", "of2", 10_000, order_ids=("o2",)))
    with pytest.raises(EventRejected, match="another merchant"):
        svc.handle(offer("m2", "of1", 20_000, at=T0 + timedelta(minutes=1), order_ids=("o3",)))
    assert _offer_webhooks(svc, "m2") == ["of2"]
    assert svc.get_offer("m2", "of2")["state"] == "open"  # type: ignore[index]
    assert svc.accept(AcceptOffer("of2", "m2", "k", T0 + timedelta(minutes=2))).status_code == 200


# ----------------------------------------------------------------- the books while a payout is failing
def test_while_the_payout_rail_fails_the_books_owe_the_merchant_and_no_cash_has_left(tmp_path: Any) -> None:
    rail = DownThenUpRail()
    svc = service_env(DisbursementSettings(recovery_after_seconds=0), db_url=f"sqlite:///{tmp_path}/d.db",
                      rail=rail)["svc"]
    rail.attach(svc.engine)
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 10_000, 300))
    assert svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(minutes=1))).status_code == 202
    bal = svc.balances()
    assert bal.get(("funding_cash", "BRL"), 0) == 0, "cash left the books for a payout that did not happen"
    assert bal[("merchant_payable", "BRL")] == -10_000 and bal[("loan_principal_receivable", "BRL")] == 10_000
    rail.down = False
    assert svc.recover(T0 + timedelta(minutes=2)) == 1
    assert svc.recover(T0 + timedelta(minutes=3)) == 0
    bal = svc.balances()
    assert bal[("funding_cash", "BRL")] == -10_000 and bal[("merchant_payable", "BRL")] == 0
    assert sum(bal.values()) == 0
