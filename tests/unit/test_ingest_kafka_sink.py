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


class _Accumulator:
    """kafka-python 3.x's RecordAccumulator.append shape; a new batch per partition, then appends."""

    def __init__(self) -> None:
        self.appended: list[tuple[Any, Any, bytes, bytes, list[Any]]] = []
        self.batches: set[Any] = set()

    def append(self, tp: Any, timestamp_ms: Any, key: bytes, value: bytes, headers: list[Any], now: Any = None,
               abort_on_new_batch: bool = False) -> tuple[_Done, bool, bool, bool]:
        assert not abort_on_new_batch
        self.appended.append((tp, timestamp_ms, key, value, headers))
        new = tp not in self.batches
        self.batches.add(tp)
        return _Done(), False, new, False


class _Sender:
    def __init__(self) -> None:
        self.wakeups = 0

    def wakeup(self) -> None:
        self.wakeups += 1


class _DirectProducer(_Producer):
    def __init__(self, partitions: dict[str, set[int]], max_request_size: int = 1_048_576):
        super().__init__(partitions)
        self._accumulator = _Accumulator()
        self._sender = _Sender()
        self._closed = False
        self._transaction_manager = None
        self.config = {"max_request_size": max_request_size}


def test_records_go_straight_to_the_accumulator_with_the_partition_send_would_pick() -> None:
    parts = {"events": set(range(6)), "rejected": {0, 1, 2}}
    producer = _DirectProducer(parts)
    keys = [f"m-{i}" for i in range(200)]
    records = [Outgoing("event" if i % 4 else "rejected", k, f"e{i}", f'{{"i":{i}}}'.encode(),
                        (("ce_id", f"e{i}".encode()), ("ce_type", b"order.placed"))) for i, k in enumerate(keys)]
    _sink(producer).publish(records)
    acc = producer._accumulator
    assert producer.sent == []  # nothing needed send()'s generic path
    assert len(acc.appended) == len(records)
    default, cluster = DefaultPartitioner(), _Cluster(parts)
    for rec, (tp, ts, key, value, headers) in zip(records, acc.appended, strict=True):
        topic = "events" if rec.kind == "event" else "rejected"
        assert tp.topic == topic and key == rec.key.encode() and value == rec.payload and ts is None
        assert tp.partition == default.partition(topic, None, key, None, None, cluster)
        assert headers == list(rec.headers)
    assert producer._sender.wakeups == len(acc.batches) == 9  # woken for each new batch, as send() does


def test_a_record_near_the_size_limit_a_closed_or_transactional_producer_take_send() -> None:
    parts = {"events": {0, 1}}
    producer = _DirectProducer(parts, max_request_size=4096)
    small, big = Outgoing("event", "m-1", "e1", b"x" * 100), Outgoing("event", "m-2", "e2", b"x" * 3500)
    sink = _sink(producer)
    sink.publish([small, big])
    assert [r[3] for r in producer._accumulator.appended] == [small.payload]
    assert producer.sent == [("events", b"m-2", sink._router(producer, "events")("m-2")[1].partition)]
    producer._closed = True
    sink.publish([small])
    assert len(producer._accumulator.appended) == 1 and len(producer.sent) == 2

    class _Txn:
        def is_transactional(self) -> bool:
            return True

    producer._closed, producer._transaction_manager = False, _Txn()
    sink.publish([small])
    assert len(producer._accumulator.appended) == 1 and len(producer.sent) == 3


def _records_of(acc: Any, tp: Any) -> list[list[tuple[int, bytes, bytes, list[Any]]]]:
    """Each open batch of `tp` in the accumulator, as (offset, key, value, headers) per record."""
    from kafka.record.memory_records import MemoryRecords

    out = []
    for batch in acc._batches[tp]:
        batch.records.close()
        records = MemoryRecords(bytes(batch.records.buffer()))
        rows: list[tuple[int, bytes, bytes, list[Any]]] = []
        while records.has_next():
            rows.extend((r.offset, r.key, r.value, r.headers) for r in records.next_batch())
        out.append(rows)
    return out


class _RealAccumulatorProducer:
    """kafka-python's own RecordAccumulator (no broker, no sender thread) behind a producer's attributes."""

    def __init__(self, batch_size: int):
        from kafka.producer.record_accumulator import RecordAccumulator

        self._accumulator = RecordAccumulator(batch_size=batch_size, linger_ms=5)
        self._sender = _Sender()
        self._closed = False
        self._transaction_manager = None


def test_a_run_of_records_fills_the_accumulators_batches_exactly_as_one_append_per_record() -> None:
    from kafka.structs import TopicPartition

    from services.ingest.adapters.kafka_sink import _bulk_append

    tp = TopicPartition("events", 3)
    run = [(f"e{i}", f"m-{i % 7}".encode(), b'{"n":%d,"pad":"%s"}' % (i, b"x" * (i % 50)),
            [("ce_id", f"e{i}".encode()), ("ce_type", b"order.placed")]) for i in range(300)]
    bulk_producer, reference = _RealAccumulatorProducer(4096), _RealAccumulatorProducer(4096)
    bulk = _bulk_append(bulk_producer)
    assert bulk is not None
    futures: list[tuple[str, Any]] = []
    bulk(tp, run[:120], futures)
    bulk(tp, run[120:], futures)  # a second run continues the open batch
    for _, key, value, headers in run:
        reference._accumulator.append(tp, None, key, value, headers)
    got, want = _records_of(bulk_producer._accumulator, tp), _records_of(reference._accumulator, tp)
    assert len(want) > 5  # the runs spanned many batches
    assert got == want  # same records, same offsets, same batch boundaries
    assert [eid for eid, _ in futures] == [eid for eid, *_ in run]  # one future per record, in order
    assert all(not f.is_done for _, f in futures)  # nothing acknowledged without a broker
    assert bulk_producer._sender.wakeups >= len(want) - 1  # woken for every batch that filled or opened


def test_bulk_append_is_only_used_with_kafka_pythons_own_accumulator() -> None:
    from services.ingest.adapters.kafka_sink import _bulk_append

    assert _bulk_append(_DirectProducer({"events": {0}})) is None  # another accumulator: one append per record
    closed = _RealAccumulatorProducer(4096)
    closed._accumulator.close()
    from kafka.errors import IllegalStateError
    from kafka.structs import TopicPartition

    bulk = _bulk_append(closed)
    assert bulk is not None
    with pytest.raises(IllegalStateError):
        bulk(TopicPartition("events", 0), [("e1", b"k", b"v", [])], [])
