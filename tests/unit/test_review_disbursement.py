"""Review of the disbursement round-2 hardening: the merchant payable booked at acceptance and cleared by the
payout, for loans accepted before and after an in-place upgrade. Through bootstrap on SQLite."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from services.common.money import Money
from services.disbursement.domain import ledger
from services.disbursement.domain.ledger import Account, Side, make_entry
from services.disbursement.service import AcceptOffer
from services.disbursement.settings import DisbursementSettings
from tests.unit.disbursement_helpers import T0, DownThenUpRail, limit, offer, service_env

pytestmark = pytest.mark.unit




def previous_disbursement(entry_id: str, loan_id: str, principal: Money, fee: Money) -> ledger.JournalEntry:
    """The acceptance entry as the version before the merchant payable booked it: cash out at acceptance."""
    return make_entry(entry_id, "disbursement", loan_id, [
        (Account.LOAN_PRINCIPAL_RECEIVABLE, Side.DEBIT, principal),
        (Account.FUNDING_CASH, Side.CREDIT, principal),
        (Account.FEE_RECEIVABLE, Side.DEBIT, fee),
        (Account.FEE_INCOME, Side.CREDIT, fee),
    ])


def test_a_loan_accepted_before_the_upgrade_and_paid_after_it_moves_its_cash_once(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    rail = DownThenUpRail()
    svc = service_env(DisbursementSettings(recovery_after_seconds=0), db_url=f"sqlite:///{tmp_path}/d.db",
                      rail=rail)["svc"]
    rail.attach(svc.engine)
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 10_000, 300))
    with monkeypatch.context() as patched:  # accepted by the previous version, its payout still failing
        patched.setattr(ledger, "disbursement", previous_disbursement)
        assert svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(minutes=1))).status_code == 202
    assert svc.balances()[("funding_cash", "BRL")] == -10_000
    rail.down = False  # upgraded in place; the rail is back and recovery pays the loan
    assert svc.recover(T0 + timedelta(minutes=2)) == 1
    bal = svc.balances()
    assert bal[("funding_cash", "BRL")] == -10_000, "the principal left the cash account twice"
    assert bal.get(("merchant_payable", "BRL"), 0) == 0, "a payable the merchant was never owed was debited"
    assert ledger.sign_violations({(Account(a), c): v for (a, c), v in bal.items()}) == []


def test_a_loan_accepted_and_paid_by_recovery_after_the_upgrade_clears_its_payable_exactly_once(
        tmp_path: Any) -> None:
    rail = DownThenUpRail()
    svc = service_env(DisbursementSettings(recovery_after_seconds=0), db_url=f"sqlite:///{tmp_path}/d.db",
                      rail=rail)["svc"]
    rail.attach(svc.engine)
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 10_000, 300))
    assert svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(minutes=1))).status_code == 202
    rail.down = False
    assert svc.recover(T0 + timedelta(minutes=2)) == 1
    assert svc.recover(T0 + timedelta(minutes=3)) == 0
    replay = svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(minutes=4)))
    assert replay.status_code == 200
    bal = svc.balances()
    assert bal[("funding_cash", "BRL")] == -10_000 and bal[("merchant_payable", "BRL")] == 0


def test_on_sqlite_migrations_0006_to_0008_downgrade_to_0005_and_upgrade_again(tmp_path: Any) -> None:
    import sqlalchemy as sa
    from alembic import command

    from services.disbursement.migrations import alembic_config, current, upgrade

    eng = sa.create_engine(f"sqlite:///{tmp_path}/m.db")
    upgrade(eng, "0008")
    assert current(eng) == "0008"
    with eng.begin() as conn:
        command.downgrade(alembic_config(connection=conn), "0005")
    assert current(eng) == "0005"
    with eng.connect() as conn:
        assert "audit_log" not in sa.inspect(conn).get_table_names()
        triggers = conn.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'trigger'")).scalars().all()
        assert not [t for t in triggers if t.startswith(("audit_log", "journal_lines_account"))]
    upgrade(eng, "0008")
    assert current(eng) == "0008"
    eng.dispose()
