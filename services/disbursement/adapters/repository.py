"""SQL helpers shared by the use cases: idempotent inserts, the outbox, journal posting, loan reads."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from schemas.codec import encode, new_event
from services.common.money import Money
from services.disbursement.adapters.orm import (
    control,
    financed_orders,
    journal_entries,
    journal_lines,
    loans,
    merchants,
    outbox,
    webhook_deliveries,
)
from services.disbursement.domain.collections import OpenLoan
from services.disbursement.domain.ledger import JournalEntry, validate_entry
from services.disbursement.domain.loans import OPEN_STATES

# Keys of per-transaction caches in `Connection.info` (set and removed by the service's transaction scope).
TX_MERCHANTS = "floatbridge.disbursement.ensured_merchants"
TX_WEBHOOK_TARGETS = "floatbridge.disbursement.webhook_targets"
# Append-only rows (outbox, webhook deliveries, processed event ids) nothing reads back in the transaction
# that writes them: collected per table and inserted with one executemany each just before the commit.
TX_DEFERRED = "floatbridge.disbursement.deferred_inserts"

# Event types merchants can subscribe to as webhooks.
WEBHOOK_TYPES = frozenset({
    "loan_offer.created", "loan_offer.withdrawn", "loan_offer.expired", "credit_limit.updated",
    "loan.disbursed", "loan.repayment_applied", "loan.repaid", "loan.delinquent", "loan.charged_off",
})


_INSERT_IGNORE: dict[tuple[str, sa.Table], Any] = {}


def _insert_ignore_stmt(dialect: str, table: sa.Table) -> Any:
    # One statement object per (dialect, table), values passed as parameters: SQLAlchemy's compiled cache
    # then serves every call (building `.values(**values)` each time cost more than the SQL itself).
    key = (dialect, table)
    stmt = _INSERT_IGNORE.get(key)
    if stmt is None:
        if dialect == "postgresql":
            stmt = postgresql.insert(table).on_conflict_do_nothing()
        elif dialect == "sqlite":
            stmt = sqlite.insert(table).on_conflict_do_nothing()
        else:  # pragma: no cover - only PostgreSQL and SQLite are supported
            raise RuntimeError(f"unsupported database {dialect}")
        _INSERT_IGNORE[key] = stmt
    return stmt


def insert_ignore(conn: sa.Connection, table: sa.Table, values: dict[str, Any]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING; True when the row was new."""
    return bool(conn.execute(_insert_ignore_stmt(conn.dialect.name, table), values).rowcount)


def insert_ignore_later(conn: sa.Connection, table: sa.Table, values: dict[str, Any]) -> None:
    """insert_ignore at the end of the caller's transaction (now when there is no deferral buffer).
    Only for rows the transaction does not read back and whose insert outcome it does not need."""
    deferred = conn.info.get(TX_DEFERRED)
    if deferred is None:
        insert_ignore(conn, table, values)
    else:
        deferred.setdefault(table, []).append(values)


def flush_deferred(conn: sa.Connection) -> bool:
    """Insert the deferred rows, per table in the order they were added (one executemany per table);
    True when outbox rows were among them."""
    deferred = conn.info.get(TX_DEFERRED)
    if not deferred:
        return False
    dialect = conn.dialect.name
    for table, rows in deferred.items():
        if rows:
            conn.execute(_insert_ignore_stmt(dialect, table), rows)
    wrote_outbox = bool(deferred.get(outbox))
    deferred.clear()
    return wrote_outbox


_WEBHOOK_TARGETS_IN = sa.select(merchants.c.merchant_id, merchants.c.webhook_url, merchants.c.event_types).where(
    merchants.c.merchant_id.in_(sa.bindparam("p_merchants", expanding=True)))


def preload_webhook_targets(conn: sa.Connection, merchant_ids: set[str]) -> None:
    """Fill the transaction's webhook-target cache for these merchants in one query per 500 (a merchant
    not found has no target, as the per-event lookup would find)."""
    targets = conn.info.get(TX_WEBHOOK_TARGETS)
    if targets is None:
        return
    wanted = sorted(m for m in merchant_ids if m not in targets)
    for i in range(0, len(wanted), 500):
        chunk = wanted[i:i + 500]
        found = {r.merchant_id: (r.webhook_url, r.event_types)
                 for r in conn.execute(_WEBHOOK_TARGETS_IN, {"p_merchants": chunk})}
        for mid in chunk:
            targets[mid] = found.get(mid)


# Hot statements built once with bind parameters (building a select per call cost more than running it).
_GET_CONTROL = sa.select(control.c.value).where(control.c.key == sa.bindparam("p_key"))
_SET_CONTROL = sa.update(control).where(control.c.key == sa.bindparam("p_key")).values(value=sa.bindparam("p_value"))
_WEBHOOK_TARGET = sa.select(merchants.c.webhook_url, merchants.c.event_types).where(
    merchants.c.merchant_id == sa.bindparam("p_merchant"))


def get_control(conn: sa.Connection, key: str) -> str | None:
    value = conn.execute(_GET_CONTROL, {"p_key": key}).scalar()
    return None if value is None else str(value)


def set_control(conn: sa.Connection, key: str, value: str) -> None:
    # Update first: the row nearly always exists already (one statement instead of two).
    if conn.execute(_SET_CONTROL, {"p_key": key, "p_value": value}).rowcount:
        return
    if not insert_ignore(conn, control, {"key": key, "value": value}):
        conn.execute(_SET_CONTROL, {"p_key": key, "p_value": value})  # inserted concurrently meanwhile


