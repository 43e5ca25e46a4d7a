"""The Kafka sink's own partitioning must put every key where kafka-python's default partitioner would."""

from __future__ import annotations

from typing import Any

import pytest
from kafka.partitioner.default import DefaultPartitioner

from services.ingest.adapters.kafka_sink import KafkaSink
from services.ingest.domain.model import Outgoing

pytestmark = pytest.mark.unit


class _Done:
    is_done = True
    exception = None


class _Producer:
    """Records what send() was asked; every record is acknowledged at once."""

    def __init__(self, partitions: dict[str, set[int]]):
        self.partitions = partitions
        self.sent: list[tuple[str, bytes, int | None]] = []

    def partitions_for(self, topic: str) -> set[int] | None:
        return self.partitions.get(topic)

    def send(self, topic: str, value: bytes, key: bytes, partition: int | None, headers: list[Any]) -> _Done:
        self.sent.append((topic, key, partition))
        return _Done()


class _Cluster:
    def __init__(self, partitions: dict[str, set[int]]):
        self.partitions = partitions

    def topics(self) -> set[str]:
        return set(self.partitions)

    def partitions_for_topic(self, topic: str) -> set[int]:
        return self.partitions[topic]

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self.partitions[topic]


def _sink(producer: _Producer) -> KafkaSink:
    sink = KafkaSink("unused:9092", "events", "rejected")
    sink._producer = producer  # no broker: the fake stands in for kafka-python's producer
    return sink


def test_merchant_keys_land_on_the_partition_the_default_partitioner_picks() -> None:
    parts = {"events": set(range(6)), "rejected": {0, 1, 2}}
    producer = _Producer(parts)
    keys = [f"m-{i}" for i in range(300)] + ["", "é-ü", "x" * 200]
    records = [Outgoing("event" if i % 3 else "rejected", k, f"e{i}", b"{}") for i, k in enumerate(keys * 2)]
    _sink(producer).publish(records)
    default, cluster = DefaultPartitioner(), _Cluster(parts)
    assert len(producer.sent) == len(records)
    for topic, key, partition in producer.sent:
        assert partition == default.partition(topic, None, key, None, None, cluster), (topic, key)


def test_a_new_partition_count_repartitions_and_no_metadata_leaves_it_to_the_producer() -> None:
    parts = {"events": {0, 1, 2}}
    producer = _Producer(parts)
    sink = _sink(producer)
    records = [Outgoing("event", f"m-{i}", f"e{i}", b"{}") for i in range(50)]
    sink.publish(records)
    parts["events"] = set(range(12))
    sink.publish(records)
    default = DefaultPartitioner()
    after = [p for _, _, p in producer.sent[50:]]
    assert after == [default.partition("events", None, r.key.encode(), None, None, _Cluster(parts)) for r in records]
    assert max(after) > 2
    del parts["events"]
    sink.publish(records[:1])
    assert producer.sent[-1] == ("events", b"m-0", None)
