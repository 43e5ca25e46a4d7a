"""Third-round attacks and leftovers on real PostgreSQL (migrated schema with its constraints): the payout cap
counted by two replicas at once, a rail's unusable payout id, an offer arriving after its order was closed,
two replicas accepting one offer under different keys, and migrations 0009-0011 up and down."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from services.disbursement.adapters.orm import loans, payouts
from services.disbursement.bootstrap import bootstrap, make_engine
from services.disbursement.migrations import upgrade
from services.disbursement.ports import PayoutFailed, PayoutRequest
from services.disbursement.service import AcceptOffer, loan_id_for
from services.disbursement.settings import DisbursementSettings
from tests.migration_roundtrip import columns, down_and_up_again, tables
from tests.unit.disbursement_helpers import T0, Bus, Clock, Transport, limit, offer, service_env, settlement

pytestmark = pytest.mark.integration


@pytest.fixture()
def engine(pg_schema_url: str) -> Any:
    eng = make_engine(pg_schema_url, pool_size=20)
    upgrade(eng)
    yield eng
    eng.dispose()


class CountingDownRail:
    def __init__(self, payout_id: str | None = None) -> None:
        self.calls = 0
        self.payout_id = payout_id
        self._lock = threading.Lock()

    def pay(self, request: PayoutRequest) -> str:
        with self._lock:
            self.calls += 1
        if self.payout_id is None:
            raise PayoutFailed("payout API answered 503")
        return self.payout_id


def _loan(engine: sa.Engine) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.select(loans).where(loans.c.loan_id == loan_id_for("of1"))).one()


def test_on_postgres_two_replicas_recovering_a_failing_payout_count_every_attempt_and_park_it_once(
        engine: sa.Engine) -> None:
    rail = CountingDownRail()
    settings = DisbursementSettings(recovery_after_seconds=0, payout_max_attempts=9, payout_max_age_seconds=0)
    svc = service_env(settings, engine=engine, rail=rail)["svc"]
    other = bootstrap(settings, engine=engine, bus=Bus(), rail=rail, transport=Transport(), clock=Clock(),
                      registry=CollectorRegistry())
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 10_000, 300))
    assert svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(minutes=1))).status_code == 202
    with ThreadPoolExecutor(2) as pool:
        for _ in range(6):
            list(pool.map(lambda s: s.recover(T0 + timedelta(minutes=2)), (svc, other)))
    row = _loan(engine)
    assert row.state == "accepted" and row.payout_parked_at is not None
    assert row.payout_attempts == 9 and rail.calls >= 9
    parked = [r for r in svc.audit_trail("m1") if r["outcome"] == "parked"]
    assert len(parked) == 1
    calls = rail.calls
    svc.recover(T0 + timedelta(minutes=3))
    assert rail.calls == calls


def test_on_postgres_a_payout_id_longer_than_128_characters_leaves_the_loan_accepted_not_broken(
        engine: sa.Engine) -> None:
    rail = CountingDownRail(payout_id="p" * 300)
    svc = service_env(DisbursementSettings(recovery_after_seconds=0), engine=engine, rail=rail)["svc"]
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 10_000, 300))
    first = svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(minutes=1)))
    assert (first.status_code, first.body["state"]) == (202, "accepted")
    assert svc.recover(T0 + timedelta(minutes=2)) == 0
    assert (_loan(engine).state, _loan(engine).payout_attempts) == ("accepted", 2)
    rail.payout_id = "po_ok_1"
    assert svc.recover(T0 + timedelta(minutes=3)) == 1
    with engine.connect() as conn:
        assert conn.execute(sa.select(payouts.c.payout_id)).scalars().all() == ["po_ok_1"]


def test_on_postgres_an_offer_arriving_after_its_order_settled_is_refused(engine: sa.Engine) -> None:
    svc = service_env(engine=engine)["svc"]
    svc.handle(limit("m1", 100_000))
    svc.handle(settlement("m1", "s1", 0, T0 + timedelta(minutes=5), orders=(("o1", 20_000),)))
    svc.handle(offer("m1", "of1", 10_000, 300, at=T0, order_ids=("o1",)))
    result = svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(minutes=10)))
    assert (result.status_code, result.code) == (409, "receivables_changed")


def test_on_postgres_two_replicas_accepting_one_offer_under_different_keys_make_one_loan(engine: sa.Engine) -> None:
    svc = service_env(engine=engine)["svc"]
    other = bootstrap(DisbursementSettings(), engine=engine, bus=Bus(), transport=Transport(), clock=Clock(),
                      registry=CollectorRegistry())
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 10_000, 300))
    barrier = threading.Barrier(20)

    def take(i: int) -> tuple[int, str | None]:
        replica = (svc, other)[i % 2]
        barrier.wait()
        r = replica.accept(AcceptOffer("of1", "m1", f"key-{i}", T0 + timedelta(minutes=1)))
        return r.status_code, r.code

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(take, range(20)))
    assert sorted(a for a in answers if a[0] == 200) == [(200, None)]
    assert {a for a in answers if a[0] != 200} == {(409, "offer_already_accepted")}
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(loans)).scalar() == 1
        assert conn.execute(sa.select(sa.func.count()).select_from(payouts)).scalar() == 1
    # every losing key now answers the same final refusal, never a loan
    again = svc.accept(AcceptOffer("of1", "m1", "key-1" if answers[1][0] != 200 else "key-2",
                                   T0 + timedelta(minutes=2)))
    assert (again.status_code, again.code) == (409, "offer_already_accepted")


def test_on_postgres_migrations_0009_to_0011_downgrade_to_0008_and_upgrade_again(pg_schema_url: str) -> None:
    eng = make_engine(pg_schema_url)
    try:
        down_and_up_again(eng, "0008", lambda conn: ["closed_orders" in tables(conn),
                                                     "payout_attempts" in columns(conn, "loans")])
    finally:
        eng.dispose()


def test_on_postgres_a_rail_reusing_a_payout_id_is_a_rail_error_not_a_server_error(engine: sa.Engine) -> None:
    rail = CountingDownRail(payout_id="po_same")
    svc = service_env(DisbursementSettings(recovery_after_seconds=0), engine=engine, rail=rail)["svc"]
    svc.handle(limit("m1", 1_000_000))
    svc.handle(offer("m1", "of1", 10_000, 300, order_ids=("o1",)))
    assert svc.accept(AcceptOffer("of1", "m1", "k1", T0 + timedelta(minutes=1))).status_code == 200
    svc.handle(offer("m1", "of2", 10_000, 300, at=T0 + timedelta(minutes=2), order_ids=("o2",)))
    second = svc.accept(AcceptOffer("of2", "m1", "k2", T0 + timedelta(minutes=3)))
    assert (second.status_code, second.body["state"]) == (202, "accepted")
    with engine.connect() as conn:
        row = conn.execute(sa.select(loans.c.state, loans.c.payout_attempts)
                           .where(loans.c.loan_id == loan_id_for("of2"))).one()
        assert tuple(row) == ("accepted", 1)
        assert conn.execute(sa.select(sa.func.count()).select_from(payouts)).scalar() == 1
    bal = svc.balances()  # the second loan owes the merchant its principal; only the first one's cash left
    assert bal[("funding_cash", "BRL")] == -10_000 and bal[("merchant_payable", "BRL")] == -10_000
