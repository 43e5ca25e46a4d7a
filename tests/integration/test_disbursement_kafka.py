"""The Kafka path: consume offers/limits (redelivery harmless), accept, relay loan.disbursed to loans.v1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from schemas import topics
from schemas.codec import encode
from services.disbursement.adapters.kafka import CONSUMED, KafkaPublisher, consume
from services.disbursement.bootstrap import bootstrap, make_engine
from services.disbursement.migrations import upgrade
from services.disbursement.service import AcceptOffer
from services.disbursement.settings import DisbursementSettings
from tests.unit.disbursement_helpers import T0, Transport, limit, offer, onboarded

pytestmark = pytest.mark.integration


def _create_topics(bootstrap_servers: str, names: list[str]) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        admin.create_topics([NewTopic(n, 1, 1) for n in names])
    finally:
        admin.close()


def _wait(pred: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


@contextmanager
def _consuming(svc: Any, bootstrap: str, prefix: str) -> Iterator[None]:
    """The disbursement consumer loop in a thread for the duration of the block."""
    stop = threading.Event()
    worker = threading.Thread(target=consume, args=(svc, bootstrap, prefix + "g", prefix, stop), daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join(timeout=15)


def _kafka_service(kafka: str, db_url: str, prefix: str) -> tuple[Any, Any, CollectorRegistry]:
    """Topics (dead letters included) created, database migrated, the service publishing to the broker."""
    _create_topics(kafka, [prefix + t for t in (*CONSUMED, topics.INGEST_REJECTED, topics.LOANS, topics.COLLECTIONS)])
    engine = make_engine(db_url)
    upgrade(engine)
    registry = CollectorRegistry()
    svc = bootstrap(DisbursementSettings(topic_prefix=prefix), engine=engine, bus=KafkaPublisher(kafka),
                    transport=Transport(), registry=registry)
    return svc, engine, registry


def test_consume_accept_and_relay_round_trip(kafka_bootstrap: str, pg_schema_url: str,
                                              fresh_topic_prefix: str) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    prefix = fresh_topic_prefix
    _create_topics(kafka_bootstrap, [prefix + t for t in (*CONSUMED, topics.LOANS, topics.COLLECTIONS)])
    engine = make_engine(pg_schema_url)
    upgrade(engine)
    bus = KafkaPublisher(kafka_bootstrap)
    svc = bootstrap(DisbursementSettings(topic_prefix=prefix), engine=engine, bus=bus, transport=Transport(),
                    registry=CollectorRegistry())
    svc.register_merchant("m1", "https://m1.example/h", "key-m1-0123456789abcdef")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    lim = limit("m1", 100_000)
    for topic, event in ((topics.MARKETPLACE_EVENTS, onboarded("m1")), (topics.CREDIT_LIMITS, lim),
                         (topics.CREDIT_LIMITS, lim), (topics.LOAN_OFFERS, offer("m1", "of1", 30_000, 500))):
        producer.send(prefix + topic, key=b"m1", value=encode(event))
    producer.flush()
    with _consuming(svc, kafka_bootstrap, prefix):
        _wait(lambda: svc.get_offer("m1", "of1") is not None)
        result = svc.accept(AcceptOffer("of1", "m1", "k1", T0))
        assert result.status_code == 200
        assert svc.relay_outbox() >= 3  # loan_offer.accepted, loan.disbursed, collection.instruction
    consumer = KafkaConsumer(prefix + topics.LOANS, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=5000)
    types = [json.loads(r.value)["type"] for r in consumer]
    consumer.close()
    assert types == ["loan_offer.accepted", "loan.disbursed"]
    with engine.connect() as conn:  # the duplicated credit limit was stored once
        from sqlalchemy import func, select

        from services.disbursement.adapters.orm import credit_limits
        assert conn.execute(select(func.count()).select_from(credit_limits)).scalar_one() == 1
    bus.close()
    producer.close()
    engine.dispose()


def test_poison_records_are_dead_lettered_before_their_offsets_are_committed_and_the_consumer_goes_on(
        kafka_bootstrap: str, pg_schema_url: str, fresh_topic_prefix: str) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    from schemas.codec import new_event

    prefix = fresh_topic_prefix
    svc, engine, registry = _kafka_service(kafka_bootstrap, pg_schema_url, prefix)
    forged = new_event("loan.repaid", "m1", {"loan_id": "l-1", "repaid_at": "2025-01-02T00:00:00Z"},
                       "2025-01-02T00:00:00Z", "marketplace", id="ev-forged")
    bad_offer = offer("m1", "of-bad", 0, 500)  # a zero-amount offer: refused by the service
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for topic, value in ((topics.MARKETPLACE_EVENTS, encode(onboarded("m1"))), (topics.MARKETPLACE_EVENTS, b"[1]"),
                         (topics.MARKETPLACE_EVENTS, b"{not json"), (topics.MARKETPLACE_EVENTS, encode(forged)),
                         (topics.LOAN_OFFERS, encode(bad_offer)),
                         (topics.LOAN_OFFERS, encode(offer("m1", "of-good", 30_000, 500)))):
        producer.send(prefix + topic, key=b"m1", value=value)
    producer.flush()
    with _consuming(svc, kafka_bootstrap, prefix):
        _wait(lambda: svc.get_offer("m1", "of-good") is not None)
    reader = KafkaConsumer(prefix + topics.INGEST_REJECTED, bootstrap_servers=kafka_bootstrap,
                           auto_offset_reset="earliest", consumer_timeout_ms=5000)
    dead = [json.loads(r.value) for r in reader]
    reader.close()
    assert len(dead) == 4, dead
    assert {d["data"]["consumer"] for d in dead} == {"disbursement"}
    assert {d["data"].get("event_id") for d in dead} == {None, "ev-forged", bad_offer["id"]}
    from schemas.codec import validate

    assert all(validate(d) == [] for d in dead)
    assert svc.get_offer("m1", "of-bad") is None
    assert registry.get_sample_value("floatbridge_disbursement_records_rejected_total", {"stage": "decode"}) == 2
    producer.close()
    engine.dispose()
