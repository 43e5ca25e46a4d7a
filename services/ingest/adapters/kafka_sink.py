"""EventSink on kafka-python: idempotent producer, acks=all, returns only after every ack."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from services.ingest.domain.model import Outgoing
from services.ingest.domain.ports import SinkUnavailable

log = logging.getLogger(__name__)


def producer_config(bootstrap: str, timeout_s: float) -> dict[str, Any]:
    timeout_ms = int(timeout_s * 1000)
    return {
        "bootstrap_servers": bootstrap.split(","),
        "acks": "all",
        "enable_idempotence": True,
        "retries": 2**31 - 1,  # bounded by delivery_timeout_ms
        "delivery_timeout_ms": max(timeout_ms, 2000),
        "request_timeout_ms": max(timeout_ms - 500, 1500),
        "max_block_ms": min(timeout_ms, 5000),
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "max_in_flight_requests_per_connection": 5,
        "bootstrap_timeout_ms": min(timeout_ms, 5000),
        "client_id": "floatbridge-ingest",
    }


class KafkaSink:
    def __init__(self, bootstrap: str, events_topic: str, rejected_topic: str, timeout_s: float = 10.0,
                 observe_latency: Callable[[float], None] | None = None):
        self.bootstrap = bootstrap
        self.topics = {"event": events_topic, "rejected": rejected_topic}
        self.timeout_s = timeout_s
        self.observe_latency = observe_latency
        self._producer: Any = None
        self._lock = threading.Lock()
        self._partitions: dict[str, tuple[int, list[int], dict[bytes, int]]] = {}

    def _get(self) -> Any:
        with self._lock:
            if self._producer is None:
                from kafka import KafkaProducer
                from kafka.errors import KafkaError

                try:
                    self._producer = KafkaProducer(**producer_config(self.bootstrap, self.timeout_s))
                except KafkaError as exc:
                    raise SinkUnavailable(f"cannot connect to Kafka at {self.bootstrap}: {exc}") from None
            return self._producer

    def publish(self, records: Sequence[Outgoing]) -> None:
        from kafka.errors import KafkaError

        start = time.perf_counter()
        producer = self._get()
        futures = []
        try:
            partitioners: dict[str, Callable[[bytes], int | None]] = {}
            for rec in records:
                key = rec.key.encode("utf-8")
                pick = partitioners.get(rec.kind)
                if pick is None:  # per batch and only for the topics it writes to
                    pick = partitioners[rec.kind] = self._partitioner(producer, self.topics[rec.kind])
                futures.append((rec.event_id, producer.send(
                    self.topics[rec.kind], value=rec.payload, key=key, partition=pick(key),
                    headers=list(rec.headers))))
        except KafkaError as exc:
            self._wait(futures, start)  # whatever was sent may still be acknowledged
            delivered = frozenset(eid for eid, f in futures if f.succeeded())
            self._reset(producer)
            raise SinkUnavailable(f"Kafka send failed: {exc}", delivered) from None
        failed = self._wait(futures, start)
        if failed:
            delivered = frozenset(eid for eid, f in futures if f.succeeded())
            self._reset(producer)
            raise SinkUnavailable(f"Kafka did not acknowledge {len(failed)} records: {failed[0]}", delivered)
        if self.observe_latency is not None:
            self.observe_latency(time.perf_counter() - start)

    def _partitioner(self, producer: Any, topic: str) -> Callable[[bytes], int | None]:
        """The partition kafka-python's DefaultPartitioner picks for a key (murmur2 of the key modulo the
        sorted partition list, as the Java client does), remembered per merchant key: the default
        partitioner recomputes it (pure-Python murmur2, a sorted copy of the partition list) for every
        record. The memo is per partition count and bounded; a new partition count starts a new one."""
        from kafka.partitioner.default import murmur2

        partitions = producer.partitions_for(topic)
        if not partitions:  # no metadata: let send() wait for it and partition as usual
            return lambda key: None
        memo = self._partitions.get(topic)
        if memo is None or memo[0] != len(partitions) or len(memo[2]) > 200_000:
            memo = (len(partitions), sorted(partitions), {})
            self._partitions[topic] = memo
        _, ordered, known = memo

        def pick(key: bytes) -> int | None:
            part = known.get(key)
            if part is None:
                part = known[key] = ordered[(murmur2(key) & 0x7FFFFFFF) % len(ordered)]
            return part

        return pick

    def _reset(self, producer: Any) -> None:
        """Drop a producer that failed: after a broker outage an idempotent producer can stay wedged
        (expired batches, stale producer id). The next call builds a fresh one; records it may still
        deliver are harmless because consumers dedupe by event id."""
        with self._lock:
            if self._producer is producer:
                self._producer = None
        threading.Thread(target=_close_quietly, args=(producer,), daemon=True).start()

    def _wait(self, futures: list[tuple[str, Any]], start: float) -> list[str]:
        from kafka.errors import KafkaError

        deadline = start + self.timeout_s
        failed = []
        for _, fut in futures:
            if fut.is_done:  # acknowledged (or failed) already: no wait, no clock read
                exc = fut.exception
                if exc is not None:
                    failed.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            try:
                fut.get(timeout=max(deadline - time.perf_counter(), 0.001))
            except KafkaError as exc:
                failed.append(f"{type(exc).__name__}: {exc}"[:200])
        return failed

    def ping(self) -> None:
        from kafka.errors import KafkaError

        producer = self._get()
        try:
            producer.partitions_for(self.topics["event"])
        except KafkaError as exc:
            raise SinkUnavailable(f"Kafka metadata unavailable: {exc}") from None

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=5)
                self._producer = None


def _close_quietly(producer: Any) -> None:
    try:
        producer.close(timeout=2)
    except Exception as exc:  # closing a broken producer is best effort
        log.debug("closing failed producer: %s", exc)
