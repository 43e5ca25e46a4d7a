"""The embedded engine does what the Kafka services' wiring does: order.paid reaches disbursement, money withheld
beyond what is owed goes back to the merchant, and a payout re-sent under its id with other content is a conflict."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from floatbridge.embedded.engine import EmbeddedEngine, EngineOptions
from services.disbursement.adapters.orm import merchant_refunds, order_amounts
from tests.scenario import healthy_merchant, settlement

pytestmark = pytest.mark.unit

END = datetime(2025, 3, 1, tzinfo=UTC)


def engine_with(tmp_path: Path, mid: str = "m1") -> tuple[EmbeddedEngine, list[tuple[str, int]]]:
    history = healthy_merchant(mid, END, days=20, seed=3)
    engine = EmbeddedEngine(EngineOptions(db_path=tmp_path / "d.sqlite", accept="none"))
    engine.feed(list(enumerate(history.events, 1)))
    return engine, history.open_orders


def rows(engine: EmbeddedEngine, table: sa.Table) -> list[sa.Row]:
    with engine.disbursement.engine.connect() as conn:
        return list(conn.execute(sa.select(table)))


def test_what_each_order_was_paid_reaches_disbursement_as_in_the_kafka_service(tmp_path: Path) -> None:
    engine, open_orders = engine_with(tmp_path)
    paid = {r.order_id: r.amount for r in rows(engine, order_amounts)}
    assert open_orders and all(paid.get(order_id) == amount for order_id, amount in open_orders)


def test_money_withheld_from_a_merchant_who_owes_nothing_goes_back_at_the_next_daily_tick(tmp_path: Path) -> None:
    engine, open_orders = engine_with(tmp_path)
    at = END + timedelta(hours=2)
    engine.feed([(1000, settlement("m1", at, open_orders[:2], "s-over", withheld=5_000))])
    assert [(r.amount, r.state) for r in rows(engine, merchant_refunds)] == [(5_000, "pending")]
    engine._advance(at + timedelta(days=1, hours=1))
    assert [(r.amount, r.state) for r in rows(engine, merchant_refunds)] == [(5_000, "paid")]
    assert engine.ledger_balanced()


def test_a_payout_resent_under_its_id_with_other_content_is_refused_as_a_conflict_and_an_exact_resend_is_not(
        tmp_path: Path) -> None:
    history = healthy_merchant("m1", END, days=45, seed=3)
    engine = EmbeddedEngine(EngineOptions(db_path=tmp_path / "d.sqlite", accept="all"))
    engine.feed(list(enumerate(history.events, 1)))
    engine._advance(END + timedelta(hours=3))
    assert engine.tally.accepted >= 1 and engine.owed["m1"][0] > 0, "the merchant owes: its payouts are withheld from"
    at = END + timedelta(days=4)
    first = settlement("m1", at, history.open_orders, "s-dup")
    engine.feed([(1000, first)])
    engine.feed([(1001, dict(first))])  # the same bytes again: an exact duplicate, not an error
    # Same id, the marketplace's file now says it withheld 1,000 (another payout than the one taken).
    other = settlement("m1", at, history.open_orders, "s-dup", withheld=1_000)
    assert other["id"] == first["id"] and other != first
    engine.feed([(1002, other)])
    errors = {line: [e["message"] for e in errs] for line, _id, errs in engine.line_errors}
    assert 1001 not in errors
    assert any("different content" in m for m in errors.get(1002, [])), errors