def money(amount: int, currency: str) -> dict[str, Any]:
    return {"amount": int(amount), "currency": currency}


class Outbox:
    """Writes events in the caller's transaction: a Kafka row and, when subscribed, a webhook delivery."""

    def __init__(self, source: str, topic_prefix: str, created_at: datetime):
        self.source = source
        self.topic_prefix = topic_prefix
        self.created_at = created_at

    def emit(self, conn: sa.Connection, *, topic: str | None, event: dict[str, Any]) -> None:
        payload = encode(event).decode("utf-8")
        if topic is not None:
            insert_ignore_later(conn, outbox, {
                "event_id": event["id"], "topic": self.topic_prefix + topic, "key": event["subject"],
                "payload": payload, "created_at": self.created_at,
            })
        if event["type"] in WEBHOOK_TYPES:
            self._webhook(conn, event, payload)

    def new(self, conn: sa.Connection, *, topic: str | None, etype: str, merchant_id: str, data: dict[str, Any],
            time: datetime, event_id: str) -> dict[str, Any]:
        event = new_event(etype, merchant_id, data, time, self.source, id=event_id)
        self.emit(conn, topic=topic, event=event)
        return event

    def _webhook(self, conn: sa.Connection, event: dict[str, Any], payload: str) -> None:
        # A merchant's webhook target is read once per transaction (nothing in one use case changes it).
        targets = conn.info.get(TX_WEBHOOK_TARGETS)
        subject = event["subject"]
        if targets is not None and subject in targets:
            target = targets[subject]
        else:
            m = conn.execute(_WEBHOOK_TARGET, {"p_merchant": subject}).first()
            target = None if m is None else (m.webhook_url, m.event_types)
            if targets is not None:
                targets[subject] = target
        if target is None or not target[0]:
            return
        types = target[1] or []
        if types and event["type"] not in types:
            return
        insert_ignore_later(conn, webhook_deliveries, {
            "msg_id": event["id"], "merchant_id": event["subject"], "event_type": event["type"], "payload": payload,
            "state": "pending", "attempts": 0, "next_attempt_at": self.created_at, "created_at": self.created_at,
        })


def post_entry(conn: sa.Connection, entry: JournalEntry, merchant_id: str | None, at: datetime) -> bool:
    """Append a validated entry; an entry id already posted is skipped (replays are harmless)."""
    validate_entry(entry)
    if not insert_ignore(conn, journal_entries, {
        "entry_id": entry.entry_id, "kind": entry.kind, "loan_id": entry.loan_id, "merchant_id": merchant_id,
        "reverses": entry.reverses, "created_at": at,
    }):
        return False
    conn.execute(sa.insert(journal_lines), [
        {"entry_id": entry.entry_id, "account": ln.account.value, "side": ln.side.value,
         "amount": ln.amount.amount, "currency": ln.amount.currency}
        for ln in entry.lines
    ])
    return True


def account_balances(conn: sa.Connection) -> dict[tuple[str, str], int]:
    signed = sa.case((journal_lines.c.side == "D", journal_lines.c.amount), else_=-journal_lines.c.amount)
    rows = conn.execute(
        sa.select(journal_lines.c.account, journal_lines.c.currency, sa.func.sum(signed))
        .group_by(journal_lines.c.account, journal_lines.c.currency)
    )
    return {(a, c): int(s) for a, c, s in rows}


def _open_loans_stmt() -> Any:
    expected = (
        sa.select(sa.func.coalesce(sa.func.sum(financed_orders.c.expected), 0))
        .where(financed_orders.c.loan_id == loans.c.loan_id, financed_orders.c.state == "open")
        .scalar_subquery()
    )
    return (
        sa.select(loans.c.loan_id, loans.c.currency, loans.c.principal_due, loans.c.fee_due, loans.c.disbursed_at,
                  expected.label("expected"))
        .where(loans.c.merchant_id == sa.bindparam("p_merchant"),
               loans.c.state.in_([s.value for s in OPEN_STATES]))
        .order_by(loans.c.disbursed_at, loans.c.loan_id)
    )


_OPEN_LOANS = _open_loans_stmt()
_OPEN_LOANS_LOCKED = _OPEN_LOANS.with_for_update(of=loans)


def open_loans(conn: sa.Connection, merchant_id: str, lock: bool = False) -> list[OpenLoan]:
    q = _OPEN_LOANS_LOCKED if lock and conn.dialect.name == "postgresql" else _OPEN_LOANS
    return [
        OpenLoan(r.loan_id, r.disbursed_at, Money(r.principal_due, r.currency), Money(r.fee_due, r.currency),
                 Money(int(r.expected), r.currency))
        for r in conn.execute(q, {"p_merchant": merchant_id})
    ]


def loan_view(row: Any) -> dict[str, Any]:
    """The public representation of a loan (HTTP answers and replays)."""
    from services.common.timeutil import format_rfc3339

    return {
        "loan_id": row.loan_id, "offer_id": row.offer_id, "state": row.state,
        "principal": money(row.principal, row.currency), "fee": money(row.fee, row.currency), "apr": row.apr,
        "due_at": format_rfc3339(row.due_at), "order_ids": list(row.order_ids),
        "remaining": money(row.principal_due + row.fee_due, row.currency),
        "payout_id": row.payout_id, "days_past_due": row.dpd,
    }


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def ids(values: Iterable[Any]) -> list[str]:
    return [str(v) for v in values]
