"""EventSink on librdkafka (confluent-kafka): idempotent producer, acks=all, returns only after every
delivery report said delivered. Same contract as KafkaSink; the records are built and batched in C."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from services.ingest.domain.model import Outgoing
from services.ingest.domain.ports import SinkUnavailable

log = logging.getLogger(__name__)

# The largest record the producer accepts: kafka-python's max_request_size default, the broker's default
# max.message.bytes (1 MiB + 12). An event above MAX_EVENT_BYTES never gets here (normalise rejects it).
MESSAGE_MAX_BYTES = 1_048_576


def producer_config(bootstrap: str, timeout_s: float, max_queued_records: int = 100_000,
                    max_queued_kbytes: int = 131_072) -> dict[str, Any]:
    timeout_ms = int(timeout_s * 1000)
    return {
        "bootstrap.servers": bootstrap,
        "client.id": "floatbridge-ingest",
        "enable.idempotence": True,
        "acks": "all",
        # Java's / kafka-python's default for keyed records: murmur2(key) % partitions (random for null keys).
        "partitioner": "murmur2_random",
        "message.timeout.ms": max(timeout_ms, 2000),  # retries bounded by this, as delivery_timeout_ms
        "request.timeout.ms": max(timeout_ms - 500, 1500),
        "socket.timeout.ms": max(timeout_ms, 2000),
        # Each publish queues its whole batch at once (~1 ms) and then waits for it: a longer linger only
        # adds latency to every request (kafka-python's 5 ms fills a batch record by record in Python).
        "linger.ms": 2,
        "batch.size": 256 * 1024,
        "max.in.flight.requests.per.connection": 5,
        "message.max.bytes": MESSAGE_MAX_BYTES,
        # Bounded memory: produce() raises BufferError past these, publish waits (up to its deadline) then 503.
        "queue.buffering.max.messages": max_queued_records,
        "queue.buffering.max.kbytes": max_queued_kbytes,
        "topic.metadata.refresh.interval.ms": 30_000,
    }


class _Batch:
    """Delivery reports of one publish call: one callback for all its records (no per-record closure).
    Reports may be served by any thread's poll(), so the state is only appended to (list.append is atomic
    under the GIL; a shared counter would not be). The delivered messages are kept so that, on a failure,
    their values name the event ids that did get acknowledged."""

    __slots__ = ("expected", "delivered", "failed")

    def __init__(self, expected: int):
        self.expected = expected
        self.delivered: list[Any] = []  # confluent-kafka Message objects
        self.failed: list[str] = []

    def report(self, err: Any, msg: Any) -> None:
        if err is None:
            self.delivered.append(msg)
        else:
            self.failed.append(f"{err.name()}: {err.str()}"[:200])

    def pending(self) -> bool:
        return len(self.delivered) + len(self.failed) < self.expected

    def delivered_ids(self, records: Sequence[Outgoing], topics: dict[str, str]) -> frozenset[str]:
        """Event ids of the delivered messages: topic + value identify a record (the value holds the
        event id); equal records are matched one report each."""
        ids: dict[tuple[str, bytes], list[str]] = {}
        for rec in records:
            ids.setdefault((topics[rec.kind], rec.payload), []).append(rec.event_id)
        out = set()
        for msg in list(self.delivered):
            left = ids.get((msg.topic(), msg.value()))
            if left:
                out.add(left.pop())
        return frozenset(out)


class RdKafkaSink:
    def __init__(self, bootstrap: str, events_topic: str, rejected_topic: str, timeout_s: float = 10.0,
                 observe_latency: Callable[[float], None] | None = None, *, max_queued_records: int = 100_000,
                 max_queued_kbytes: int = 131_072):
        self.bootstrap = bootstrap
        self.topics = {"event": events_topic, "rejected": rejected_topic}
        self.timeout_s = timeout_s
        self.observe_latency = observe_latency
        self.max_queued_records = max_queued_records
        self.max_queued_kbytes = max_queued_kbytes
        self._producer: Any = None
        self._fatal: Any = None  # the producer whose error callback reported a fatal error
        self._lock = threading.Lock()

    def config(self) -> dict[str, Any]:
        conf = producer_config(self.bootstrap, self.timeout_s, self.max_queued_records, self.max_queued_kbytes)
        conf["error_cb"] = self._on_error
        conf["logger"] = log
        return conf

    def _on_error(self, err: Any) -> None:
        if err.fatal():  # e.g. an idempotence sequence that cannot be recovered: this producer is done
            log.error("librdkafka fatal error: %s", err)
            self._fatal = self._producer
        else:
            log.debug("librdkafka: %s", err)

    def _get(self) -> Any:
        with self._lock:
            if self._producer is None:
                from confluent_kafka import KafkaException, Producer

                try:
                    self._producer = Producer(self.config())
                except (KafkaException, ValueError, TypeError) as exc:
                    raise SinkUnavailable(f"cannot create a Kafka producer for {self.bootstrap}: {exc}") from None
            return self._producer

    def publish(self, records: Sequence[Outgoing]) -> None:
        from confluent_kafka import KafkaException

        start = time.perf_counter()
        deadline = start + self.timeout_s
        producer = self._get()
        batch = _Batch(len(records))
        report = batch.report
        produce, poll = producer.produce, producer.poll
        topics = self.topics
        queued = 0
        try:
            for rec in records:
                while True:
                    try:
                        produce(topics[rec.kind], rec.payload, rec.key, on_delivery=report,
                                headers=list(rec.headers))
                        break
                    except BufferError:  # the bounded queue is full: serve reports, wait for room
                        if time.perf_counter() >= deadline:
                            raise KafkaException("local producer queue full until the produce timeout") from None
                        poll(0.05)
                queued += 1
        except KafkaException as exc:
            batch.expected = queued  # the rest was never queued: no report will come for them
            self._wait(producer, batch, deadline)  # whatever was queued may still be acknowledged
            self._reset(producer)
            delivered = batch.delivered_ids(records, self.topics)
            raise SinkUnavailable(f"Kafka produce failed: {_describe(exc)}", delivered) from None
        self._wait(producer, batch, deadline)
        if batch.failed or batch.pending():
            self._reset(producer)
            first = batch.failed[0] if batch.failed else f"no delivery report within {self.timeout_s:g} s"
            raise SinkUnavailable(f"Kafka did not acknowledge {len(records) - len(batch.delivered)} records: {first}",
                                  batch.delivered_ids(records, self.topics))
        if self.observe_latency is not None:
            self.observe_latency(time.perf_counter() - start)

    def _wait(self, producer: Any, batch: _Batch, deadline: float) -> None:
        """Serve delivery reports until every record of the batch has one, a fatal error, or the deadline.
        Other requests' threads poll too and may serve this batch's reports: short slices notice that
        (an idle poll costs a few microseconds)."""
        poll = producer.poll
        while batch.pending() and self._fatal is not producer:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            poll(min(left, 0.002))

    def _reset(self, producer: Any) -> None:
        """Drop a producer that failed (as KafkaSink does): the next call builds a fresh one. Its queued
        records are purged; records already sent may still land, harmless as consumers dedupe by ce_id."""
        with self._lock:
            if self._producer is producer:
                self._producer = None
        threading.Thread(target=_close_quietly, args=(producer,), daemon=True).start()

    def ping(self) -> None:
        from confluent_kafka import KafkaException

        producer = self._get()
        try:
            md = producer.list_topics(self.topics["event"], timeout=min(self.timeout_s, 5.0))
        except KafkaException as exc:
            raise SinkUnavailable(f"Kafka metadata unavailable: {_describe(exc)}") from None
        topic = md.topics.get(self.topics["event"])
        if topic is None or topic.error is not None and not topic.partitions:
            raise SinkUnavailable(f"Kafka metadata unavailable: {getattr(topic, 'error', 'no topic')}")

    def close(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.flush(5)


def _describe(exc: Exception) -> str:
    err = exc.args[0] if exc.args else None
    name = getattr(err, "name", None)
    return f"{name()}: {err.str()}" if callable(name) else str(exc)  # type: ignore[union-attr]


def _close_quietly(producer: Any) -> None:
    try:
        producer.purge(in_queue=True, in_flight=False)
        producer.flush(2)
    except Exception as exc:  # closing a broken producer is best effort
        log.debug("closing failed producer: %s", exc)
