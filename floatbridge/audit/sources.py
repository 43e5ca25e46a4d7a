"""Reads a Snapshot from the real broker and database (read-only: a throwaway consumer without a
group, plain SELECTs)."""

from __future__ import annotations

import json
import time
from typing import Any

from floatbridge.audit.checks import Snapshot
from schemas import topics as t


def read_topic(kafka: str, topic: str, timeout: float = 30.0,
               records_per_second: float = 2000.0) -> tuple[list[tuple[dict[str, str], Any]], bool]:
    """Every record of `topic` from the beginning to the end offsets seen at start: [(headers, value)].
    Returns (records, exists). The deadline is `timeout` plus one second per `records_per_second`
    records to read, so a large topic (a 10-minute soak: ~300,000 records) is not cut off."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False, group_id=None,
                             consumer_timeout_ms=1000, request_timeout_ms=15000)
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            return [], False
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        begin = consumer.beginning_offsets(tps)
        total = sum(end[tp] - begin[tp] for tp in tps)
        out: list[tuple[dict[str, str], Any]] = []
        deadline = time.monotonic() + timeout + total / records_per_second
        while time.monotonic() < deadline and any(consumer.position(tp) < end[tp] for tp in tps):
            for batch in consumer.poll(timeout_ms=500, max_records=5000).values():
                for rec in batch:
                    headers = {k: (v.decode("utf-8", "replace") if v else "") for k, v in (rec.headers or [])}
                    try:
                        value = json.loads(rec.value) if rec.value is not None else None
                    except ValueError:
                        value = None
                    out.append((headers, value))
        if any(consumer.position(tp) < end[tp] for tp in tps):
            raise TimeoutError(f"could not read {topic} to its end within {timeout}s")
        return out, True
    finally:
        consumer.close()


def _events(kafka: str, topic: str, s: Snapshot) -> list[dict[str, Any]]:
    records, exists = read_topic(kafka, topic)
    if not exists:
        s.notes.append(f"topic {topic} does not exist")
    return [v for _, v in records if isinstance(v, dict)]


def read_kafka(kafka: str, prefix: str, s: Snapshot) -> None:
    records, exists = read_topic(kafka, prefix + t.MARKETPLACE_EVENTS)
    if not exists:
        s.notes.append(f"topic {prefix + t.MARKETPLACE_EVENTS} does not exist")
    for headers, value in records:
        eid = headers.get("ce_id") or (value.get("id") if isinstance(value, dict) else None)
        s.topic_event_ids.append(str(eid))
    s.limit_events = _events(kafka, prefix + t.CREDIT_LIMITS, s)
    s.offer_events = _events(kafka, prefix + t.LOAN_OFFERS, s)
    s.collection_events = _events(kafka, prefix + t.COLLECTIONS, s)


_QUERIES = {
    "offers": "SELECT offer_id, merchant_id, state FROM offers",
    "loans": "SELECT loan_id, offer_id, merchant_id, state, currency, principal, principal_due, fee_due, accepted_at "
             "FROM loans",
    "payouts": "SELECT payout_id, loan_id, amount, currency FROM payouts",
    "rail_payouts": "SELECT idempotency_key, amount, currency FROM sandbox_payouts",
    "journal_lines": "SELECT l.entry_id, e.loan_id, e.merchant_id, l.account, l.side, l.amount, l.currency "
                     "FROM journal_lines l JOIN journal_entries e ON e.entry_id = l.entry_id",
}


def read_database(url: str, s: Snapshot) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url, pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            names = set(sa.inspect(conn).get_table_names())
            if "ingest_dedupe" in names:
                for eid, state in conn.execute(sa.text("SELECT event_id, state FROM ingest_dedupe")):
                    (s.accepted_ids if state == "done" else s.pending_ids).add(eid)
            else:
                s.notes.append("table ingest_dedupe does not exist (ingest not using this database?)")
            for attr, sql in _QUERIES.items():
                table = sql.split(" FROM ")[1].split()[0]
                if table not in names:
                    s.notes.append(f"table {table} does not exist (disbursement not migrated?)")
                    continue
                setattr(s, attr, [dict(r._mapping) for r in conn.execute(sa.text(sql))])
    finally:
        engine.dispose()


def snapshot(kafka: str | None, database_url: str | None, prefix: str = "") -> Snapshot:
    s = Snapshot()
    if database_url:
        read_database(database_url, s)  # the database first: everything it marks done must be on a topic
    if kafka:
        read_kafka(kafka, prefix, s)
    return s


def audit(kafka: str | None, database_url: str | None, prefix: str = "", settle_seconds: float = 0.0,
          interval: float = 2.0) -> Any:
    """Check once, or keep checking until clean or `settle_seconds` pass (the system is eventually
    consistent: outbox relays, webhook loops and recovery run on timers). Returns the last Report."""
    from floatbridge.audit.checks import check

    deadline = time.monotonic() + settle_seconds
    while True:
        report = check(snapshot(kafka, database_url, prefix))
        if report.ok or time.monotonic() >= deadline:
            return report
        time.sleep(interval)
