"""The librdkafka sink: the producer setting picks it, its config keeps the contract, and an event counts
as delivered only when its delivery report says so (fake confluent-kafka producer, no broker)."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from services.common.settings import SettingsError
from services.ingest.adapters.kafka_sink import KafkaSink
from services.ingest.adapters.rdkafka_sink import MESSAGE_MAX_BYTES, RdKafkaSink, producer_config
from services.ingest.bootstrap import kafka_sink
from services.ingest.domain.model import Outgoing
from services.ingest.domain.ports import SinkUnavailable
from services.ingest.settings import load_settings
from tests.unit.ingest_helpers import settings

pytestmark = pytest.mark.unit


class _Msg:
    def __init__(self, topic: str, value: bytes):
        self._topic, self._value = topic, value

    def topic(self) -> str:
        return self._topic

    def value(self) -> bytes:
        return self._value


class _Producer:
    """confluent-kafka's Producer surface the sink uses. `outcome(record_index)` is None (delivered),
    a KafkaError (failed), "silent" (no report ever) or "full" (BufferError, once)."""

    def __init__(self, outcome: Any = lambda i: None):
        self.outcome = outcome
        self.produced: list[tuple[str, bytes, str, list[Any]]] = []
        self.reports: list[tuple[Any, Any, _Msg]] = []
        self.purged = 0
        self.flushed = 0
        self.full_once: set[int] = set()

    def produce(self, topic: str, value: bytes, key: str, on_delivery: Any, headers: list[Any]) -> None:
        i = len(self.produced)
        out = self.outcome(i)
        word = out if isinstance(out, str) else ""  # KafkaError cannot be compared with a str
        if word == "full" and i not in self.full_once:
            self.full_once.add(i)
            raise BufferError("queue full")
        if word == "raise":
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.produced.append((topic, value, key, headers))
        if word != "silent":
            self.reports.append((on_delivery, None if word else out, _Msg(topic, value)))

    def poll(self, timeout: float) -> int:
        served, self.reports = self.reports, []
        for cb, err, msg in served:
            cb(err, msg)
        return len(served)

    def purge(self, in_queue: bool = True, in_flight: bool = True) -> None:
        self.purged += 1

    def flush(self, timeout: float) -> int:
        self.flushed += 1
        return 0


def _sink(producer: _Producer, timeout_s: float = 0.3) -> RdKafkaSink:
    sink = RdKafkaSink("unused:9092", "events", "rejected", timeout_s)
    sink._producer = producer  # no broker: the fake stands in for confluent-kafka's producer
    return sink


def _records(n: int) -> list[Outgoing]:
    return [Outgoing("event" if i % 3 else "rejected", f"m-{i}", f"e{i}", f'{{"i":{i}}}'.encode(),
                     (("ce_id", f"e{i}".encode()), ("ce_type", b"order.placed"))) for i in range(n)]


def test_the_producer_setting_picks_the_sink_and_rejects_unknown_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not isinstance(kafka_sink(settings()), RdKafkaSink)  # kafka-python is the default
    assert isinstance(kafka_sink(settings(producer="kafka-python")), KafkaSink)
    rd = kafka_sink(settings(producer="librdkafka", max_inflight_batches=8, max_batch_events=1000))
    assert isinstance(rd, RdKafkaSink)
    assert rd.max_queued_records == 16_000  # every batch in flight fits twice: bounded, not unbounded
    monkeypatch.setenv("FLOATBRIDGE_INGEST_BUYER_HASH_KEY", "k")
    monkeypatch.setenv("FLOATBRIDGE_INGEST_PRODUCER", "rdkafka")
    with pytest.raises(SettingsError, match="PRODUCER"):
        load_settings()
    monkeypatch.setenv("FLOATBRIDGE_INGEST_PRODUCER", "librdkafka")
    assert load_settings().producer == "librdkafka"
    monkeypatch.setenv("FLOATBRIDGE_INGEST_MAX_EVENT_BYTES", str(MESSAGE_MAX_BYTES))
    with pytest.raises(SettingsError, match="MAX_EVENT_BYTES"):
        load_settings()


def test_config_is_idempotent_acks_all_java_partitioner_and_bounded() -> None:
    conf = producer_config("a:1,b:2", 10.0, 16_000, 65_536)
    assert conf["enable.idempotence"] is True and conf["acks"] == "all"
    assert conf["partitioner"] == "murmur2_random"
    assert conf["queue.buffering.max.messages"] == 16_000 and conf["queue.buffering.max.kbytes"] == 65_536
    assert conf["message.max.bytes"] == MESSAGE_MAX_BYTES
    assert conf["message.timeout.ms"] == 10_000 and conf["bootstrap.servers"] == "a:1,b:2"


def test_every_record_is_produced_with_key_headers_and_topic_and_all_reports_are_awaited() -> None:
    producer = _Producer()
    latencies: list[float] = []
    sink = _sink(producer)
    sink.observe_latency = latencies.append
    records = _records(30)
    sink.publish(records)
    assert [(t, v, k, h) for t, v, k, h in producer.produced] == [
        ("events" if r.kind == "event" else "rejected", r.payload, r.key, list(r.headers)) for r in records]
    assert len(latencies) == 1 and sink._producer is producer


def test_a_failed_delivery_report_raises_with_only_the_delivered_ids_and_resets() -> None:
    producer = _Producer(lambda i: KafkaError(KafkaError._MSG_TIMED_OUT) if i in (3, 7) else None)
    sink = _sink(producer)
    with pytest.raises(SinkUnavailable) as info:
        sink.publish(_records(10))
    assert info.value.delivered == frozenset(f"e{i}" for i in range(10) if i not in (3, 7))
    assert "_MSG_TIMED_OUT" in str(info.value)
    assert sink._producer is None  # the next publish builds a fresh producer


def test_no_report_before_the_timeout_counts_as_not_delivered() -> None:
    producer = _Producer(lambda i: "silent" if i == 4 else None)
    sink = _sink(producer, timeout_s=0.2)
    with pytest.raises(SinkUnavailable, match="no delivery report") as info:
        sink.publish(_records(6))
    assert info.value.delivered == frozenset({"e0", "e1", "e2", "e3", "e5"})
    assert sink._producer is None


def test_a_full_queue_waits_for_room_and_a_produce_error_keeps_what_was_acknowledged() -> None:
    producer = _Producer(lambda i: "full" if i == 2 else None)
    _sink(producer).publish(_records(5))  # BufferError once: poll, then the record goes in
    assert len(producer.produced) == 5

    failing = _Producer(lambda i: "raise" if i == 3 else None)
    sink = _sink(failing)
    with pytest.raises(SinkUnavailable, match="MSG_SIZE_TOO_LARGE") as info:
        sink.publish(_records(6))
    assert info.value.delivered == frozenset({"e0", "e1", "e2"})
    assert sink._producer is None


def test_a_queue_that_stays_full_fails_at_the_deadline() -> None:
    class _Full(_Producer):
        def produce(self, *args: Any, **kwargs: Any) -> None:
            raise BufferError("queue full")

    sink = _sink(_Full(), timeout_s=0.15)
    with pytest.raises(SinkUnavailable, match="queue full") as info:
        sink.publish(_records(3))
    assert info.value.delivered == frozenset()


def test_reports_of_equal_records_are_matched_one_each() -> None:
    same = [Outgoing("rejected", "m-1", "r1", b'{"same":1}'), Outgoing("rejected", "m-1", "r2", b'{"same":1}'),
            Outgoing("event", "m-1", "e3", b'{"same":1}')]
    producer = _Producer(lambda i: KafkaError(KafkaError._MSG_TIMED_OUT) if i == 1 else None)
    with pytest.raises(SinkUnavailable) as info:
        _sink(producer).publish(same)
    delivered = info.value.delivered
    assert "e3" in delivered and len(delivered) == 2 and len(delivered & {"r1", "r2"}) == 1
