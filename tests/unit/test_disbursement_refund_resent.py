"""A refund (or chargeback) of a financed order re-sent under its id with another amount: disbursement counts the
largest amount reported per refund_id, as the underwriter does, and an increase moves only the difference onto the
withhold (DESIGN: refunds of financed orders move the shortfall onto the withhold). Through bootstrap on SQLite;
tests/integration/test_disbursement_refund_resent_postgres.py runs the same scenarios on PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from services.disbursement.adapters.orm import financed_orders
from tests.migration_roundtrip import columns, down_and_up_again
from tests.unit.disbursement_helpers import T0, disburse, ev, m, service_env

pytestmark = pytest.mark.unit


@pytest.fixture()
def env(tmp_path: Any) -> dict[str, Any]:
    return service_env(db_url=f"sqlite:///{tmp_path}/d.db")


def expected_of(svc: Any, order_id: str) -> tuple[int, str]:
    with svc.engine.connect() as conn:
        row = conn.execute(sa.select(financed_orders.c.expected, financed_orders.c.state)
                           .where(financed_orders.c.order_id == order_id)).one()
    return int(row.expected), str(row.state)


def refund(order_id: str, refund_id: str, amount: int, day: int = 1, eid: str | None = None) -> dict[str, Any]:
    return ev("order.refunded", "m1", {"order_id": order_id, "refund_id": refund_id, "amount": m(amount)},
              T0 + timedelta(days=day), eid)


def run_resent_refund_scenario(env: dict[str, Any]) -> None:
    """Shared by the SQLite and PostgreSQL tests."""
    svc, bus = env["svc"], env["bus"]
    disburse(svc, "of1", 20_000, 0, order_ids=("o1", "o2"))  # o1 and o2 are each expected to bring 10,000
    svc.relay_outbox()  # PostgreSQL: nothing relays on its own
    rate_before = bus.of_type("collection.instruction")[-1]["data"]["withhold_rate_bps"]
    svc.handle(refund("o1", "r1", 3_000))
    assert expected_of(svc, "o1") == (7_000, "open")
    # The marketplace amends the refund: the same refund_id, a larger amount, a fresh event id.
    svc.handle(refund("o1", "r1", 5_000, day=2))
    assert expected_of(svc, "o1") == (5_000, "open"), "the larger amount counts, only the 2,000 more is moved"
    # The same amount again, or the smaller first one re-sent late: nothing more is moved.
    svc.handle(refund("o1", "r1", 5_000, day=3))
    svc.handle(refund("o1", "r1", 3_000, day=4))
    assert expected_of(svc, "o1") == (5_000, "open")
    # Another refund of the same order counts on its own; amending the first one still moves only its increase.
    svc.handle(refund("o1", "r2", 1_000, day=5))
    svc.handle(refund("o1", "r1", 6_000, day=6))
    assert expected_of(svc, "o1") == (10_000 - 6_000 - 1_000, "open")
    # An increase past what the order was still expected to bring closes it; a further one moves nothing.
    svc.handle(refund("o1", "r1", 20_000, day=7))
    assert expected_of(svc, "o1") == (0, "refunded")
    svc.handle(refund("o1", "r1", 25_000, day=8))
    assert expected_of(svc, "o1") == (0, "refunded")
    assert expected_of(svc, "o2") == (10_000, "open")
    # The receivables now cover less than owed: the shortfall rate applies.
    svc.relay_outbox()
    last = bus.of_type("collection.instruction")[-1]["data"]
    assert last["withhold_rate_bps"] > rate_before
    assert "o1" not in last["financed_order_ids"]


def test_a_refund_resent_with_a_larger_amount_moves_only_the_difference_onto_the_withhold(
        env: dict[str, Any]) -> None:
    run_resent_refund_scenario(env)


def test_a_refund_redelivered_under_its_own_event_id_is_not_counted_again(env: dict[str, Any]) -> None:
    svc = env["svc"]
    disburse(svc, "of1", 20_000, 0, order_ids=("o1", "o2"))
    first = refund("o1", "r1", 3_000, eid="ev-r1")
    svc.handle(first)
    svc.handle(first)
    svc.handle(refund("o1", "r1", 3_000, day=2))
    assert expected_of(svc, "o1") == (7_000, "open")


def test_a_chargeback_resent_with_a_larger_amount_moves_only_the_difference(env: dict[str, Any]) -> None:
    svc = env["svc"]
    disburse(svc, "of1", 20_000, 0, order_ids=("o1", "o2"))

    def chargeback(amount: int, day: int) -> dict[str, Any]:
        return ev("order.chargeback", "m1", {"order_id": "o2", "chargeback_id": "cb1", "amount": m(amount)},
                  T0 + timedelta(days=day))

    svc.handle(chargeback(2_000, 1))
    svc.handle(chargeback(4_500, 2))
    svc.handle(chargeback(1_000, 3))
    assert expected_of(svc, "o2") == (10_000 - 4_500, "open")


def test_refund_ids_of_different_orders_are_counted_apart(env: dict[str, Any]) -> None:
    svc = env["svc"]
    disburse(svc, "of1", 20_000, 0, order_ids=("o1", "o2"))
    svc.handle(refund("o1", "r1", 3_000))
    svc.handle(refund("o2", "r1", 4_000))  # a marketplace numbering refunds per order
    svc.handle(refund("o2", "r1", 4_500, day=2))
    assert expected_of(svc, "o1") == (7_000, "open")
    assert expected_of(svc, "o2") == (5_500, "open")


def test_a_refund_counted_before_amounts_were_kept_is_still_counted_once(env: dict[str, Any]) -> None:
    from services.disbursement.adapters.orm import processed_events

    svc = env["svc"]
    disburse(svc, "of1", 20_000, 0, order_ids=("o1", "o2"))
    svc.handle(refund("o1", "r1", 3_000))
    with svc.engine.begin() as conn:  # a marker written before migration 0012: no amount
        marked = conn.execute(sa.update(processed_events).where(processed_events.c.event_id.startswith("#order.refunded:"))
                              .values(amount=None)).rowcount
    assert marked == 1
    svc.handle(refund("o1", "r1", 5_000, day=2))
    assert expected_of(svc, "o1") == (7_000, "open")


def test_on_sqlite_migration_0012_downgrades_to_0011_and_upgrades_again(tmp_path: Any) -> None:
    eng = sa.create_engine(f"sqlite:///{tmp_path}/m.db")
    down_and_up_again(eng, "0011", lambda conn: ["amount" in columns(conn, "processed_events")])
    eng.dispose()
