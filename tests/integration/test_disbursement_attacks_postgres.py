"""Attacks whose defence rests on PostgreSQL itself: unique keys under concurrency, and the ledger's
balance trigger over entries the code adds after a charge-off."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from services.disbursement.adapters.orm import loans
from services.disbursement.bootstrap import make_engine
from services.disbursement.migrations import upgrade
from services.disbursement.service import AcceptOffer, DisbursementService
from tests.unit.disbursement_helpers import T0, audit_collections, disburse, ev, m, service_env, settlement

pytestmark = pytest.mark.integration


@pytest.fixture()
def svc(pg_schema_url: str) -> Any:
    eng = make_engine(pg_schema_url, pool_size=10)
    upgrade(eng)
    yield service_env(engine=eng)["svc"]
    eng.dispose()


def disburse_loan(svc: DisbursementService, offer_id: str, amount: int, fee: int, **kw: Any) -> str:
    return str(disburse(svc, offer_id, amount, fee, **kw)["loan_id"])


def owed(svc: DisbursementService, loan_id: str) -> int:
    with svc.engine.connect() as conn:
        row = conn.execute(sa.select(loans.c.principal_due, loans.c.fee_due).where(loans.c.loan_id == loan_id)).one()
    return int(row.principal_due + row.fee_due)


def per_currency_sums(svc: DisbursementService) -> dict[str, int]:
    with svc.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT currency, SUM(CASE WHEN side = 'D' THEN amount ELSE -amount END) FROM journal_lines "
            "GROUP BY currency")).all()
    return {c: int(s) for c, s in rows}


def test_one_settlement_resent_under_new_event_ids_by_concurrent_consumers_repays_once(
        svc: DisbursementService) -> None:
    loan_id = disburse_loan(svc, "of1", 50_000, 1_000)
    first = settlement("m1", "st-1", 7_000, T0 + timedelta(days=1))
    copies = [{**first, "id": f"copy-{i}"} for i in range(8)]
    barrier = threading.Barrier(len(copies))

    def apply(event: dict[str, Any]) -> None:
        barrier.wait()
        svc.handle(event)

    with ThreadPoolExecutor(len(copies)) as pool:
        list(pool.map(apply, copies))
    assert owed(svc, loan_id) == 51_000 - 7_000
    bal = svc.balances()
    assert bal[("loan_principal_receivable", "BRL")] + bal[("fee_receivable", "BRL")] == 44_000


def test_chargeback_resent_under_a_new_event_id_is_counted_once(svc: DisbursementService) -> None:
    disburse(svc, "of1", 20_000, 0, order_ids=("o1", "o2"))
    cb = ev("order.chargeback", "m1", {"order_id": "o1", "chargeback_id": "cb1", "amount": m(4_000)},
            T0 + timedelta(days=1))
    svc.handle(cb)
    svc.handle({**cb, "id": "another-event-id"})
    with svc.engine.connect() as conn:
        expected = conn.execute(sa.text("SELECT expected FROM financed_orders WHERE order_id = 'o1'")).scalar_one()
    assert expected == 10_000 - 4_000


def test_recovery_after_charge_off_passes_the_database_balance_trigger(svc: DisbursementService) -> None:
    loan_id = disburse_loan(svc, "of1", 10_000, 400, due_days=10)
    svc.age(T0 + timedelta(days=75))
    with svc.engine.connect() as conn:
        assert conn.execute(sa.select(loans.c.state).where(loans.c.loan_id == loan_id)).scalar_one() == "charged_off"
    svc.handle(settlement("m1", "st-late", 12_000, T0 + timedelta(days=76)))
    bal = svc.balances()
    assert bal[("charge_off_loss", "BRL")] == 0  # 10 400 written off, all of it recovered
    assert bal[("merchant_payable", "BRL")] == -1_600  # the rest is the merchant's, to be returned
    assert per_currency_sums(svc) == {"BRL": 0}
    with svc.engine.connect() as conn:
        kinds = conn.execute(sa.text("SELECT kind FROM journal_entries WHERE loan_id = :l ORDER BY created_at"),
                             {"l": loan_id}).scalars().all()
    # (the payout entry is dated by the service clock, which this test keeps at T0, before the acceptance)
    assert kinds.count("payout") == 1
    assert [k for k in kinds if k != "payout"] == ["disbursement", "charge_off", "recovery"]


def test_accepting_an_offer_id_longer_than_any_stored_one_is_not_found_not_a_crash(svc: DisbursementService) -> None:
    result = svc.accept(AcceptOffer("of" + "x" * 300, "m1", "k-long", T0))
    assert (result.status_code, result.code) == (404, "offer_not_found")
    again = svc.accept(AcceptOffer("of" + "x" * 300, "m1", "k-long", T0))
    assert (again.status_code, again.code) == (404, "offer_not_found")


def test_settlement_ids_as_long_as_the_schema_allows_repay_overpay_and_refund(svc: DisbursementService) -> None:
    loan_id = disburse_loan(svc, "of1", 10_000, 500, due_days=10)
    long_id = "settlement-" + "9" * 117  # 128 characters: the longest id the schemas accept
    svc.handle(settlement("m1", long_id, 12_000, T0 + timedelta(days=1)))
    assert owed(svc, loan_id) == 0
    assert svc.recover(T0 + timedelta(days=1)) == 1  # the 1 500 overpayment goes back to the merchant
    bal = svc.balances()
    assert bal[("merchant_payable", "BRL")] == 0 and per_currency_sums(svc) == {"BRL": 0}
    other = disburse_loan(svc, "of2", 10_000, 400, due_days=10, order_ids=("o2",))
    svc.age(T0 + timedelta(days=75))
    svc.handle(settlement("m1", long_id.replace("9", "8"), 1_000, T0 + timedelta(days=76)))
    assert svc.balances()[("charge_off_loss", "BRL")] == 10_400 - 1_000
    assert owed(svc, other) == 0


def test_an_event_the_database_cannot_store_is_skipped_by_the_consumer_not_fatal(svc: DisbursementService) -> None:
    import json
    from types import SimpleNamespace

    from services.disbursement.adapters import kafka

    def record(event: dict[str, Any], offset: int) -> Any:
        return SimpleNamespace(topic="marketplace.events.v1", partition=0, offset=offset,
                               value=json.dumps(event).encode())

    # Produced straight to the topic, past ingest: an id longer than any column holds.
    poison = {**settlement("m1", "st-1", 0, T0), "id": "e" * 300}
    kafka._apply(svc, record(poison, 1))  # before: DataError out of the consumer thread, which died
    kafka._apply(svc, record(settlement("m1", "st-2", 700, T0), 2))
    assert svc.balances()[("merchant_payable", "BRL")] == -700  # the next event still applies


def test_database_refuses_an_entry_balanced_only_across_currencies_or_unbalanced_later(
        svc: DisbursementService) -> None:
    insert_entry = "INSERT INTO journal_entries (entry_id, kind, created_at) VALUES (:e, 'manual', now())"
    insert_line = ("INSERT INTO journal_lines (entry_id, account, side, amount, currency) "
                   "VALUES (:e, :a, :s, :n, :c)")
    with pytest.raises(sa.exc.DBAPIError, match="does not balance"), svc.engine.begin() as conn:
        conn.execute(sa.text(insert_entry), {"e": "fx"})
        conn.execute(sa.text(insert_line), [{"e": "fx", "a": "funding_cash", "s": "D", "n": 100, "c": "BRL"},
                                            {"e": "fx", "a": "fee_income", "s": "C", "n": 100, "c": "USD"}])
    loan_id = disburse_loan(svc, "of1", 10_000, 500)
    entry = f"disbursement:{loan_id}"
    with pytest.raises(sa.exc.DBAPIError, match="does not balance"), svc.engine.begin() as conn:
        # one more line slipped into a committed, balanced entry
        conn.execute(sa.text(insert_line), {"e": entry, "a": "funding_cash", "s": "C", "n": 1, "c": "BRL"})
    assert per_currency_sums(svc) == {"BRL": 0}


def test_on_postgres_a_charged_off_loan_stays_in_the_instruction_until_recovered_and_the_audit_agrees(
        svc: DisbursementService) -> None:
    bus = svc.publisher
    loan_id = disburse_loan(svc, "of1", 10_000, 400, due_days=10)
    svc.age(T0 + timedelta(days=75))
    svc.relay_outbox()
    ins = bus.of_type("collection.instruction")[-1]["data"]  # type: ignore[union-attr]
    assert ins["owed"] == m(10_400) and ins["loan_ids"] == [loan_id] and ins["withhold_rate_bps"] == 5000
    assert audit_collections(svc) == []
    svc.handle(settlement("m1", "st-late", 3_000, T0 + timedelta(days=76)))
    svc.relay_outbox()
    assert bus.of_type("collection.instruction")[-1]["data"]["owed"] == m(7_400)  # type: ignore[union-attr]
    assert svc.balances()[("charge_off_loss", "BRL")] == 7_400
    assert audit_collections(svc) == []


def test_on_postgres_re_registering_a_merchant_signs_with_both_secrets_until_the_overlap_ends(
        svc: DisbursementService) -> None:
    from services.disbursement.verifier.verify import WebhookVerificationError, verify

    old_secret = svc.register_merchant("m2", "https://m2.example/hooks", "key-m2-0123456789abcdef")
    new_secret = svc.register_merchant("m2", "https://m2.example/v2", "key-m2-0123456789abcdef")
    svc.handle(ev("credit_limit.updated", "m2", {
        "limit": m(1_000), "available": m(1_000), "outstanding": m(0), "eligible_receivables": m(2_000),
        "pd": 0.02, "model_version": "t1", "reasons": []}, T0))
    transport = svc.transport
    assert svc.dispatch_webhooks(T0 + timedelta(hours=23)) >= 1  # default overlap: 24 h
    _, headers, body = transport.calls[-1]  # type: ignore[attr-defined]
    for secret in (old_secret, new_secret):
        assert verify(secret, headers, body, now=(T0 + timedelta(hours=23)).timestamp())["subject"] == "m2"
    svc.handle(ev("credit_limit.updated", "m2", {
        "limit": m(900), "available": m(900), "outstanding": m(0), "eligible_receivables": m(2_000),
        "pd": 0.02, "model_version": "t1", "reasons": []}, T0 + timedelta(hours=1)))
    later = T0 + timedelta(hours=25)
    assert svc.dispatch_webhooks(later) >= 1
    _, headers, body = transport.calls[-1]  # type: ignore[attr-defined]
    assert verify(new_secret, headers, body, now=later.timestamp())["subject"] == "m2"
    with pytest.raises(WebhookVerificationError):
        verify(old_secret, headers, body, now=later.timestamp())
