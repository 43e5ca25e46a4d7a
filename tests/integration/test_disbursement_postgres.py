"""Disbursement on real PostgreSQL: concurrency, crash recovery, ownership and ledger constraints."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from services.disbursement.adapters.orm import loans, payouts, sandbox_payouts
from services.disbursement.adapters.payout_rails import SandboxRail
from services.disbursement.bootstrap import bootstrap, make_engine
from services.disbursement.migrations import upgrade
from services.disbursement.ports import PayoutFailed, PayoutRequest
from services.disbursement.service import AcceptOffer, DisbursementService
from services.disbursement.settings import DisbursementSettings
from tests.unit.disbursement_helpers import T0, Bus, Clock, Transport, limit, offer, onboarded

pytestmark = pytest.mark.integration


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the service catches it."""


class FlakyRail:
    """Fails (or 'kills the process') on the first call, then behaves like the sandbox."""

    def __init__(self, engine: sa.Engine, error: BaseException):
        self.inner = SandboxRail(engine)
        self.error: BaseException | None = error

    def pay(self, request: PayoutRequest) -> str:
        if self.error is not None:
            err, self.error = self.error, None
            raise err
        return self.inner.pay(request)


@pytest.fixture()
def engine(pg_schema_url: str) -> Any:
    eng = make_engine(pg_schema_url, pool_size=30)
    upgrade(eng)
    yield eng
    eng.dispose()


def make(engine: sa.Engine, rail: Any = None, clock: Clock | None = None) -> DisbursementService:
    return bootstrap(DisbursementSettings(recovery_after_seconds=0), engine=engine, bus=Bus(), rail=rail,
                     transport=Transport(), clock=clock or Clock(), registry=CollectorRegistry())


def seed(svc: DisbursementService, merchant: str = "m1", offer_id: str = "of1") -> None:
    svc.register_merchant(merchant, f"https://{merchant}.example/h", f"key-{merchant}-0123456789abcdef")
    svc.handle(onboarded(merchant))
    svc.handle(limit(merchant, 100_000))
    svc.handle(offer(merchant, offer_id, 50_000, 1_000))


def counts(engine: sa.Engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        return tuple(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()  # type: ignore[return-value]
                     for t in (loans, payouts, sandbox_payouts))


def test_fifty_concurrent_accepts_of_one_offer_make_one_loan_and_one_payout(engine: sa.Engine) -> None:
    svc = make(engine)
    seed(svc)
    barrier = threading.Barrier(50)

    def go(i: int) -> int:
        barrier.wait()
        key = f"k{i % 5}"  # some share a key (replays), most race with their own
        return svc.accept(AcceptOffer("of1", "m1", key, T0 + timedelta(minutes=1))).status_code

    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(go, range(50)))
    assert counts(engine) == (1, 1, 1)
    assert set(codes) <= {200, 202, 409} and codes.count(409) >= 40
    assert svc.balances()[("loan_principal_receivable", "BRL")] == 50_000


def test_payout_failure_after_ledger_write_is_recovered_exactly_once(engine: sa.Engine) -> None:
    svc = make(engine, rail=FlakyRail(engine, PayoutFailed("rail timeout")))
    seed(svc)
    first = svc.accept(AcceptOffer("of1", "m1", "k1", T0))
    assert first.status_code == 202 and first.body["state"] == "accepted"
    assert counts(engine) == (1, 0, 0)
    assert svc.recover(T0 + timedelta(minutes=5)) == 1
    assert svc.recover(T0 + timedelta(minutes=6)) == 0
    assert counts(engine) == (1, 1, 1)
    replay = svc.accept(AcceptOffer("of1", "m1", "k1", T0))
    assert replay.status_code == 200 and replay.body["state"] == "disbursed"


def test_crash_between_ledger_write_and_payout_call_recovers_with_same_key(engine: sa.Engine) -> None:
    crashing = make(engine, rail=FlakyRail(engine, Crash()))
    seed(crashing)
    with pytest.raises(Crash):
        crashing.accept(AcceptOffer("of1", "m1", "k1", T0))
    assert counts(engine) == (1, 0, 0)
    restarted = make(engine)  # a new process over the same database
    # Two replicas recovering at once still pay once.
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: restarted.recover(T0 + timedelta(minutes=5)), range(4)))
    assert counts(engine) == (1, 1, 1)
    with engine.connect() as conn:
        key = conn.execute(sa.select(sandbox_payouts.c.idempotency_key)).scalar_one()
        loan_id = conn.execute(sa.select(loans.c.loan_id)).scalar_one()
    assert key == loan_id


def test_merchant_cannot_accept_another_merchants_offer(engine: sa.Engine) -> None:
    svc = make(engine)
    seed(svc, "mA", "ofA")
    seed(svc, "mB", "ofB")
    result = svc.accept(AcceptOffer("ofB", "mA", "k1", T0))
    assert (result.status_code, result.code) == (404, "offer_not_found")
    missing = svc.accept(AcceptOffer("nope", "mA", "k2", T0))
    assert missing.body == result.body  # indistinguishable from an offer that does not exist
    assert counts(engine) == (0, 0, 0)


def test_database_rejects_unbalanced_entry_inserted_with_sql(engine: sa.Engine) -> None:
    with pytest.raises(sa.exc.DBAPIError, match="does not balance in BRL"), engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO journal_entries (entry_id, kind, created_at) VALUES ('x1', 'manual', now())"))
        conn.execute(sa.text("INSERT INTO journal_lines (entry_id, account, side, amount, currency) VALUES "
                             "('x1', 'funding_cash', 'D', 100, 'BRL'), ('x1', 'fee_income', 'C', 90, 'BRL')"))
    with pytest.raises(sa.exc.IntegrityError, match="journal_lines_amount_positive"), engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO journal_entries (entry_id, kind, created_at) VALUES ('x2', 'manual', now())"))
        conn.execute(sa.text("INSERT INTO journal_lines (entry_id, account, side, amount, currency) VALUES "
                             "('x2', 'funding_cash', 'D', 0, 'BRL'), ('x2', 'fee_income', 'C', 0, 'BRL')"))
    with engine.begin() as conn:  # a balanced one goes through
        conn.execute(sa.text("INSERT INTO journal_entries (entry_id, kind, created_at) VALUES ('x3', 'manual', now())"))
        conn.execute(sa.text("INSERT INTO journal_lines (entry_id, account, side, amount, currency) VALUES "
                             "('x3', 'funding_cash', 'D', 100, 'BRL'), ('x3', 'fee_income', 'C', 100, 'BRL')"))


def test_journal_is_append_only(engine: sa.Engine) -> None:
    svc = make(engine)
    seed(svc)
    assert svc.accept(AcceptOffer("of1", "m1", "k1", T0)).status_code == 200
    for stmt in ("UPDATE journal_lines SET amount = amount + 1", "DELETE FROM journal_lines",
                 "DELETE FROM journal_entries"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(sa.text(stmt))
