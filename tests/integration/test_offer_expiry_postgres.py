"""The daily offer expiry on real PostgreSQL: the state/expiry index exists after migrating and expired offers are
written in a stated order (creation time, then offer id) instead of whatever order the heap scan returned."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from services.disbursement.bootstrap import bootstrap, make_engine
from services.disbursement.migrations import upgrade
from services.disbursement.settings import DisbursementSettings
from tests.unit.disbursement_helpers import T0, Bus, Clock, Transport, limit, offer, onboarded

pytestmark = pytest.mark.integration


@pytest.fixture()
def engine(pg_schema_url: str) -> Any:
    eng = make_engine(pg_schema_url)
    upgrade(eng)
    yield eng
    eng.dispose()


def test_postgres_expires_offers_in_creation_order_through_the_state_expiry_index(engine: sa.Engine) -> None:
    svc = bootstrap(DisbursementSettings(), engine=engine, bus=Bus(), transport=Transport(), clock=Clock(),
                    registry=CollectorRegistry())
    for mid in ("m1", "m2", "m3"):
        svc.register_merchant(mid, f"https://{mid}.example/h", f"key-{mid}-0123456789abcdef")
        svc.handle(onboarded(mid))
        svc.handle(limit(mid, 1_000_000))
    # made in this order; by creation time the order is of-z (1 min), of-x (2 min), of-y (3 min)
    for mid, offer_id, minutes in (("m2", "of-y", 3), ("m3", "of-x", 2), ("m1", "of-z", 1)):
        svc.handle(offer(mid, offer_id, 10_000, at=T0 + timedelta(minutes=minutes), expires_hours=24))

    svc.age(T0 + timedelta(days=2))

    with engine.connect() as conn:
        payloads = conn.execute(sa.text("SELECT payload FROM webhook_deliveries ORDER BY id")).scalars().all()
        indexes = conn.execute(sa.text("SELECT indexname FROM pg_indexes WHERE tablename = 'offers'")).scalars().all()
        states: dict[str, str] = dict(conn.execute(sa.text("SELECT offer_id, state FROM offers")).all())
    expired = [json.loads(p)["data"]["offer_id"] for p in payloads if json.loads(p)["type"] == "loan_offer.expired"]
    assert expired == ["of-z", "of-x", "of-y"]
    assert states == {"of-x": "expired", "of-y": "expired", "of-z": "expired"}
    assert "ix_offers_state_expires_at" in indexes
