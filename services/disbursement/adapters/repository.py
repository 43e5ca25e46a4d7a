"""SQL helpers shared by the use cases: idempotent inserts, the outbox, journal posting, loan reads."""

from __future__ import annotations

import json
import operator
import sqlite3
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
    "loan.cancelled",
})


class FastResult:
    """What the callers use of a SQLAlchemy Result, over rows already fetched (namedtuples)."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int = -1) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Any:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise (sa.exc.NoResultFound("No row was found when one was required") if not self._rows
                   else sa.exc.MultipleResultsFound("Multiple rows were found when exactly one was required"))
        return self._rows[0]

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalars(self) -> FastResult:
        return FastResult([r[0] for r in self._rows], self.rowcount)


class _Plan:
    """A statement compiled once for SQLite: its SQL, and where each positional value comes from."""

    __slots__ = ("stmt", "sql", "sources", "expanding", "row", "procs", "is_select", "sql_by_sizes", "values")

    def __init__(self, stmt: Any, sql: str, sources: list[tuple[str | None, Any, Any, bool, str]], row: Any,
                 procs: list[tuple[int, Any]], is_select: bool) -> None:
        self.stmt = stmt  # kept alive: the cache is keyed by its id
        self.sql = sql
        self.sources = sources  # (param key or None, constant value, bind processor, expanding, SQL name)
        self.expanding = any(s[3] for s in sources)
        self.row = row
        self.procs = procs
        self.is_select = is_select
        self.sql_by_sizes: dict[tuple[int, ...], str] = {}
        self.values: Any = None if self.expanding else _extractor(sources)


def _extractor(sources: list[tuple[str | None, Any, Any, bool, str]]) -> Any:
    """params dict -> the positional values, converted by the bind processors (constants converted once)."""
    keyed = [(i, key) for i, (key, _v, _p, _e, _n) in enumerate(sources) if key is not None]
    procs = [(i, proc) for i, (key, _v, proc, _e, _n) in enumerate(sources) if key is not None and proc]
    template = [None if key is not None else (proc(value) if proc else value)
                for key, value, proc, _e, _n in sources]
    if len(keyed) == len(sources) and sources:
        getter = operator.itemgetter(*(key for _i, key in keyed))
        single = len(keyed) == 1

        def from_keys(params: dict[str, Any]) -> Any:
            values = [getter(params)] if single else list(getter(params))
            for i, proc in procs:
                values[i] = proc(values[i])
            return values
        return from_keys

    def with_constants(params: dict[str, Any]) -> Any:
        values = template.copy()
        for i, key in keyed:
            values[i] = params[key]
        for i, proc in procs:
            values[i] = proc(values[i])
        return values
    return with_constants


_PLANS: dict[tuple[int, tuple[str, ...], bool], _Plan | None] = {}
_MAX_PLANS = 1000


def _plan(dialect: Any, stmt: Any, keys: tuple[str, ...], many: bool) -> _Plan | None:
    """Compile `stmt` as SQLAlchemy would for these parameter keys, or None when the statement needs
    something only SQLAlchemy's execution does (Python-side column defaults, escaped or literal-rendered
    parameters): such statements keep going through `Connection.execute`."""
    from collections import namedtuple

    compiled = stmt.compile(dialect=dialect, column_keys=list(keys), for_executemany=many)
    if (compiled.insert_prefetch or compiled.update_prefetch or compiled.escaped_bind_names
            or compiled.literal_execute_params or compiled.positiontup is None or compiled.returning):
        return None
    by_name = {name: bp for bp, name in compiled.bind_names.items()}
    processors = compiled._bind_processors
    sources: list[tuple[str | None, Any, Any, bool, str]] = []
    for name in compiled.positiontup:
        bp = by_name[name]
        proc = processors.get(name)
        if isinstance(proc, tuple):
            return None
        if bp.key in keys:
            sources.append((bp.key, None, proc, bp.expanding, name))
        elif name in keys:
            sources.append((name, None, proc, bp.expanding, name))
        elif bp.required and bp.value is None and bp.callable is None:
            return None  # SQLAlchemy would raise: let it
        else:
            sources.append((None, bp.effective_value, proc, bp.expanding, name))
    sql = compiled.string
    for _key, _value, _proc, expanding, name in sources:
        if expanding and f"__[POSTCOMPILE_{name}]" not in sql:
            return None
    row: Any = None
    procs: list[tuple[int, Any]] = []
    is_select = bool(getattr(stmt, "is_select", False))
    if is_select:
        if not compiled._result_columns:
            return None
        row = namedtuple("Row", [entry.keyname for entry in compiled._result_columns],  # type: ignore[misc,no-redef]
                         rename=True)
        procs = [(i, p) for i, entry in enumerate(compiled._result_columns)
                 if (p := entry.type._cached_result_processor(dialect, None)) is not None]
    return _Plan(stmt, sql, sources, row, procs, is_select)


def _expand(plan: _Plan, compiled_names: list[str], sizes: tuple[int, ...]) -> str:
    sql = plan.sql_by_sizes.get(sizes)
    if sql is None:
        sql = plan.sql
        for name, n in zip(compiled_names, sizes, strict=True):
            sql = sql.replace(f"__[POSTCOMPILE_{name}]", ", ".join("?" * n))
        plan.sql_by_sizes[sizes] = sql
    return sql


def run(conn: sa.Connection, stmt: Any, params: dict[str, Any] | list[dict[str, Any]] | None = None) -> Any:
    """`conn.execute(stmt, params)` for statements built once at import. On SQLite (the embedded engine's
    database) the statement is compiled once per parameter-key set and run straight on the driver
    connection of the same transaction, without SQLAlchemy's per-execution work (cache key, parameter
    construction, result metadata), which cost several times the SQL itself; the values are converted by
    the same type processors, so the rows written and read are the same. PostgreSQL, and any statement
    the plan cannot express, go through `conn.execute` unchanged."""
    dialect = conn.dialect
    if dialect.name != "sqlite":
        return conn.execute(stmt, params)
    rows: list[dict[str, Any]] | None = params if isinstance(params, list) else None
    many = rows is not None
    first: dict[str, Any] = (rows[0] if rows else {}) if rows is not None else (params or {})  # type: ignore[assignment]
    keys = tuple(sorted(first))
    cache_key = (id(stmt), keys, many)
    if cache_key in _PLANS:
        plan = _PLANS[cache_key]
        if plan is not None and plan.stmt is not stmt:  # another statement now has that id
            plan = _PLANS[cache_key] = _plan(dialect, stmt, keys, many)
    else:
        plan = _plan(dialect, stmt, keys, many) if len(_PLANS) < _MAX_PLANS else None
        _PLANS[cache_key] = plan
    if plan is None or (rows is not None and (plan.expanding or not rows)):
        return conn.execute(stmt, params)
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    sources = plan.sources
    try:
        if rows is not None:
            extract = plan.values
            cur = dbapi.executemany(plan.sql, [extract(p) for p in rows])
            return FastResult([], cur.rowcount)
        values: list[Any] = []
        sql = plan.sql
        if plan.expanding:
            names: list[str] = []
            sizes: list[int] = []
            for key, value, proc, exp, name in sources:
                v = first[key] if key is not None else value
                if exp:
                    items = list(v)
                    if not items:
                        return conn.execute(stmt, params)  # SQLAlchemy renders an empty IN specially
                    values.extend(proc(x) for x in items) if proc else values.extend(items)
                    names.append(name)
                    sizes.append(len(items))
                else:
                    values.append(proc(v) if proc else v)
            sql = _expand(plan, names, tuple(sizes))
        else:
            values = plan.values(first)
        cur = dbapi.execute(sql, values)
        if not plan.is_select:
            return FastResult([], cur.rowcount)
        raw = cur.fetchall()
    except sqlite3.Error as exc:
        raise sa.exc.DBAPIError.instance(plan.sql, params, exc, sqlite3.Error, dialect=dialect) from exc
    make, procs = plan.row._make, plan.procs
    if procs:
        out = []
        for r in raw:
            lst = list(r)
            for i, proc in procs:
                lst[i] = proc(lst[i])
            out.append(make(lst))
        return FastResult(out)
    return FastResult([make(r) for r in raw])


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
    return bool(run(conn, _insert_ignore_stmt(conn.dialect.name, table), values).rowcount)


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
            run(conn, _insert_ignore_stmt(dialect, table), rows)
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
                 for r in run(conn, _WEBHOOK_TARGETS_IN, {"p_merchants": chunk})}
        for mid in chunk:
            targets[mid] = found.get(mid)


# Hot statements built once with bind parameters (building a select per call cost more than running it).
_GET_CONTROL = sa.select(control.c.value).where(control.c.key == sa.bindparam("p_key"))
_SET_CONTROL = sa.update(control).where(control.c.key == sa.bindparam("p_key")).values(value=sa.bindparam("p_value"))
_WEBHOOK_TARGET = sa.select(merchants.c.webhook_url, merchants.c.event_types).where(
    merchants.c.merchant_id == sa.bindparam("p_merchant"))


def get_control(conn: sa.Connection, key: str) -> str | None:
    value = run(conn, _GET_CONTROL, {"p_key": key}).scalar()
    return None if value is None else str(value)


def set_control(conn: sa.Connection, key: str, value: str) -> None:
    # Update first: the row nearly always exists already (one statement instead of two).
    if run(conn, _SET_CONTROL, {"p_key": key, "p_value": value}).rowcount:
        return
    if not insert_ignore(conn, control, {"key": key, "value": value}):
        run(conn, _SET_CONTROL, {"p_key": key, "p_value": value})  # inserted concurrently meanwhile


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
            m = run(conn, _WEBHOOK_TARGET, {"p_merchant": subject}).first()
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


_INSERT_LINES = sa.insert(journal_lines)


def post_entry(conn: sa.Connection, entry: JournalEntry, merchant_id: str | None, at: datetime) -> bool:
    """Append a validated entry; an entry id already posted is skipped (replays are harmless)."""
    validate_entry(entry)
    if not insert_ignore(conn, journal_entries, {
        "entry_id": entry.entry_id, "kind": entry.kind, "loan_id": entry.loan_id, "merchant_id": merchant_id,
        "reverses": entry.reverses, "created_at": at,
    }):
        return False
    run(conn, _INSERT_LINES, [
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
        for r in run(conn, q, {"p_merchant": merchant_id})
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
