"""repository.run: on SQLite the hot statements skip SQLAlchemy's per-execution work. Whatever path a
statement takes, callers must see what `Connection.execute` gives them: the same rows (types converted
the same way), the same row counts, the same stored values and SQLAlchemy's own exception classes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from services.disbursement import service as svc
from services.disbursement.adapters import repository as repo
from services.disbursement.adapters.orm import merchants, processed_events
from services.disbursement.bootstrap import make_engine
from services.disbursement.migrations import upgrade

pytestmark = pytest.mark.unit

AT = datetime(2024, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)


@pytest.fixture()
def engine() -> sa.Engine:
    eng = make_engine("sqlite://")
    upgrade(eng)
    return eng


def _merchant(mid: str, **extra: Any) -> dict[str, Any]:
    return {"merchant_id": mid, "status": "active", "currency": "BRL", "webhook_secrets": ["s"],
            "event_types": ["loan.disbursed"], **extra}


def test_a_fast_read_returns_the_rows_sqlalchemy_returns_with_the_same_types(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        repo.run(conn, repo._insert_ignore_stmt("sqlite", merchants),
                 _merchant("m1", last_instruction={"owed": {"amount": 5, "currency": "BRL"}}))
        fast = repo.run(conn, svc._MERCHANT, {"p_merchant": "m1"}).one()
        slow = conn.execute(svc._MERCHANT, {"p_merchant": "m1"}).one()
    assert tuple(fast) == tuple(slow)
    assert fast._asdict() == slow._asdict()
    assert fast.webhook_enabled is True and fast.last_instruction == {"owed": {"amount": 5, "currency": "BRL"}}
    assert _planned(svc._MERCHANT)  # it did take the fast path


def _planned(stmt: Any) -> bool:
    return any(plan is not None and plan.stmt is stmt for plan in repo._PLANS.values())


def test_datetimes_are_stored_as_sqlalchemy_stores_them_and_read_back_aware(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        repo.run(conn, repo._insert_ignore_stmt("sqlite", processed_events),
                 [{"event_id": "e1", "event_type": "t", "processed_at": AT},
                  {"event_id": "e2", "event_type": "t", "processed_at": AT}])
        conn.execute(sa.insert(processed_events), {"event_id": "e3", "event_type": "t", "processed_at": AT})
        stored = conn.execute(sa.text("SELECT event_id, processed_at FROM processed_events ORDER BY event_id")).all()
        read = repo.run(conn, sa.select(processed_events).where(processed_events.c.event_id == sa.bindparam("p")),
                        {"p": "e1"}).one()
    assert [r[1] for r in stored] == [stored[2][1]] * 3  # the fast path wrote exactly what SQLAlchemy writes
    assert read.processed_at == AT and read.processed_at.tzinfo is not None


def test_in_lists_expand_and_an_empty_one_falls_back_to_sqlalchemy(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for mid in ("a", "b", "c"):
            repo.insert_ignore(conn, merchants, _merchant(mid))
        many = repo.run(conn, repo._WEBHOOK_TARGETS_IN, {"p_merchants": ["a", "c", "x"]}).all()
        one = repo.run(conn, repo._WEBHOOK_TARGETS_IN, {"p_merchants": ["b"]}).all()
        none = repo.run(conn, repo._WEBHOOK_TARGETS_IN, {"p_merchants": []}).all()
    assert sorted(r.merchant_id for r in many) == ["a", "c"]
    assert [r.merchant_id for r in one] == ["b"]
    assert list(none) == []


def test_row_counts_match_and_a_repeated_insert_is_ignored(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        assert repo.insert_ignore(conn, merchants, _merchant("m1")) is True
        assert repo.insert_ignore(conn, merchants, _merchant("m1")) is False
        assert repo.run(conn, svc._UPDATE_MERCHANT, {"p_merchant": "m1", "status": "paused"}).rowcount == 1
        assert repo.run(conn, svc._UPDATE_MERCHANT, {"p_merchant": "nobody", "status": "paused"}).rowcount == 0
        assert repo.run(conn, svc._MERCHANT, {"p_merchant": "m1"}).one().status == "paused"


def test_a_constraint_violation_raises_sqlalchemys_integrity_error(engine: sa.Engine) -> None:
    stmt = sa.insert(processed_events)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        repo.run(conn, stmt, {"event_id": "e1", "event_type": "t", "processed_at": AT})
        repo.run(conn, stmt, {"event_id": "e1", "event_type": "t", "processed_at": AT})
    with engine.connect() as conn:  # the failed transaction left nothing behind
        assert repo.run(conn, svc._PROCESSED_IN, {"p_ids": ["e1"]}).scalars().all() == []


def test_a_statement_needing_python_side_defaults_goes_through_sqlalchemy(engine: sa.Engine) -> None:
    with engine.begin() as conn:  # webhook_secrets and event_types have Python defaults (list)
        assert repo.insert_ignore(conn, merchants, {"merchant_id": "m1", "status": "active"}) is True
        row = repo.run(conn, svc._MERCHANT, {"p_merchant": "m1"}).one()
    assert row.webhook_secrets == [] and row.event_types == []
    key = (id(repo._insert_ignore_stmt("sqlite", merchants)), ("merchant_id", "status"), False)
    assert repo._PLANS[key] is None  # left to SQLAlchemy, which computes the defaults
