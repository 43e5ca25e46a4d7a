"""kafka-python adapters: the outbox publisher and the consumer loop (manual commit after the DB commit)."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import DataError, IntegrityError, InterfaceError, OperationalError

from schemas import contract_check, dead_letter, topics
from schemas.codec import EventInvalid, FieldError, decode, encode
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
            max_records: int = 200, contract: contract_check.Contract = contract_check.DEFAULT) -> None:
    """Apply every consumed event, then commit its offset. A crash in between replays the event,
    which the processed_events table turns into a no-op. A broker outage never ends the loop: the
    consumer is rebuilt and resumes from the last committed offset. Marketplace events are checked against
    `contract` first (see _apply)."""
    from kafka.errors import KafkaError

    while not stop.is_set():
        try:
            _consume_until_error(svc, bootstrap, group, prefix, stop, max_records, contract)
        except KafkaError as exc:
            log.warning("Kafka consumer failed, reconnecting: %s", str(exc)[:200])
            stop.wait(2.0)
        except Exception:  # anything else: resume from the last committed offset rather than die silently
            log.exception("disbursement consumer failed; resuming from the last committed offset")
            stop.wait(5.0)


def _consume_until_error(svc: DisbursementService, bootstrap: str, group: str, prefix: str,
                         stop: threading.Event, max_records: int,
                         contract: contract_check.Contract = contract_check.DEFAULT) -> None:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        *[prefix + t for t in CONSUMED], bootstrap_servers=bootstrap, group_id=group,
        enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=max_records)
    dead_letters = KafkaPublisher(bootstrap)
    try:
        while not stop.is_set():
            batch = consumer.poll(timeout_ms=500)
            dead: list[dict[str, Any]] = []
            try:
                for records in batch.values():
                    for record in records:
                        letter = _apply(svc, record, contract)
                        if letter is not None:
                            dead.append(letter)
            except (OperationalError, InterfaceError) as exc:
                # Database down (restart, failover): replay the batch once it is back; already applied
                # events are no-ops thanks to processed_events. Without this the thread died silently.
                log.warning("database unavailable, replaying the batch: %s", str(exc).splitlines()[0][:200])
                for tp, records in batch.items():
                    consumer.seek(tp, records[0].offset)
                stop.wait(1.0)
                continue
            if dead:
                # Acknowledged before the offsets that skip their records are committed; a failure here
                # replays the batch (applied events are no-ops, each dead letter keeps its id).
                for letter in dead:
                    dead_letters.publish(prefix + topics.INGEST_REJECTED, letter["subject"], letter)
                dead_letters.flush()
            if batch:
                consumer.commit()
    finally:
        try:
            consumer.close(autocommit=False)
        except Exception as exc:  # closing after a broker failure is best effort
            log.debug("closing consumer: %s", exc)
        dead_letters.close()


class _ContractBroken(ValueError):
    def __init__(self, problems: list[FieldError]) -> None:
        self.problems = problems
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        super().__init__("; ".join(f"{p.pointer or '/'}: {p.message}" for p in problems[:3]) + more)


def _apply(svc: DisbursementService, record: Any,
           contract: contract_check.Contract = contract_check.DEFAULT) -> dict[str, Any] | None:
    """Apply one record; a record that cannot be applied gives its dead letter (schemas.dead_letter) instead.

    A record of the marketplace topic may have been produced straight to it, past ingest: it is checked against
    the contract ingest checks (schemas.contract_check, stage "contract": schemas, invariants, the Kafka key is
    the subject, a UTC time neither before contract.min_time nor more than its skew ahead of the wall clock, so
    a record dated ahead never moves the event clock that ages loans) before the service sees it."""
    event: Any = None
    stage = "decode"
    problems: list[FieldError] = []
    try:
        event = decode(record.value)
        if not isinstance(event, dict):
            raise EventRejected(f"not a CloudEvent: a JSON {type(event).__name__}, not an object")
        stage = "type"
        allowed = topics.types_on(record.topic)
        if allowed is not None and (type(event.get("type")) is not str or event.get("type") not in allowed):
            raise EventRejected(f"type {str(event.get('type'))[:64]!r} does not belong on {record.topic}")
        if record.topic.endswith(topics.MARKETPLACE_EVENTS):
            stage = "contract"
            problems = contract_check.marketplace_errors(
                event, key=getattr(record, "key", contract_check.UNCHECKED), size=len(record.value),
                now=time.time(), contract=contract)
            if problems:
                raise _ContractBroken(problems)
        stage = "apply"
        svc.handle(event)
        return None
    except (EventRejected, EventInvalid, ValueError, DataError, IntegrityError) as exc:
        # A poison event (one the database refuses as well: a value too long for its column, a broken
        # constraint; its transaction rolled back whole) is never retried forever and never ends the consumer
        # thread: it is logged, counted and kept on the dead-letter topic with its reason.
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        log.error("dead-lettering %s[%d]@%d (%s): %s", record.topic, record.partition, record.offset, stage, reason)
        counter = getattr(getattr(svc, "metrics", None), "rejected_records", None)
        if counter is not None:
            counter.labels(stage).inc()
        ev = event if isinstance(event, dict) else {}
        return dead_letter.consumer_rejection(
            record.value, reason, consumer="disbursement", topic=record.topic, partition=record.partition,
            offset=record.offset, received_at=datetime.now(UTC), subject=ev.get("subject"), event_id=ev.get("id"),
            event_type=ev.get("type"), errors=[(p.pointer, p.message) for p in problems] if problems else None,
            reason=contract_check.reason(problems) if problems else "unprocessable")
