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

import orjson
import sqlalchemy as sa

from services.disbursement.adapters.orm import merchants, outbox, webhook_deliveries
from services.disbursement.adapters.repository import run
from services.disbursement.domain.webhooks_signing import active_secrets, backoff_seconds, headers

if TYPE_CHECKING:
    from services.disbursement.service import DisbursementService

log = logging.getLogger(__name__)
CLAIM_LEASE = timedelta(seconds=60)  # a claimed delivery is retried by others if this worker dies


_UNSENT = sa.select(outbox.c.id, outbox.c.topic, outbox.c.key, outbox.c.payload).where(
    outbox.c.sent_at.is_(None)).order_by(outbox.c.id).limit(sa.bindparam("p_limit", type_=sa.Integer))
_MARK_SENT = sa.update(outbox).where(outbox.c.id.in_(sa.bindparam("p_ids", expanding=True))).values(
    sent_at=sa.bindparam("p_at", type_=outbox.c.sent_at.type))


def relay_batch(svc: DisbursementService, limit: int) -> int:
    assert svc.publisher is not None
    q, params = _UNSENT, {"p_limit": limit}
    if svc.engine.dialect.name == "postgresql":
        with svc.engine.begin() as conn:
            rows = conn.execute(q.with_for_update(skip_locked=True), params).all()
            _publish(svc, rows)
            _mark_sent(conn, svc, rows)
        return len(rows)
    # SQLite: publish outside any transaction, since an in-process bus may call back into the service.
    with svc.engine.connect() as conn:
        rows = run(conn, q, params).all()
    _publish(svc, rows)
    with svc._tx() as conn:
        _mark_sent(conn, svc, rows)
    return len(rows)


def _publish(svc: DisbursementService, rows: Sequence[Any]) -> None:
    assert svc.publisher is not None
    for row in rows:
        svc.publisher.publish(row.topic, row.key, _loads(row.payload))
        svc.metrics.published.labels(row.topic).inc()
    flush = getattr(svc.publisher, "flush", None)
    if rows and callable(flush):
        flush()  # Kafka: acknowledged before the rows are marked sent


def _loads(payload: str) -> Any:
    # The payload is the outbox's own JSON: orjson reads it faster with the same values; json takes what
    # orjson refuses (integers beyond 64 bits, lone surrogate escapes).
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return json.loads(payload)


def _mark_sent(conn: sa.Connection, svc: DisbursementService, rows: Sequence[Any]) -> None:
    if rows:
        run(conn, _MARK_SENT, {"p_ids": [r.id for r in rows], "p_at": svc.clock()})


_DUE = (
    sa.select(webhook_deliveries.c.id, webhook_deliveries.c.msg_id, webhook_deliveries.c.payload,
              webhook_deliveries.c.attempts, webhook_deliveries.c.merchant_id)
    .join(merchants, merchants.c.merchant_id == webhook_deliveries.c.merchant_id)
    .where(webhook_deliveries.c.state == "pending",
           webhook_deliveries.c.next_attempt_at <= sa.bindparam("p_now", type_=webhook_deliveries.c.next_attempt_at.type),
           merchants.c.webhook_enabled.is_(True))
    .order_by(webhook_deliveries.c.next_attempt_at, webhook_deliveries.c.id)
    .limit(sa.bindparam("p_limit", type_=sa.Integer))
)
_DUE_LOCKED = _DUE.with_for_update(skip_locked=True, of=webhook_deliveries)
_LEASE = sa.update(webhook_deliveries).where(webhook_deliveries.c.id.in_(sa.bindparam("p_ids", expanding=True))).values(
    next_attempt_at=sa.bindparam("p_until", type_=webhook_deliveries.c.next_attempt_at.type))


def _claim(svc: DisbursementService, now: datetime, limit: int) -> Sequence[Any]:
    q = _DUE_LOCKED if svc.engine.dialect.name == "postgresql" else _DUE
    with svc._tx() as conn:
        rows: Sequence[Any] = run(conn, q, {"p_now": now, "p_limit": limit}).all()
        if rows:
            run(conn, _LEASE, {"p_ids": [r.id for r in rows], "p_until": now + CLAIM_LEASE})
    return rows


def dispatch(svc: DisbursementService, now: datetime, limit: int = 100) -> int:
    """Claim due deliveries, send them (outside any transaction: a receiver may call back), then record
    every outcome in one transaction, in delivery order (the same final state as one write per attempt).

    A slow or dead endpoint must not hold everyone else's deliveries: once a merchant's endpoint could not be
    reached in this pass (timeout, refused connection), its other deliveries are not tried in this pass; and
    no delivery is sent once the claim's lease may have run out (another replica may have claimed it). Both
    are handed back unattempted (their attempt count unchanged) for a later pass. Returns the attempts made."""
    rows = _claim(svc, now, limit)
    if not rows:
        return 0
    endpoints = _endpoints(svc, {row.merchant_id for row in rows})
    deadline = time.monotonic() + max(1.0, CLAIM_LEASE.total_seconds() - svc.settings.webhook_timeout_seconds - 5)
    sent: list[Any] = []
    outcomes: list[tuple[int | None, str]] = []
    later: list[dict[str, Any]] = []
    unreachable: set[str] = set()
    for row in rows:
        if row.merchant_id in unreachable:
            later.append({"row_id": row.id, "row_next": now + timedelta(seconds=svc.settings.webhook_backoff_base_seconds)})
            continue
        if time.monotonic() > deadline:
            later.append({"row_id": row.id, "row_next": now})
            continue
        outcome = _attempt(svc, row, endpoints.get(row.merchant_id), now)
        if outcome[0] is None:
            unreachable.add(row.merchant_id)
        sent.append(row)
        outcomes.append(outcome)
    with svc._tx() as conn:
        _record(conn, svc, sent, outcomes, now)
        if later:
            run(conn, _HAND_BACK, later)
    return len(sent)


