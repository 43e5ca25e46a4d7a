"""Outbox relay (to Kafka or an in-process bus) and the webhook dispatcher.

Rows are claimed with FOR UPDATE SKIP LOCKED on PostgreSQL so several replicas can run the
loops side by side without sending a row twice in the normal case (delivery stays at-least-once).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from services.disbursement.adapters.orm import merchants, outbox, webhook_deliveries
from services.disbursement.domain.webhooks_signing import backoff_seconds, headers

if TYPE_CHECKING:
    from services.disbursement.service import DisbursementService

log = logging.getLogger(__name__)
CLAIM_LEASE = timedelta(seconds=60)  # a claimed delivery is retried by others if this worker dies


def relay_batch(svc: DisbursementService, limit: int) -> int:
    assert svc.publisher is not None
    q = sa.select(outbox.c.id, outbox.c.topic, outbox.c.key, outbox.c.payload).where(
        outbox.c.sent_at.is_(None)).order_by(outbox.c.id).limit(limit)
    if svc.engine.dialect.name == "postgresql":
        with svc.engine.begin() as conn:
            rows = conn.execute(q.with_for_update(skip_locked=True)).all()
            _publish(svc, rows)
            _mark_sent(conn, svc, rows)
        return len(rows)
    # SQLite: publish outside any transaction, since an in-process bus may call back into the service.
    with svc.engine.connect() as conn:
        rows = conn.execute(q).all()
    _publish(svc, rows)
    with svc._tx() as conn:
        _mark_sent(conn, svc, rows)
    return len(rows)


def _publish(svc: DisbursementService, rows: Sequence[Any]) -> None:
    assert svc.publisher is not None
    for row in rows:
        svc.publisher.publish(row.topic, row.key, json.loads(row.payload))
        svc.metrics.published.labels(row.topic).inc()
    flush = getattr(svc.publisher, "flush", None)
    if rows and callable(flush):
        flush()  # Kafka: acknowledged before the rows are marked sent


def _mark_sent(conn: sa.Connection, svc: DisbursementService, rows: Sequence[Any]) -> None:
    if rows:
        conn.execute(sa.update(outbox).where(outbox.c.id.in_([r.id for r in rows])).values(sent_at=svc.clock()))


def _claim(svc: DisbursementService, now: datetime, limit: int) -> Sequence[Any]:
    q = (
        sa.select(webhook_deliveries.c.id, webhook_deliveries.c.msg_id, webhook_deliveries.c.payload,
                  webhook_deliveries.c.attempts, webhook_deliveries.c.merchant_id)
        .join(merchants, merchants.c.merchant_id == webhook_deliveries.c.merchant_id)
        .where(webhook_deliveries.c.state == "pending", webhook_deliveries.c.next_attempt_at <= now,
               merchants.c.webhook_enabled.is_(True))
        .order_by(webhook_deliveries.c.next_attempt_at, webhook_deliveries.c.id).limit(limit)
    )
    if svc.engine.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True, of=webhook_deliveries)
    with svc._tx() as conn:
        rows = conn.execute(q).all()
        if rows:
            conn.execute(sa.update(webhook_deliveries).where(webhook_deliveries.c.id.in_([r.id for r in rows]))
                         .values(next_attempt_at=now + CLAIM_LEASE))
    return rows


def dispatch(svc: DisbursementService, now: datetime, limit: int = 100) -> int:
    rows = _claim(svc, now, limit)
    for row in rows:
        _deliver(svc, row, now)
    return len(rows)


def _deliver(svc: DisbursementService, row: Any, now: datetime) -> None:
    with svc.engine.connect() as conn:
        m = conn.execute(sa.select(merchants.c.webhook_url, merchants.c.webhook_secrets)
                         .where(merchants.c.merchant_id == row.merchant_id)).one()
    body = row.payload.encode("utf-8")
    status: int | None = None
    error = ""
    started = time.perf_counter()
    try:
        hdrs = headers(m.webhook_secrets or [], row.msg_id, int(now.timestamp()), body)
        status = int(svc.transport(m.webhook_url, hdrs, body))
    except Exception as exc:  # any transport failure is one failed attempt, never a crashed loop
        error = f"{exc.__class__.__name__}: {exc}"[:500]
    svc.metrics.webhook_latency.observe(time.perf_counter() - started)
    svc.metrics.webhook_attempts.inc()
    ok = status is not None and 200 <= status < 300
    with svc._tx() as conn:
        if ok:
            conn.execute(sa.update(webhook_deliveries).where(webhook_deliveries.c.id == row.id).values(
                state="delivered", attempts=row.attempts + 1, last_status=status, last_error=None, finished_at=now))
            conn.execute(sa.update(merchants).where(merchants.c.merchant_id == row.merchant_id)
                         .values(webhook_failures=0))
            return
        svc.metrics.webhook_failures.inc()
        attempts = row.attempts + 1
        s = svc.settings
        dead = attempts >= s.webhook_max_attempts
        delay = backoff_seconds(attempts, s.webhook_backoff_base_seconds, s.webhook_backoff_cap_seconds,
                                random.random())
        conn.execute(sa.update(webhook_deliveries).where(webhook_deliveries.c.id == row.id).values(
            state="dead" if dead else "pending", attempts=attempts, last_status=status,
            last_error=error or f"HTTP {status}", next_attempt_at=now + timedelta(seconds=delay),
            finished_at=now if dead else None))
        failures = conn.execute(sa.select(merchants.c.webhook_failures).where(
            merchants.c.merchant_id == row.merchant_id)).scalar_one() + 1
        disable = failures >= s.webhook_disable_after_failures
        conn.execute(sa.update(merchants).where(merchants.c.merchant_id == row.merchant_id).values(
            webhook_failures=failures, webhook_enabled=not disable))
        if dead:
            svc.metrics.webhook_dead.inc()
        if disable:
            log.warning("webhook endpoint of merchant %s disabled after %d failures", row.merchant_id, failures)
