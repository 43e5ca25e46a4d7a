"""Second-round attacks on real PostgreSQL: ids PostgreSQL cannot store, a refusal that stops holding while a
merchant retries the same request from many threads, and an aging pass run for an earlier time."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from services.disbursement.adapters.http_api import create_app
from services.disbursement.adapters.orm import idempotency_keys, loans, offers, payouts
from services.disbursement.bootstrap import make_engine
from services.disbursement.migrations import upgrade
from services.disbursement.service import AcceptOffer
from tests.unit.disbursement_helpers import M1_KEY, T0, disburse, limit, offer, service_env

pytestmark = pytest.mark.integration


@pytest.fixture()
def env(pg_schema_url: str) -> Any:
    eng = make_engine(pg_schema_url, pool_size=20)
    upgrade(eng)
    yield service_env(engine=eng)
    eng.dispose()


def test_on_postgres_a_nul_or_lone_surrogate_in_an_id_is_not_found_not_a_server_error(env: dict[str, Any]) -> None:
    svc = env["svc"]
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 10_000))
    client = TestClient(create_app(svc), raise_server_exceptions=False)
    auth = {"Authorization": f"Bearer {M1_KEY}", "Idempotency-Key": "k1"}
    assert client.post("/v1/offers/of%001/accept", headers=auth).status_code == 404
    assert client.get("/v1/offers/of%001", headers=auth).status_code == 404
    assert client.get("/v1/loans/ln%00x", headers=auth).status_code == 404
    assert svc.accept(AcceptOffer("of1", "m1", "k\x00", T0)).code == "idempotency_key_invalid"
    assert svc.accept(AcceptOffer("\ud800", "m1", "k2", T0)).code == "offer_not_found"
    # nothing was stored for any of them, and the offer is still there to accept
    ok = svc.accept(AcceptOffer("of1", "m1", "k3", T0 + timedelta(minutes=1)))
    assert ok.status_code == 200


def test_on_postgres_concurrent_retries_with_one_key_after_the_kill_switch_is_lifted_make_one_loan(
        env: dict[str, Any]) -> None:
    svc = env["svc"]
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 10_000))
    svc.set_kill_switch(True)
    assert svc.accept(AcceptOffer("of1", "m1", "same-key", T0)).code == "kill_switch"
    svc.set_kill_switch(False)
    barrier = threading.Barrier(12)

    def retry(_: int) -> tuple[int, str | None]:
        barrier.wait()
        result = svc.accept(AcceptOffer("of1", "m1", "same-key", T0 + timedelta(minutes=1)))
        return result.status_code, result.body.get("loan_id")

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(retry, range(12)))
    assert {code for code, _ in answers} <= {200, 202}, answers
    assert len({loan_id for _, loan_id in answers}) == 1
    with svc.engine.connect() as conn:
        assert [conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                for t in (loans, payouts, idempotency_keys)] == [1, 1, 1]


def test_on_postgres_an_aging_pass_for_an_earlier_time_leaves_the_loan_where_it_was(env: dict[str, Any]) -> None:
    svc, bus = env["svc"], env["bus"]
    disburse(svc, "of1", 10_000, 500)
    due = T0 + timedelta(days=10)
    svc.age(due + timedelta(days=12))
    svc.age(due + timedelta(days=2))
    svc.relay_outbox()
    with svc.engine.connect() as conn:
        assert conn.execute(sa.select(loans.c.state, loans.c.dpd, loans.c.bucket)).one() == ("delinquent", 12, "8-30")
    assert [e["data"]["bucket"] for e in bus.of_type("loan.delinquent")] == ["8-30"]


@pytest.mark.parametrize("statement", ["UPDATE audit_log SET outcome = 'accepted'", "DELETE FROM audit_log",
                                       "TRUNCATE audit_log"])
def test_on_postgres_the_audit_trail_refuses_to_be_rewritten(env: dict[str, Any], statement: str) -> None:
    svc = env["svc"]
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 10_000))
    svc.set_kill_switch(True)
    assert svc.accept(AcceptOffer("of1", "m1", "k", T0)).code == "kill_switch"
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), svc.engine.begin() as conn:
        conn.execute(sa.text(statement))
    assert [(r["action"], r["outcome"]) for r in svc.audit_trail("m1")][-1] == ("accept", "kill_switch")


def test_on_postgres_an_offer_accepted_while_the_aging_pass_expires_it_stays_accepted(
        env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The aging pass reads the expiring offers, the merchant's acceptance commits (wall clock still before the
    expiry, event clock already past it), then the pass expires what it read."""
    from services.disbursement import service as service_module
    from services.disbursement.adapters import repository

    svc, bus = env["svc"], env["bus"]
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 10_000, expires_hours=1))
    real_run = repository.run
    accepted: list[int] = []

    def run(conn: Any, stmt: Any, params: Any = None) -> Any:
        result = real_run(conn, stmt, params)
        if stmt is service_module._EXPIRING_PG and not accepted:
            rows = result.all()  # read while the offer is still open
            with ThreadPoolExecutor(1) as pool:  # the acceptance runs and commits in between
                accepted.append(pool.submit(svc.accept, AcceptOffer("of1", "m1", "k", T0)).result().status_code)
            return repository.FastResult(rows)
        return result

    monkeypatch.setattr(repository, "run", run)
    svc.age(T0 + timedelta(hours=2))
    svc.relay_outbox()
    assert accepted == [200]
    with svc.engine.connect() as conn:
        assert conn.execute(sa.select(offers.c.state)).scalar_one() == "accepted"
    assert bus.of_type("loan_offer.expired") == []


