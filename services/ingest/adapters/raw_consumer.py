"""Kafka intake: events a marketplace produced to marketplace.raw.v1 get the same treatment as HTTP.

Offsets are committed only after every result of a poll is final (produced, duplicate or rejected
to the dead letter); if any is `retry`, the consumer seeks back and tries the same records again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from services.ingest.adapters.jsoncodec import parse_records
from services.ingest.bootstrap import IngestRuntime
from services.ingest.domain.model import Status

log = logging.getLogger(__name__)


def make_consumer(rt: IngestRuntime, **overrides: Any) -> Any:
    from kafka import KafkaConsumer

    s = rt.settings
    config: dict[str, Any] = {
        "bootstrap_servers": s.kafka_bootstrap.split(","),
        "group_id": s.raw_group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": s.max_batch_events,
        "client_id": "floatbridge-ingest-raw",
    }
    config.update(overrides)
    consumer = KafkaConsumer(**config)
    consumer.subscribe([s.raw_topic])
    return consumer


def process_once(rt: IngestRuntime, consumer: Any, timeout_ms: int = 1000) -> tuple[int, bool]:
    """Poll once and handle what came; returns (records seen, committed)."""
    from kafka import TopicPartition

    polled: dict[TopicPartition, list[Any]] = consumer.poll(timeout_ms=timeout_ms)
    records = [rec for batch in polled.values() for rec in batch]
    if not records:
        return 0, False
    results = rt.submit(parse_records([rec.value for rec in records]), intake=f"kafka:{rt.settings.raw_topic}")
    if any(r.status is Status.RETRY for r in results):
        for tp, batch in polled.items():
            consumer.seek(tp, batch[0].offset)
        return len(records), False
    consumer.commit()
    return len(records), True


def run(rt: IngestRuntime, stop: threading.Event, consumer: Any | None = None) -> None:
    consumer = consumer or make_consumer(rt)
    backoff = 0.5
    try:
        while not stop.is_set():
            seen, committed = process_once(rt, consumer)
            if seen and not committed:
                log.warning("raw intake: broker or dedupe store unavailable; retrying in %.1f s", backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            elif committed:
                backoff = 0.5
            else:
                time.sleep(0)
    finally:
        consumer.close()
