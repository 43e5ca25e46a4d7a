"""On real PostgreSQL (migrated schema, its ledger triggers and constraints): a payout the rail refuses for good
cancels the loan, reverses its acceptance entry, answers a retry with the final refusal and announces loan.cancelled."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from services.disbursement.adapters.orm import loans
from services.disbursement.bootstrap import make_engine
from services.disbursement.migrations import upgrade
from services.disbursement.ports import PayoutFailed, PayoutRejected, PayoutRequest
from services.disbursement.service import AcceptOffer, loan_id_for
from services.disbursement.settings import DisbursementSettings
from tests.unit.disbursement_helpers import T0, limit, offer, service_env

pytestmark = pytest.mark.integration


class FailThenRefuseRail:
    def __init__(self) -> None:
        self.refuse = False

    def pay(self, request: PayoutRequest) -> str:
        if self.refuse:
            raise PayoutRejected("payout API refused (410): account closed")
        raise PayoutFailed("payout API answered 503")


def test_on_postgres_recovery_cancels_a_loan_whose_payout_is_refused_for_good(pg_schema_url: str) -> None:
    eng = make_engine(pg_schema_url)
    try:
        upgrade(eng)
        rail = FailThenRefuseRail()
        e: Any = service_env(DisbursementSettings(recovery_after_seconds=0), engine=eng, rail=rail)
        svc, bus = e["svc"], e["bus"]
        svc.handle(limit("m1", 100_000))
        svc.handle(offer("m1", "of1", 10_000, 300))
        assert svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(minutes=1))).status_code == 202
        rail.refuse = True
        assert svc.recover(T0 + timedelta(minutes=2)) == 0
        lid = loan_id_for("of1")
        with eng.connect() as conn:
            row = conn.execute(sa.select(loans.c.state, loans.c.principal_due, loans.c.fee_due)
                               .where(loans.c.loan_id == lid)).one()
        assert tuple(row) == ("cancelled", 0, 0)
        assert all(v == 0 for v in svc.balances().values()), svc.balances()
        replay = svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(minutes=3)))
        assert (replay.status_code, replay.code) == (409, "payout_rejected")
        svc.relay_outbox()
        assert [c["data"]["loan_id"] for c in bus.of_type("loan.cancelled")] == [lid]
        assert svc.recover(T0 + timedelta(minutes=4)) == 0  # nothing left to retry
    finally:
        eng.dispose()
