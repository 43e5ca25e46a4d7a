"""Builders shared by the ingest tests (not a test module)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from services.ingest.adapters.memory import InMemoryDedupeStore, InMemorySink
from services.ingest.bootstrap import IngestRuntime, bootstrap
from services.ingest.settings import IngestSettings

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
KEY = "test-key-1"


def settings(**kw: Any) -> IngestSettings:
    base: dict[str, Any] = {"buyer_hash_key": "buyer-secret", "api_keys": (KEY,)}
    base.update(kw)
    return IngestSettings(**base)


def runtime(**kw: Any) -> IngestRuntime:
    return bootstrap(settings(**kw), sink=InMemorySink(), dedupe=InMemoryDedupeStore(), clock=lambda: NOW)


def placed(eid: str = "evt-1", amount: Any = None, subject: str = "m-1", time: str = "2024-05-01T11:00:00Z",
           buyer: str = "buyer-42", **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "specversion": "1.0", "id": eid, "source": "marketplace://test", "type": "order.placed",
        "time": time, "subject": subject,
        "data": {"order_id": "o-" + eid, "buyer_id": buyer,
                 "amount": amount if amount is not None else {"amount": 12345, "currency": "BRL"}},
    }
    event.update(extra)
    return event


def settlement(eid: str = "set-1", currency: str = "BRL", **amounts: Any) -> dict[str, Any]:
    money = {k: {"amount": v, "currency": currency} for k, v in
             {"gross": 10000, "fees": 500, "withheld": 1000, "net": 8500, **amounts}.items()}
    return {
        "specversion": "1.0", "id": eid, "source": "marketplace://test", "type": "settlement.paid",
        "time": "2024-05-01T10:00:00Z", "subject": "m-1",
        "data": {"settlement_id": "s-" + eid, **money,
                 "orders": [{"order_id": "o-1", "amount": {"amount": 10000, "currency": currency}}]},
    }


def send(client: Any, *events: Any) -> list[dict[str, Any]]:
    """POST the events as one JSON batch with the test key; the batch itself must be taken (200): the per-event
    results."""
    r = client.post("/v1/events", content=json.dumps(list(events)),
                    headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == 200, r.text[:300]
    return list(r.json()["results"])
