"""Both Kafka sink adapters against the real broker: the same key lands on the same partition (Java's
murmur2 partitioner), the records carry the same key, value and headers, and nothing is reported
delivered that the broker did not acknowledge."""

from __future__ import annotations

import time
from collections import defaultdict

import pytest

from services.ingest.adapters.kafka_sink import KafkaSink
from services.ingest.adapters.rdkafka_sink import RdKafkaSink
from services.ingest.domain.model import Outgoing
from services.ingest.domain.ports import SinkUnavailable
from tests.integration.ingest_support import create_topics, free_port, read_topic

pytestmark = pytest.mark.integration

KEYS = [f"m-{i}" for i in range(400)] + ["merchant-ü-é", "商户-7", "x" * 300, "m-0 ", "M-0"]


def _records(tag: str) -> list[Outgoing]:
    return [Outgoing("event" if i % 5 else "rejected", key, f"{tag}-{i}", f'{{"n":{i}}}'.encode(),
                     (("ce_id", f"{tag}-{i}".encode()), ("ce_type", b"order.placed")))
            for i, key in enumerate(KEYS)]


def _placement(bootstrap: str, topic: str) -> dict[str, set[int]]:
    where: dict[str, set[int]] = defaultdict(set)
    for rec in read_topic(bootstrap, topic):
        where[rec.key.decode()].add(rec.partition)
    return dict(where)


def test_both_sinks_put_every_key_on_the_same_partition_of_a_real_topic(
        kafka_bootstrap: str, fresh_topic_prefix: str) -> None:
    names = {s: [f"{fresh_topic_prefix}{s}.events", f"{fresh_topic_prefix}{s}.rejected"] for s in ("kp", "rd")}
    create_topics(kafka_bootstrap, *names["kp"], *names["rd"], partitions=7)
    for tag, cls in (("kp", KafkaSink), ("rd", RdKafkaSink)):
        sink = cls(kafka_bootstrap, names[tag][0], names[tag][1], timeout_s=20.0)
        try:
            sink.publish(_records(tag))
        finally:
            sink.close()
    for i in (0, 1):
        kp, rd = _placement(kafka_bootstrap, names["kp"][i]), _placement(kafka_bootstrap, names["rd"][i])
        assert kp == rd
        assert all(len(p) == 1 for p in rd.values())
        assert len({p for ps in rd.values() for p in ps}) == 7  # the keys spread over every partition
    rd_records = read_topic(kafka_bootstrap, names["rd"][0])
    sent = {r.event_id: r for r in _records("rd") if r.kind == "event"}
    assert len(rd_records) == len(sent)
    for rec in rd_records:
        ce_id = dict(rec.headers)["ce_id"].decode()
        assert rec.value == sent[ce_id].payload and rec.key.decode() == sent[ce_id].key
        assert rec.headers == list(sent[ce_id].headers)


def test_librdkafka_sink_without_a_broker_fails_in_time_with_nothing_delivered() -> None:
    sink = RdKafkaSink(f"127.0.0.1:{free_port()}", "x.events", "x.rejected", timeout_s=1.5)
    start = time.monotonic()
    with pytest.raises(SinkUnavailable) as info:
        sink.publish(_records("dead")[:20])
    assert info.value.delivered == frozenset()
    assert time.monotonic() - start < 10
    with pytest.raises(SinkUnavailable):
        sink.ping()
    sink.close()


def test_librdkafka_sink_recovers_with_a_fresh_producer_after_a_failure(
        kafka_bootstrap: str, fresh_topic_prefix: str) -> None:
    events, rejected = fresh_topic_prefix + "events", fresh_topic_prefix + "rejected"
    create_topics(kafka_bootstrap, events, rejected)
    sink = RdKafkaSink(kafka_bootstrap, events, rejected, timeout_s=10.0)
    try:
        sink.ping()
        first = sink._producer
        too_big = Outgoing("event", "m-1", "big", b"x" * 1_100_000, (("ce_id", b"big"),))
        with pytest.raises(SinkUnavailable, match="MSG_SIZE_TOO_LARGE") as info:
            sink.publish([*_records("a")[:3], too_big])
        assert "big" not in info.value.delivered
        sink.publish(_records("b")[:10])
        assert sink._producer is not first
    finally:
        sink.close()
    ids = sorted(dict(r.headers)["ce_id"].decode() for r in read_topic(kafka_bootstrap, events))
    assert "big" not in ids and {f"b-{i}" for i in range(1, 10) if i % 5} <= set(ids)
