"""Review on real PostgreSQL: migrations 0006-0008 upgrade from 0005 and downgrade back cleanly, their guards hold
(append-only audit log, journal accounts and currencies), every account the ledger books to is accepted, and a loan
accepted before the merchant payable existed moves its cash once when recovery pays it after the upgrade."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from services.disbursement.bootstrap import make_engine
from services.disbursement.domain import ledger
from services.disbursement.domain.ledger import Account
from services.disbursement.migrations import alembic_config, current, upgrade
from services.disbursement.service import AcceptOffer
from services.disbursement.settings import DisbursementSettings
from tests.unit.disbursement_helpers import T0, DownThenUpRail, limit, offer, service_env
from tests.unit.test_review_disbursement import previous_disbursement

pytestmark = pytest.mark.integration


def _downgrade(engine: sa.Engine, revision: str) -> None:
    with engine.begin() as conn:
        command.downgrade(alembic_config(connection=conn), revision)


def _line(conn: sa.Connection, entry: str, account: str, side: str, currency: str = "BRL") -> None:
    conn.execute(sa.text("INSERT INTO journal_lines (entry_id, account, side, amount, currency) "
                         "VALUES (:e, :a, :s, 100, :c)"), {"e": entry, "a": account, "s": side, "c": currency})


def _entry(conn: sa.Connection, entry: str) -> None:
    conn.execute(sa.text("INSERT INTO journal_entries (entry_id, kind, created_at) VALUES (:e, 'test', :t)"),
                 {"e": entry, "t": datetime(2025, 1, 1, tzinfo=UTC)})


def test_migrations_0006_to_0008_upgrade_from_0005_guard_the_books_and_downgrade_cleanly(pg_schema_url: str) -> None:
    eng = make_engine(pg_schema_url)
    try:
        upgrade(eng, "0005")
        with eng.begin() as conn:  # books written before the upgrade, on every account the ledger knows
            _entry(conn, "before")
            for account in Account:
                _line(conn, "before", account.value, "D")
                _line(conn, "before", account.value, "C")
        upgrade(eng, "0008")
        assert current(eng) == "0008"
        with eng.begin() as conn:
            _entry(conn, "every-account")
            for account in Account:  # the constraint accepts every account the code books to
                _line(conn, "every-account", account.value, "D")
                _line(conn, "every-account", account.value, "C")
        for account, currency in (("free_money", "BRL"), ("funding_cash", "brl"), ("funding_cash", "R$")):
            with pytest.raises(sa.exc.IntegrityError), eng.begin() as conn:
                _entry(conn, "bad")
                _line(conn, "bad", account, "D", currency)
                _line(conn, "bad", "funding_cash", "C")
        with eng.begin() as conn:
            conn.execute(sa.text("INSERT INTO audit_log (at, actor, action, outcome, detail) "
                                 "VALUES (now(), 'operator', 'kill_switch', 'on', '{}')"))
        for stmt in ("UPDATE audit_log SET outcome = 'off'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"), eng.begin() as conn:
                conn.execute(sa.text(stmt))
        with eng.connect() as conn:
            assert conn.execute(sa.text("SELECT outcome FROM audit_log")).scalars().all() == ["on"]

        _downgrade(eng, "0005")
        assert current(eng) == "0005"
        with eng.connect() as conn:
            names = set(sa.inspect(conn).get_table_names())
            columns = {c["name"] for c in sa.inspect(conn).get_columns("merchants")}
            functions = conn.execute(sa.text(  # this test's schema only: others may hold one
                "SELECT count(*) FROM pg_proc WHERE proname = 'fb_audit_append_only' "
                "AND pronamespace = current_schema()::regnamespace"))
            assert "audit_log" not in names and "status_at" not in columns and functions.scalar_one() == 0
        upgrade(eng, "0008")  # and up again
        assert current(eng) == "0008"
    finally:
        eng.dispose()


def test_on_postgres_a_loan_accepted_before_the_upgrade_and_paid_after_it_moves_its_cash_once(
        pg_schema_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    eng = make_engine(pg_schema_url)
    try:
        upgrade(eng)
        rail = DownThenUpRail()
        svc: Any = service_env(DisbursementSettings(recovery_after_seconds=0), engine=eng, rail=rail)["svc"]
        rail.attach(svc.engine)
        svc.handle(limit("m1", 100_000))
        svc.handle(offer("m1", "of1", 10_000, 300))
        with monkeypatch.context() as patched:
            patched.setattr(ledger, "disbursement", previous_disbursement)
            assert svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(minutes=1))).status_code == 202
        rail.down = False
        assert svc.recover(T0 + timedelta(minutes=2)) == 1
        bal = svc.balances()
        assert bal[("funding_cash", "BRL")] == -10_000 and bal.get(("merchant_payable", "BRL"), 0) == 0
    finally:
        eng.dispose()
