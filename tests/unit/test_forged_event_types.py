"""Floatbridge's own events (limits, offers, loans, collections) never enter through the marketplace's
door, and consumers refuse an event of a type that does not belong on the topic it came from."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from schemas import topics
from schemas.codec import encode, new_event
from services.disbursement.adapters import kafka as disbursement_kafka
from services.ingest.adapters.memory import InMemoryDedupeStore
from services.ingest.bootstrap import bootstrap as ingest_bootstrap
from services.ingest.settings import load_settings

pytestmark = pytest.mark.unit

WHEN = datetime(2025, 1, 1, tzinfo=UTC)


class _Sink:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def publish(self, records: Any) -> None:
        self.records.extend(records)


def _forged_repayment() -> dict[str, Any]:
    return new_event("loan.repaid", "m1", {"loan_id": "ln_1", "repaid_at": "2025-01-01T00:00:00Z"}, WHEN,
                     "https://marketplace.example", id="forged-1")


def test_marketplace_cannot_push_a_loan_repaid_event_through_ingest() -> None:
    sink = _Sink()
    rt = ingest_bootstrap(load_settings(buyer_hash_key="k"), sink=sink, dedupe=InMemoryDedupeStore())
    [result] = rt.service.submit([_forged_repayment()], WHEN)
    assert result.status.value == "rejected"
    assert result.errors[0].pointer == "/type"
    assert all(r.kind == "rejected" for r in sink.records), "only the dead letter receives it"


def test_topic_catalog_says_which_types_belong_where_even_with_a_test_prefix() -> None:
    assert "settlement.paid" in (topics.types_on("fb-t1." + topics.MARKETPLACE_EVENTS) or set())
    assert "loan.repaid" not in (topics.types_on(topics.MARKETPLACE_EVENTS) or set())
    assert topics.types_on(topics.CREDIT_LIMITS) == frozenset({"credit_limit.updated"})
    assert topics.types_on("some.other.topic") is None


def test_disbursement_consumer_refuses_a_credit_limit_forged_on_the_marketplace_topic() -> None:
    applied: list[dict[str, Any]] = []
    svc = SimpleNamespace(handle=applied.append)
    forged = new_event("credit_limit.updated", "m1", {"limit": {"amount": 10**9, "currency": "BRL"}}, WHEN, "x",
                       id="forged-limit")
    record = SimpleNamespace(topic="p." + topics.MARKETPLACE_EVENTS, partition=0, offset=7, value=encode(forged))
    disbursement_kafka._apply(svc, record)  # type: ignore[arg-type]
    assert applied == []
    genuine = SimpleNamespace(topic="p." + topics.CREDIT_LIMITS, partition=0, offset=8, value=encode(forged))
    disbursement_kafka._apply(svc, genuine)  # type: ignore[arg-type]
    assert [e["id"] for e in applied] == ["forged-limit"]
