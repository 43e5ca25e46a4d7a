"""The daily offer expiry finds open offers through an index, and writes their expiry events in the order
the offers were made (what the full-table scan it replaced returned on SQLite), not in index order."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from services.disbursement.bootstrap import bootstrap
from services.disbursement.service import _EXPIRING_SQLITE
from services.disbursement.settings import DisbursementSettings
from tests.unit.disbursement_helpers import T0, Bus, Clock, Transport, limit, offer, onboarded

pytestmark = pytest.mark.unit


@pytest.fixture()
def svc(tmp_path: Any) -> Any:
    service = bootstrap(DisbursementSettings(), db_url=f"sqlite:///{tmp_path}/d.db", bus=Bus(), transport=Transport(),
                        clock=Clock(), registry=CollectorRegistry())
    for mid in ("m1", "m2", "m3", "m4"):
        service.register_merchant(mid, f"https://{mid}.example/hooks", f"key-{mid}-0123456789abcdef")
        service.handle(onboarded(mid))
        service.handle(limit(mid, 1_000_000))
    return service


def _expired_in_outbox(service: Any) -> list[str]:
    with service.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT payload FROM webhook_deliveries ORDER BY id")).all()
    return [json.loads(r.payload)["data"]["offer_id"] for r in rows
            if json.loads(r.payload)["type"] == "loan_offer.expired"]


def test_expired_offers_are_written_in_the_order_the_offers_were_made_not_by_expiry_or_id(svc: Any) -> None:
    # Made in this order, with creation times, expiry times and ids that each sort differently.
    made = [("m3", "of-c", 5, 50), ("m1", "of-d", 2, 30), ("m4", "of-a", 9, 20), ("m2", "of-b", 1, 40)]
    for mid, offer_id, minutes, expires_hours in made:
        svc.handle(offer(mid, offer_id, 10_000, at=T0 + timedelta(minutes=minutes), expires_hours=expires_hours))
    svc.handle(offer("m4", "of-a2", 10_000, at=T0 + timedelta(minutes=10), expires_hours=1))  # supersedes of-a

    svc.age(T0 + timedelta(days=1))  # of-a2 (1 h) only
    assert _expired_in_outbox(svc) == ["of-a2"]
    svc.age(T0 + timedelta(days=3))
    assert _expired_in_outbox(svc) == ["of-a2", "of-c", "of-d", "of-b"], "insertion order, like the old scan"
    svc.age(T0 + timedelta(days=4))
    assert _expired_in_outbox(svc) == ["of-a2", "of-c", "of-d", "of-b"], "each offer expires once"


def test_the_expiry_query_uses_the_state_and_expiry_index(svc: Any) -> None:
    sql = str(_EXPIRING_SQLITE.compile(svc.engine, compile_kwargs={"literal_binds": False}))
    with svc.engine.connect() as conn:
        plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, ("open", "2025-03-05 00:00:00.000000")).all()
    details = " ".join(str(row[-1]) for row in plan)
    assert "ix_offers_state_expires_at" in details, details
    assert "SCAN offers" not in details, details