@pytest.mark.parametrize("etype,change", [
    ("order.refunded", {"order_id": 12345}),
    ("order.cancelled", {"order_id": {"id": "o1"}}),
    ("loan_offer.withdrawn", {"offer_id": 7}),
    ("loan_offer.created", {"order_ids": [1, 2]}),
    ("loan_offer.created", {"offer_id": ["of9"]}),
    ("settlement.paid", {"settlement_id": {"id": 1}}),
    ("credit_limit.updated", {"trigger_event_id": {"id": "x"}}),
    ("merchant.updated", {"status": {"value": "active"}}),
    ("subject", 42),
])
def test_on_postgres_a_number_or_object_where_an_id_belongs_is_dead_lettered_not_retried_forever(
        env: dict[str, Any], etype: str, change: Any) -> None:
    from types import SimpleNamespace

    from schemas import topics
    from schemas.codec import encode
    from services.disbursement.adapters import kafka
    from tests.unit.disbursement_helpers import ev, m, settlement

    svc = env["svc"]
    disburse(svc, "of1", 10_000, 500)
    at = T0 + timedelta(days=1)
    base = {
        "order.refunded": lambda: ev("order.refunded", "m1", {"order_id": "o1", "refund_id": "r1", "amount": m(10)}, at),
        "order.cancelled": lambda: ev("order.cancelled", "m1", {"order_id": "o1"}, at),
        "loan_offer.withdrawn": lambda: ev("loan_offer.withdrawn", "m1", {"offer_id": "of1", "reasons": []}, at),
        "loan_offer.created": lambda: offer("m1", "of9", 1_000, at=at, order_ids=("o9",)),
        "settlement.paid": lambda: settlement("m1", "s1", 100, at),
        "credit_limit.updated": lambda: limit("m1", 5_000, at=at),
        "merchant.updated": lambda: ev("merchant.updated", "m1", {"status": "active"}, at),
        "subject": lambda: settlement("m1", "s2", 100, at),
    }[etype]()
    if etype == "subject":
        base["subject"] = change
    else:
        base["data"].update(change)
    topic = {"loan_offer.created": topics.LOAN_OFFERS, "loan_offer.withdrawn": topics.LOAN_OFFERS,
             "credit_limit.updated": topics.CREDIT_LIMITS}.get(base["type"], topics.MARKETPLACE_EVENTS)
    record = SimpleNamespace(value=encode(base), topic=topic, partition=0, offset=3)
    letter = kafka._apply(svc, record)
    assert letter is not None and letter["type"] == "ingest.rejected"
    # the consumer goes on: the next event applies
    assert kafka._apply(svc, SimpleNamespace(value=encode(settlement("m1", "s3", 1_000, at)),
                                             topic=topics.MARKETPLACE_EVENTS, partition=0, offset=4)) is None


@pytest.mark.parametrize("account,currency,constraint", [
    ("free_money", "BRL", "journal_lines_account_known"), ("funding_cash", "brl", "journal_lines_currency_code"),
    ("funding_cash", "B$L", "journal_lines_currency_code")])
def test_on_postgres_a_balanced_entry_on_an_invented_account_or_currency_is_refused(
        env: dict[str, Any], account: str, currency: str, constraint: str) -> None:
    engine = env["svc"].engine
    with pytest.raises(sa.exc.IntegrityError, match=constraint), engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO journal_entries (entry_id, kind, created_at) VALUES ('x1', 'manual', now())"))
        conn.execute(sa.text("INSERT INTO journal_lines (entry_id, account, side, amount, currency) VALUES "
                             "('x1', :a, 'D', 100, :c), ('x1', 'funding_cash', 'C', 100, :c)"),
                     {"a": account, "c": currency})
