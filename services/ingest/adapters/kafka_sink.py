"""EventSink on kafka-python: idempotent producer, acks=all, returns only after every ack."""

from __future__ import annotations

import functools
import inspect
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
        self._partitions: dict[str, tuple[int, list[Any], dict[str, tuple[bytes, Any]]]] = {}

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
        futures: list[tuple[str, Any]] = []
        try:
            append = _direct_append(producer)
            bulk = _bulk_append(producer) if append is not None else None
            limit = int(getattr(producer, "config", {}).get("max_request_size", 1048576)) - _RECORD_OVERHEAD
            routes: dict[str, Callable[[str], tuple[bytes, Any]]] = {}
            # Records for the accumulator, per partition in the order given (bulk path only).
            runs: dict[Any, list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]] = {}
            for rec in records:
                route = routes.get(rec.kind)
                if route is None:  # per batch and only for the topics it writes to
                    route = routes[rec.kind] = self._router(producer, self.topics[rec.kind])
                key, tp = route(rec.key)
                headers = list(rec.headers)
                value = rec.payload
                size = len(value) + len(key)
                for name, hval in headers:
                    size += len(name) + len(hval)
                if append is not None and tp is not None and size <= limit:
                    if bulk is not None:
                        run = runs.get(tp)
                        if run is None:
                            run = runs[tp] = []
                        run.append((rec.event_id, key, value, headers))
                        continue
                    fut = append(tp, key, value, headers)
                else:  # no metadata yet, or a record near the size limit: send() checks and raises
                    fut = producer.send(self.topics[rec.kind], value=value, key=key,
                                        partition=None if tp is None else tp.partition, headers=headers)
                futures.append((rec.event_id, fut))
            if bulk is not None:
                for tp, run in runs.items():
                    bulk(tp, run, futures)
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

    def _router(self, producer: Any, topic: str) -> Callable[[str], tuple[bytes, Any]]:
        """(key bytes, TopicPartition) for a merchant key: the partition kafka-python's DefaultPartitioner
        picks (murmur2 of the key modulo the sorted partition list, as the Java client does), remembered
        per key: the default partitioner recomputes it (pure-Python murmur2, a sorted copy of the partition
        list) for every record. The memo is per partition count and bounded; a new partition count starts
        a new one. Without metadata the TopicPartition is None and send() waits for it as usual."""
        from kafka.partitioner.default import murmur2
        from kafka.structs import TopicPartition

        partitions = producer.partitions_for(topic)
        if not partitions:
            return lambda key: (key.encode("utf-8"), None)
        memo = self._partitions.get(topic)
        if memo is None or memo[0] != len(partitions) or len(memo[2]) > 200_000:
            memo = (len(partitions), [TopicPartition(topic, p) for p in sorted(partitions)], {})
            self._partitions[topic] = memo
        _, ordered, known = memo

        def route(key: str) -> tuple[bytes, Any]:
            hit = known.get(key)
            if hit is None:
                raw = key.encode("utf-8")
                hit = known[key] = (raw, ordered[(murmur2(raw) & 0x7FFFFFFF) % len(ordered)])
            return hit

        return route

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
        """A metadata round trip to the broker now. partitions_for alone answers from the producer's cached
        metadata once it has some, so a broker that went down after start-up would still look reachable."""
        from kafka.errors import KafkaError

        producer = self._get()
        try:
            producer.partitions_for(self.topics["event"])
        except KafkaError as exc:
            raise SinkUnavailable(f"Kafka metadata unavailable: {exc}") from None
        metadata, sender = getattr(producer, "_metadata", None), getattr(producer, "_sender", None)
        if metadata is None or sender is None:  # another kafka-python layout: the cached answer is all there is
            return
        answered = threading.Event()
        future = metadata.request_update()
        future.add_both(lambda *_: answered.set())
        sender.wakeup()
        wait = min(self.timeout_s, 5.0)
        if not answered.wait(wait):
            raise SinkUnavailable(f"Kafka metadata unavailable: no answer from {self.bootstrap} within {wait:g} s")
        if future.failed():
            raise SinkUnavailable(f"Kafka metadata unavailable: {future.exception}")

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=5)
                self._producer = None


# Room left under max_request_size for a record's framing and the batch header (a few dozen bytes each):
# records within it cannot hit send()'s size check, the rest go through send() and its exact check.
_RECORD_OVERHEAD = 1024


