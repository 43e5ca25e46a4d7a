"""Hostile records on marketplace.raw.v1, through consume-raw against the real broker: each one is routed on
its own (no poison pill stalls the partition), offsets are committed, and no raw buyer id reaches a topic."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from services.ingest.adapters.memory import InMemoryDedupeStore
from services.ingest.settings import IngestSettings
from tests.integration.ingest_support import create_topics, drain_raw_intake, ids_on, read_topic
from tests.unit.ingest_helpers import placed

pytestmark = pytest.mark.integration
BUYER = "joana.pereira@example.com"


def _hostile_values() -> list[bytes]:
    ok = placed("k-ok", buyer=BUYER, time="2024-05-01T11:00:00Z")
    ok["data"]["buyer_email"] = BUYER
    deep = orjson.dumps(placed("k-deep", buyer=BUYER)).replace(
        b'"order_id"', b'"deep":' + b'{"n":' * 900 + b"1" + b"}" * 900 + b',"order_id"')
    return [
        orjson.dumps(ok),
        b"\xef\xbb\xbf" + orjson.dumps(placed("k-bom", buyer=BUYER)),
        deep,  # used to raise RecursionError in normalise: the consumer died and re-read it forever
        orjson.dumps(placed("k-dup", buyer=BUYER)).replace(b'"id":"k-dup"', b'"id":"k-dup","id":"k-dup2"'),
        orjson.dumps(placed("k-range", buyer=BUYER)).replace(b'"amount":12345', b'"amount":1e400'),
        b'{"id": "k-cut", "data": {"buyer\\u005fid": "' + BUYER.encode() + b'", "order_id": ',
    ]


def test_hostile_raw_records_are_routed_one_by_one_committed_and_keep_no_raw_buyer_id(
        kafka_bootstrap: str, fresh_topic_prefix: str) -> None:
    from kafka import KafkaProducer

    prefix = fresh_topic_prefix
    create_topics(kafka_bootstrap, *(prefix + t for t in ("marketplace.events.v1", "ingest.rejected.v1",
                                                          "marketplace.raw.v1")))
    settings = IngestSettings(
        buyer_hash_key="k", kafka_bootstrap=kafka_bootstrap, max_future_skew_seconds=-1,
        events_topic=prefix + "marketplace.events.v1", rejected_topic=prefix + "ingest.rejected.v1",
        raw_topic=prefix + "marketplace.raw.v1", raw_group_id=prefix + "raw")
    values = _hostile_values()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for v in values:
        producer.send(settings.raw_topic, v, key=b"m-1")
    producer.flush()
    producer.close()
    drain_raw_intake(settings, InMemoryDedupeStore(), len(values))
    assert ids_on(kafka_bootstrap, settings.events_topic) == {"k-ok": 1, "k-bom": 1}
    rejected: list[dict[str, Any]] = [json.loads(r.value)["data"]
                                      for r in read_topic(kafka_bootstrap, settings.rejected_topic)]
    assert sorted((r.get("event_id", ""), r["reason"]) for r in rejected) == [
        ("", "malformed"), ("k-deep", "schema"), ("k-dup2", "malformed"), ("k-range", "malformed")]
    for topic in (settings.events_topic, settings.rejected_topic):
        for rec in read_topic(kafka_bootstrap, topic):
            assert BUYER.encode() not in rec.value, (topic, rec.value[:200])
    [ok] = [json.loads(r.value) for r in read_topic(kafka_bootstrap, settings.events_topic)
            if json.loads(r.value)["id"] == "k-ok"]
    assert ok["data"]["buyer_email"] == ok["data"]["buyer_id"] and ok["data"]["buyer_id"].startswith("bh_")
