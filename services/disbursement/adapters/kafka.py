"""kafka-python adapters: the outbox publisher and the consumer loop (manual commit after the DB commit)."""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from schemas import topics
from schemas.codec import EventInvalid, decode, encode
from services.disbursement.service import DisbursementService, EventRejected

log = logging.getLogger(__name__)
CONSUMED = (topics.CREDIT_LIMITS, topics.LOAN_OFFERS, topics.MARKETPLACE_EVENTS)


class KafkaPublisher:
    """Outbox relay producer. `flush` raises unless every record sent since the last flush was
    acknowledged, so the relay marks rows sent only after the broker has them (a failed relay pass is
    retried; consumers dedupe by event id)."""

    def __init__(self, bootstrap: str, **config: Any):
        self.bootstrap = bootstrap
        self.config = {"bootstrap_servers": bootstrap, "acks": "all", "linger_ms": 5, "retries": 5, **config}
        self.producer: Any = None
        self._futures: list[Any] = []

    def _get(self) -> Any:
        if self.producer is None:
            from kafka import KafkaProducer

            self.producer = KafkaProducer(**self.config)
        return self.producer

    def publish(self, topic: str, key: str, event: dict[str, Any]) -> None:
        self._futures.append(self._get().send(topic, key=key.encode("utf-8"), value=encode(event)))

    def flush(self) -> None:
        futures, self._futures = self._futures, []
        if self.producer is None:
            return
        self.producer.flush(timeout=30)
        failed = [f.exception for f in futures if not f.succeeded()]
        if failed:
            # A producer that failed may be wedged after a broker outage: start afresh next time.
            producer, self.producer = self.producer, None
            threading.Thread(target=lambda: producer.close(timeout=2), daemon=True).start()
            raise RuntimeError(f"Kafka did not acknowledge {len(failed)} outbox records: {failed[0]}")

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close(timeout=10)


def consume(svc: DisbursementService, bootstrap: str, group: str, prefix: str, stop: threading.Event,
            max_records: int = 200) -> None:
    """Apply every consumed event, then commit its offset. A crash in between replays the event,
    which the processed_events table turns into a no-op. A broker outage never ends the loop: the
    consumer is rebuilt and resumes from the last committed offset."""
    from kafka.errors import KafkaError

    while not stop.is_set():
        try:
            _consume_until_error(svc, bootstrap, group, prefix, stop, max_records)
        except KafkaError as exc:
            log.warning("Kafka consumer failed, reconnecting: %s", str(exc)[:200])
            stop.wait(2.0)


def _consume_until_error(svc: DisbursementService, bootstrap: str, group: str, prefix: str,
                         stop: threading.Event, max_records: int) -> None:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        *[prefix + t for t in CONSUMED], bootstrap_servers=bootstrap, group_id=group,
        enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=max_records)
    try:
        while not stop.is_set():
            batch = consumer.poll(timeout_ms=500)
            try:
                for records in batch.values():
                    for record in records:
                        _apply(svc, record)
            except (OperationalError, InterfaceError) as exc:
                # Database down (restart, failover): replay the batch once it is back; already applied
                # events are no-ops thanks to processed_events. Without this the thread died silently.
                log.warning("database unavailable, replaying the batch: %s", str(exc).splitlines()[0][:200])
                for tp, records in batch.items():
                    consumer.seek(tp, records[0].offset)
                stop.wait(1.0)
                continue
            if batch:
                consumer.commit()
    finally:
        try:
            consumer.close(autocommit=False)
        except Exception as exc:  # closing after a broker failure is best effort
            log.debug("closing consumer: %s", exc)


def _apply(svc: DisbursementService, record: Any) -> None:
    try:
        event = decode(record.value)
        if not isinstance(event, dict):
            raise EventRejected("event is not a JSON object")
        allowed = topics.types_on(record.topic)
        if allowed is not None and event.get("type") not in allowed:
            raise EventRejected(f"type {str(event.get('type'))[:64]!r} does not belong on {record.topic}")
        svc.handle(event)
    except (EventRejected, EventInvalid, ValueError) as exc:
        # Upstream validated it already; a poison event is logged and skipped, never retried forever.
        log.error("skipping %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)