@functools.cache
def _accumulator_fits(append: Callable[..., Any]) -> bool:
    """The record accumulator of kafka-python 3.x: append(tp, timestamp_ms, key, value, headers, now=None,
    abort_on_new_batch=False) returning (future, batch_is_full, new_batch_created, abort_for_new_batch)."""
    try:
        params = list(inspect.signature(append).parameters)
    except (TypeError, ValueError):
        return False
    return params[:6] == ["self", "tp", "timestamp_ms", "key", "value", "headers"] and "abort_on_new_batch" in params


def _direct_append(producer: Any) -> Callable[[Any, bytes, bytes, list[tuple[str, bytes]]], Any] | None:
    """What KafkaProducer.send() does for a record with an explicit, known partition and a checked size,
    minus its per-record generic work (argument and header checks, serializer calls, a metadata set copy
    and partition re-check, size estimate, eager debug-message formatting): a third of send()'s CPU.
    The record goes into the same accumulator, gets the same per-record future, and the sender is woken
    exactly when send() would wake it; acks, idempotence and retries are the sender's and unchanged.
    None (use send()) for a closed or transactional producer or an accumulator of another shape."""
    acc = getattr(producer, "_accumulator", None)
    sender = getattr(producer, "_sender", None)
    if acc is None or sender is None or getattr(producer, "_closed", True):
        return None
    txn = getattr(producer, "_transaction_manager", None)
    if txn is not None and txn.is_transactional():
        return None
    if not _accumulator_fits(type(acc).append):
        return None
    acc_append, wakeup = acc.append, sender.wakeup

    def append(tp: Any, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> Any:
        future, batch_is_full, new_batch_created, _ = acc_append(tp, None, key, value, headers)
        if batch_is_full or new_batch_created:
            wakeup()
        return future

    return append


def _bulk_append(producer: Any) -> Callable[[Any, list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]],
                                            list[tuple[str, Any]]], None] | None:
    """_direct_append for a run of records of one partition: what RecordAccumulator.append does for each
    record that fits the partition's open batch (ProducerBatch.try_append on the last batch, under the
    partition's lock, counted in appends-in-progress), with the lock taken once per run instead of once
    per record. A record that does not fit goes through RecordAccumulator.append itself, which opens the
    next batch; the run then continues on that batch. Same records in the same order, the same per-record
    futures, the sender woken when a batch is full or new (as send() does). None (use _direct_append)
    unless the accumulator is kafka-python's RecordAccumulator with the expected internals."""
    acc = getattr(producer, "_accumulator", None)
    if acc is None or not _record_accumulator_fits(type(acc).__qualname__, type(acc).__module__):
        return None
    acc_append, wakeup, lock_of, batches = acc.append, producer._sender.wakeup, acc._tp_lock, acc._batches
    in_progress = acc._appends_in_progress
    monotonic = time.monotonic

    def bulk(tp: Any, run: list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]],
             futures: list[tuple[str, Any]]) -> None:
        i, n = 0, len(run)
        while i < n:
            wake = False
            if not acc._closed:
                in_progress.increment()
                try:
                    with lock_of(tp):
                        dq = batches[tp]
                        if dq:
                            last = dq[-1]
                            try_append = last.try_append
                            now = monotonic()
                            while i < n:
                                eid, key, value, headers = run[i]
                                fut = try_append(None, key, value, headers, now=now)
                                if fut is None:
                                    break
                                futures.append((eid, fut))
                                i += 1
                            wake = len(dq) > 1 or last.records.is_full()
                finally:
                    in_progress.decrement()
            if wake:
                wakeup()
            if i < n:  # the open batch is full (or there is none): the accumulator opens the next one
                eid, key, value, headers = run[i]
                fut, batch_is_full, new_batch_created, _ = acc_append(tp, None, key, value, headers)
                futures.append((eid, fut))
                i += 1
                if batch_is_full or new_batch_created:
                    wakeup()

    return bulk


@functools.cache
def _record_accumulator_fits(qualname: str, module: str) -> bool:
    """kafka-python 3.x's RecordAccumulator, whose append() starts with the fast path _bulk_append repeats."""
    try:
        from kafka.producer.producer_batch import ProducerBatch
        from kafka.producer.record_accumulator import RecordAccumulator
    except ImportError:
        return False
    return ((qualname, module) == (RecordAccumulator.__qualname__, RecordAccumulator.__module__)
            and _accumulator_fits(RecordAccumulator.append)
            and callable(getattr(RecordAccumulator, "_tp_lock", None))
            and list(inspect.signature(ProducerBatch.try_append).parameters)
            == ["self", "timestamp_ms", "key", "value", "headers", "now"])


def _close_quietly(producer: Any) -> None:
    try:
        producer.close(timeout=2)
    except Exception as exc:  # closing a broken producer is best effort
        log.debug("closing failed producer: %s", exc)