_HAND_BACK = sa.update(webhook_deliveries).where(webhook_deliveries.c.id == sa.bindparam("row_id")).values(
    next_attempt_at=sa.bindparam("row_next", type_=webhook_deliveries.c.next_attempt_at.type))


_ENDPOINTS = sa.select(merchants.c.merchant_id, merchants.c.webhook_url, merchants.c.webhook_secrets).where(
    merchants.c.merchant_id.in_(sa.bindparam("p_merchants", expanding=True)))
_RESET_FAILURES = sa.update(merchants).where(merchants.c.merchant_id.in_(sa.bindparam("p_merchants", expanding=True)),
                                             merchants.c.webhook_failures != 0).values(webhook_failures=0)


def _endpoints(svc: DisbursementService, merchant_ids: set[str]) -> dict[str, Any]:
    with svc.engine.connect() as conn:
        found = run(conn, _ENDPOINTS, {"p_merchants": sorted(merchant_ids)}).all()
    return {m.merchant_id: m for m in found}


def _attempt(svc: DisbursementService, row: Any, m: Any, now: datetime) -> tuple[int | None, str]:
    """One signed delivery: (HTTP status or None, error text)."""
    body = row.payload.encode("utf-8")
    status: int | None = None
    error = ""
    started = time.perf_counter()
    try:
        if m is None:
            raise LookupError(f"merchant {row.merchant_id} not found")
        hdrs = headers(active_secrets(m.webhook_secrets, now), row.msg_id, int(now.timestamp()), body)
        status = int(svc.transport(m.webhook_url, hdrs, body))
    except Exception as exc:  # any transport failure is one failed attempt, never a crashed loop
        error = f"{exc.__class__.__name__}: {exc}"[:500]
    svc.metrics.webhook_latency.observe(time.perf_counter() - started)
    svc.metrics.webhook_attempts.inc()
    return status, error


_DELIVERED = (
    sa.update(webhook_deliveries).where(webhook_deliveries.c.id == sa.bindparam("row_id"))
    .values(state="delivered", attempts=sa.bindparam("row_attempts"), last_status=sa.bindparam("row_status"),
            last_error=None, finished_at=sa.bindparam("row_finished"))
)


def _record(conn: sa.Connection, svc: DisbursementService, rows: Sequence[Any],
            outcomes: Sequence[tuple[int | None, str]], now: datetime) -> None:
    s = svc.settings
    delivered: list[dict[str, Any]] = []
    # merchant -> [consecutive failures (None: not read yet), webhook_enabled to write (None: unchanged)]
    endpoint: dict[str, list[Any]] = {}
    for row, (status, error) in zip(rows, outcomes, strict=True):
        state = endpoint.setdefault(row.merchant_id, [None, None])
        if status is not None and 200 <= status < 300:
            delivered.append({"row_id": row.id, "row_attempts": row.attempts + 1, "row_status": status,
                              "row_finished": now})
            state[0] = 0
            continue
        svc.metrics.webhook_failures.inc()
        attempts = row.attempts + 1
        dead = attempts >= s.webhook_max_attempts
        delay = backoff_seconds(attempts, s.webhook_backoff_base_seconds, s.webhook_backoff_cap_seconds,
                                random.random())
        conn.execute(sa.update(webhook_deliveries).where(webhook_deliveries.c.id == row.id).values(
            state="dead" if dead else "pending", attempts=attempts, last_status=status,
            last_error=error or f"HTTP {status}", next_attempt_at=now + timedelta(seconds=delay),
            finished_at=now if dead else None))
        if state[0] is None:
            state[0] = conn.execute(sa.select(merchants.c.webhook_failures).where(
                merchants.c.merchant_id == row.merchant_id)).scalar_one()
        state[0] += 1
        disable = state[0] >= s.webhook_disable_after_failures
        state[1] = not disable
        if dead:
            svc.metrics.webhook_dead.inc()
        if disable:
            log.warning("webhook endpoint of merchant %s disabled after %d failures", row.merchant_id, state[0])
    if delivered:
        run(conn, _DELIVERED, delivered)
    healthy = sorted(m for m, (failures, enabled) in endpoint.items() if failures == 0 and enabled is None)
    if healthy:  # every attempt succeeded: reset the failure count, in one statement
        run(conn, _RESET_FAILURES, {"p_merchants": healthy})
    for merchant_id, (failures, enabled) in endpoint.items():
        if failures == 0 and enabled is None:
            continue
        values: dict[str, Any] = {"webhook_failures": failures}
        if enabled is not None:
            values["webhook_enabled"] = enabled
        conn.execute(sa.update(merchants).where(merchants.c.merchant_id == merchant_id).values(**values))
