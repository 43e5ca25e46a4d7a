"""On the real broker: records produced straight to marketplace.events.v1 that ingest would refuse are
dead-lettered by the underwriter worker and by the disbursement consumer with every error; valid ones still apply."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from schemas import codec, topics
from services.underwriter.synthetic import Profile, history
from tests.integration.test_disbursement_kafka import _consuming, _kafka_service, _wait
from tests.integration.test_underwriter_worker import START, Env, _new_topic, limits, stop
from tests.unit.disbursement_helpers import T0, offer, onboarded, settlement

pytestmark = pytest.mark.integration


def _bad_marketplace_records(mid: str, at: str) -> list[tuple[bytes, dict[str, Any], str]]:
    """(Kafka key, event, pointer the dead letter must list) for records ingest would refuse."""
    base = settlement(mid, "s-bad", 0, datetime.fromisoformat(at))
    wrong_net = copy.deepcopy(base)
    wrong_net["id"], wrong_net["data"]["net"]["amount"] = "ev-net", 1
    not_utc = copy.deepcopy(base)
    not_utc["id"], not_utc["time"] = "ev-offset", at.replace("Z", "+03:00")
    mixed = copy.deepcopy(base)
    mixed["id"], mixed["data"]["fees"]["currency"] = "ev-mixed", "USD"
    other_key = copy.deepcopy(base)
    other_key["id"] = "ev-key"
    return [(mid.encode(), wrong_net, "/data/net"), (mid.encode(), not_utc, "/time"),
            (mid.encode(), mixed, "/data"), (b"someone-else", other_key, "/subject")]


def _read(topic: str, kafka: str, want: int, timeout: float = 30) -> list[dict[str, Any]]:
    from kafka import KafkaConsumer

    reader = KafkaConsumer(topic, bootstrap_servers=kafka, auto_offset_reset="earliest", group_id=None,
                           consumer_timeout_ms=1000)
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(found) < want and time.monotonic() < deadline:
        found += [json.loads(m.value) for m in reader]
    reader.close()
    return found


def _check_letters(dead: list[dict[str, Any]], bad: list[tuple[bytes, dict[str, Any], str]], consumer: str) -> None:
    assert len(dead) == len(bad), dead
    by_id = {d["data"]["event_id"]: d for d in dead}
    for _, event, pointer in bad:
        letter = by_id[event["id"]]
        assert codec.validate(letter) == [], letter
        assert letter["data"]["consumer"] == consumer
        assert pointer in [e["pointer"] for e in letter["data"]["errors"]], letter["data"]["errors"]
        assert letter["data"]["reason"] in ("schema", "money", "time")


def test_underwriter_worker_dead_letters_contract_breaking_records_and_decides_the_rest(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    from kafka import KafkaAdminClient, KafkaProducer

    env = Env(kafka_bootstrap, unique_name, tmp_path)
    rejected = env.topics["market"] + ".rejected"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="test-straight-to-topic")
    admin.create_topics([_new_topic(rejected)])
    admin.close()
    events = history("m-s2t", START, 20, Profile(orders_per_day=3))
    bad = _bad_marketplace_records("m-s2t", events[10]["time"])
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for i, e in enumerate(events):
        producer.send(env.topics["market"], key=b"m-s2t", value=codec.encode(e))
        if i == 10:
            for key, ev, _ in bad:
                producer.send(env.topics["market"], key=key, value=codec.encode(ev))
    producer.flush(timeout=30)
    producer.close()
    proc = env.start(1, {"FLOATBRIDGE_UNDERWRITER_REJECTED_TOPIC": rejected})
    last = events[-1]["id"]
    try:
        env.wait_for(lambda s: any(e["data"].get("trigger_event_id") == last for e in limits(s)), proc, 1)
        dead = _read(rejected, kafka_bootstrap, len(bad))
    finally:
        stop(proc)
    _check_letters(dead, bad, "underwriter")


def test_disbursement_consumer_dead_letters_contract_breaking_records_and_a_future_one_ages_nothing(
        kafka_bootstrap: str, pg_schema_url: str, fresh_topic_prefix: str) -> None:
    from kafka import KafkaProducer

    prefix = fresh_topic_prefix
    svc, engine, registry = _kafka_service(kafka_bootstrap, pg_schema_url, prefix)
    bad = _bad_marketplace_records("m1", codec.new_event("x", "m1", {}, T0, "s")["time"])
    future = settlement("m1", "s-future", 0, T0)
    future["id"], future["time"] = "ev-future", (datetime.now(UTC) + timedelta(days=400)).strftime("%Y-%m-%dT%H:%M:%SZ")
    bad.append((b"m1", future, "/time"))
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    producer.send(prefix + topics.MARKETPLACE_EVENTS, key=b"m1", value=codec.encode(onboarded("m1")))
    for key, ev, _ in bad:
        producer.send(prefix + topics.MARKETPLACE_EVENTS, key=key, value=codec.encode(ev))
    good = settlement("m1", "s-good", 0, T0 + timedelta(hours=1))
    producer.send(prefix + topics.MARKETPLACE_EVENTS, key=b"m1", value=codec.encode(good))
    producer.send(prefix + topics.LOAN_OFFERS, key=b"m1", value=codec.encode(offer("m1", "of-good", 30_000, 500)))
    producer.flush()
    producer.close()
    try:
        with _consuming(svc, kafka_bootstrap, prefix):
            _wait(lambda: svc.get_offer("m1", "of-good") is not None)
        dead = _read(prefix + topics.INGEST_REJECTED, kafka_bootstrap, len(bad))
        _check_letters(dead, bad, "disbursement")
        assert svc.event_clock() == T0 + timedelta(hours=1)  # the future-dated record did not move it
        assert registry.get_sample_value("floatbridge_disbursement_records_rejected_total",
                                         {"stage": "contract"}) == len(bad)
    finally:
        engine.dispose()
