"""The disbursement application core: one method per use case, each one database transaction.

Kafka consumers, the HTTP API and the embedded engine all call these methods; none of them
touches the tables directly.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import logging
import threading
import time as _time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa

from schemas import topics
from schemas.codec import deterministic_id
from services.common.money import Money
from services.common.timeutil import format_rfc3339, parse_rfc3339
from services.disbursement.adapters import repository as repo
from services.disbursement.adapters.metrics import DisbursementMetrics
from services.disbursement.adapters.orm import (
    audit_log,
    closed_orders,
    credit_limits,
    financed_orders,
    idempotency_keys,
    journal_entries,
    journal_lines,
    loans,
    merchant_refunds,
    merchants,
    offers,
    order_amounts,
    payouts,
    processed_events,
)
from services.disbursement.domain import aging, ledger
from services.disbursement.domain import collections as coll
from services.disbursement.domain.loans import OPEN_STATES, AllocationOrder, LoanState, transition
from services.disbursement.domain.offers import AcceptanceFacts, OfferState, refusal
from services.disbursement.domain.webhook_targets import TargetRefused, url_problem
from services.disbursement.domain.webhooks_signing import (
    BadSecret,
    active_secrets,
    new_secret,
    rotated,
    secret_bytes,
)
from services.disbursement.ports import (
    Clock,
    PayoutFailed,
    PayoutRail,
    PayoutRejected,
    PayoutRequest,
    Publisher,
    WebhookTransport,
)
from services.disbursement.settings import DisbursementSettings

log = logging.getLogger(__name__)
CLOCK_KEY = "event_clock"
_MAX_ID = 128  # offer ids are 1-128 characters (schemas: Id; offers.offer_id)
KILL_KEY = "kill_switch"


# Hot statements built once with bind parameters: building a select per call cost more than running it.
_MERCHANT = sa.select(merchants).where(merchants.c.merchant_id == sa.bindparam("p_merchant"))
_LOAN = sa.select(loans).where(loans.c.loan_id == sa.bindparam("p_loan"))
# Whether a loan's acceptance entry booked the merchant payable (every loan accepted since the payable exists);
# one accepted before only credited cash at acceptance, so its payout must not move the cash again.
_BOOKED_PAYABLE = sa.select(journal_lines.c.id).where(
    journal_lines.c.entry_id == sa.bindparam("p_entry"),
    journal_lines.c.account == ledger.Account.MERCHANT_PAYABLE.value).limit(1)
_ENTRY_LINES = sa.select(journal_lines.c.account, journal_lines.c.side, journal_lines.c.amount,
                         journal_lines.c.currency).where(journal_lines.c.entry_id == sa.bindparam("p_entry")).order_by(
    journal_lines.c.id)
_LATEST_LIMIT = (sa.select(credit_limits).where(credit_limits.c.merchant_id == sa.bindparam("p_merchant"))
                 .order_by(credit_limits.c.event_time.desc(), credit_limits.c.id.desc()).limit(1))
_ACCEPTED_SINCE = sa.select(sa.func.coalesce(sa.func.sum(loans.c.principal), 0)).where(
    loans.c.merchant_id == sa.bindparam("p_merchant"), loans.c.limit_id == sa.bindparam("p_limit"),
    loans.c.state != LoanState.CANCELLED.value)  # a cancelled loan lent nothing
_BAD_LOANS = sa.select(sa.func.count()).select_from(loans).where(
    loans.c.merchant_id == sa.bindparam("p_merchant"),
    loans.c.state.in_([LoanState.DELINQUENT.value, LoanState.CHARGED_OFF.value]))
# Loans still owed (accepted ones included: their payout may be in flight), for the acceptance re-checks.
_OWED_LOANS = sa.select(loans.c.currency, loans.c.principal_due, loans.c.fee_due, loans.c.due_at).where(
    loans.c.merchant_id == sa.bindparam("p_merchant"),
    loans.c.state.in_([LoanState.ACCEPTED.value, *(s.value for s in OPEN_STATES)]))
_OFFER_TAKEN = sa.select(sa.func.count()).select_from(loans).where(loans.c.offer_id == sa.bindparam("p_offer"))
_STORED = sa.select(idempotency_keys).where(idempotency_keys.c.merchant_id == sa.bindparam("p_merchant"),
                                            idempotency_keys.c.key == sa.bindparam("p_key"))
_FINANCED_OPEN = (sa.select(financed_orders.c.order_id).where(
    financed_orders.c.merchant_id == sa.bindparam("p_merchant"), financed_orders.c.state == "open",
    financed_orders.c.loan_id.in_(sa.bindparam("p_loans", expanding=True))).order_by(financed_orders.c.order_id)
    .limit(1000))
_CLOSED_AMONG = sa.select(closed_orders.c.order_id, closed_orders.c.change, closed_orders.c.closed_at).where(
    closed_orders.c.merchant_id == sa.bindparam("p_merchant"),
    closed_orders.c.order_id.in_(sa.bindparam("p_orders", expanding=True)))
_ORDER_AMOUNTS_OF = sa.select(order_amounts.c.order_id, order_amounts.c.amount).where(
    order_amounts.c.merchant_id == sa.bindparam("p_merchant"), order_amounts.c.currency == sa.bindparam("p_currency"),
    order_amounts.c.order_id.in_(sa.bindparam("p_orders", expanding=True)))
_PRUNE_ORDER_AMOUNTS = sa.delete(order_amounts).where(
    order_amounts.c.paid_at < sa.bindparam("p_before", type_=order_amounts.c.paid_at.type))
# An offer names receivables younger than 60 days (DESIGN: eligible receivables); amounts are kept longer than that.
_ORDER_AMOUNTS_RETENTION = timedelta(days=90)
_PRUNE_CLOSED = sa.delete(closed_orders).where(
    closed_orders.c.closed_at < sa.bindparam("p_before", type_=closed_orders.c.closed_at.type))
_FINANCED_ANY = sa.select(financed_orders.c.loan_id, financed_orders.c.order_id, financed_orders.c.expected,
                          financed_orders.c.state).where(
    financed_orders.c.merchant_id == sa.bindparam("p_merchant"),
    financed_orders.c.order_id.in_(sa.bindparam("p_orders", expanding=True)))
_FINANCED_IN = sa.select(financed_orders.c.loan_id, financed_orders.c.order_id, financed_orders.c.expected).where(
    financed_orders.c.merchant_id == sa.bindparam("p_merchant"),
    financed_orders.c.order_id.in_(sa.bindparam("p_orders", expanding=True)), financed_orders.c.state == "open")
_SETTLE_FINANCED = sa.update(financed_orders).where(
    financed_orders.c.merchant_id == sa.bindparam("p_merchant"),
    financed_orders.c.order_id.in_(sa.bindparam("p_orders", expanding=True)),
    financed_orders.c.state == "open").values(state="settled")
_INSERT_LOAN = sa.insert(loans)
_SET_DPD = sa.update(loans).where(loans.c.loan_id == sa.bindparam("p_loan")).values(dpd=sa.bindparam("p_dpd"))
_BY_API_KEY = sa.select(merchants.c.merchant_id, merchants.c.api_key_hash).where(
    merchants.c.api_key_hash == sa.bindparam("p_hash"))
_SUPERSEDE_OLDER = sa.update(offers).where(
    offers.c.merchant_id == sa.bindparam("p_merchant"), offers.c.state == OfferState.OPEN.value,
    offers.c.offer_id != sa.bindparam("p_offer"),
    offers.c.created_at <= sa.bindparam("p_at", type_=offers.c.created_at.type)).values(
    state=OfferState.SUPERSEDED.value)
_NEWER_OPEN = sa.select(offers.c.offer_id).where(
    offers.c.merchant_id == sa.bindparam("p_merchant"), offers.c.state == OfferState.OPEN.value,
    offers.c.offer_id != sa.bindparam("p_offer"),
    offers.c.created_at > sa.bindparam("p_at", type_=offers.c.created_at.type)).limit(1)
_WITHDRAW_OPEN = sa.update(offers).where(offers.c.offer_id == sa.bindparam("p_offer"),
                                         offers.c.merchant_id == sa.bindparam("p_merchant"),
                                         offers.c.state == OfferState.OPEN.value).values(
    state=OfferState.WITHDRAWN.value)
_OFFER = sa.select(offers).where(offers.c.offer_id == sa.bindparam("p_offer"))
_OFFER_OWNER = sa.select(offers.c.merchant_id).where(offers.c.offer_id == sa.bindparam("p_offer"))
_OPEN_OFFER_OF = sa.select(offers.c.offer_id, offers.c.order_ids, offers.c.data).where(
    offers.c.merchant_id == sa.bindparam("p_merchant"), offers.c.state == OfferState.OPEN.value)
_SET_OFFER_DATA = sa.update(offers).where(offers.c.offer_id == sa.bindparam("p_offer")).values(
    data=sa.bindparam("p_data", type_=offers.c.data.type))
_ACCEPT_OFFER = sa.update(offers).where(offers.c.offer_id == sa.bindparam("p_offer")).values(
    state=OfferState.ACCEPTED.value)
_INSERT_IDEMPOTENCY = sa.insert(idempotency_keys)
_STORED_ANSWER = sa.select(idempotency_keys.c.status_code, idempotency_keys.c.response).where(
    idempotency_keys.c.merchant_id == sa.bindparam("p_merchant"), idempotency_keys.c.key == sa.bindparam("p_key"))
_INSERT_FINANCED = sa.insert(financed_orders)
_INSERT_PAYOUT = sa.insert(payouts)
_LOAN_DISBURSED = sa.update(loans).where(loans.c.loan_id == sa.bindparam("p_loan")).values(
    state=LoanState.DISBURSED.value, payout_id=sa.bindparam("p_payout", type_=loans.c.payout_id.type),
    disbursed_at=sa.bindparam("p_at", type_=loans.c.disbursed_at.type))
# A loan cancelled because the rail refused its payout for good: a retry of its acceptance gets that final answer.
_ANSWER_CANCELLED = sa.update(idempotency_keys).where(idempotency_keys.c.offer_id == sa.bindparam("p_offer"),
                                                      idempotency_keys.c.status_code == 202).values(
    status_code=409, response=sa.bindparam("p_response", type_=idempotency_keys.c.response.type))
_PAYOUT_ATTEMPT = sa.update(loans).where(loans.c.loan_id == sa.bindparam("p_loan"),
                                         loans.c.state == LoanState.ACCEPTED.value).values(
    payout_attempts=sa.bindparam("p_attempts"),
    payout_parked_at=sa.bindparam("p_parked", type_=loans.c.payout_parked_at.type))
_LOAN_CANCELLED = sa.update(loans).where(loans.c.loan_id == sa.bindparam("p_loan"),
                                         loans.c.state == LoanState.ACCEPTED.value).values(
    state=LoanState.CANCELLED.value, principal_due=0, fee_due=0,
    closed_at=sa.bindparam("p_at", type_=loans.c.closed_at.type))
_RELEASE_FINANCED = sa.update(financed_orders).where(
    financed_orders.c.loan_id == sa.bindparam("p_loan"), financed_orders.c.state == "open").values(state="cancelled")
_ANSWER_DISBURSED = sa.update(idempotency_keys).where(idempotency_keys.c.offer_id == sa.bindparam("p_offer"),
                                                      idempotency_keys.c.status_code == 202).values(
    status_code=200, response=sa.bindparam("p_response", type_=idempotency_keys.c.response.type))
_LOAN_REPAID_PART = sa.update(loans).where(loans.c.loan_id == sa.bindparam("p_loan")).values(
    principal_due=sa.bindparam("p_principal_due", type_=loans.c.principal_due.type),
    fee_due=sa.bindparam("p_fee_due", type_=loans.c.fee_due.type),
    state=sa.bindparam("p_state", type_=loans.c.state.type),
    closed_at=sa.bindparam("p_closed_at", type_=loans.c.closed_at.type))
_FINANCED_ORDER = sa.select(financed_orders).where(
    financed_orders.c.merchant_id == sa.bindparam("p_merchant"), financed_orders.c.order_id == sa.bindparam("p_order"),
    financed_orders.c.state == "open")
_SET_FINANCED = sa.update(financed_orders).where(
    financed_orders.c.order_id == sa.bindparam("p_order"), financed_orders.c.loan_id == sa.bindparam("p_loan")).values(
    expected=sa.bindparam("p_expected", type_=financed_orders.c.expected.type),
    state=sa.bindparam("p_state", type_=financed_orders.c.state.type))
# The amount counted for a refund or chargeback reference marker (see `_reference_increase`; migration 0012).
_REFERENCE_AMOUNT = sa.select(processed_events.c.amount).where(processed_events.c.event_id == sa.bindparam("p_key"))
_RAISE_REFERENCE_AMOUNT = sa.update(processed_events).where(
    processed_events.c.event_id == sa.bindparam("p_key"),
    processed_events.c.amount == sa.bindparam("p_old", type_=processed_events.c.amount.type)).values(
    amount=sa.bindparam("p_new", type_=processed_events.c.amount.type))
_INSTRUCTION_STATE = sa.select(merchants.c.currency, merchants.c.last_instruction).where(
    merchants.c.merchant_id == sa.bindparam("p_merchant"))
# merchants.last_instruction keeps the published data plus its time under this key (never a data field).
_INSTRUCTION_TIME = "_time"
_SET_INSTRUCTION = sa.update(merchants).where(merchants.c.merchant_id == sa.bindparam("p_merchant")).values(
    last_instruction=sa.bindparam("p_instruction"))

_KEY_HOLDER = sa.select(merchants.c.merchant_id).where(merchants.c.api_key_hash == sa.bindparam("p_hash"))
_UPDATE_MERCHANT = sa.update(merchants).where(merchants.c.merchant_id == sa.bindparam("p_merchant"))
_MERCHANT_STATUS_AT = sa.select(merchants.c.currency, merchants.c.status_at).where(
    merchants.c.merchant_id == sa.bindparam("p_merchant"))
_OVERDUE = sa.select(loans).where(loans.c.state.in_([s.value for s in OPEN_STATES]),
                                  loans.c.due_at < sa.bindparam("p_now", type_=loans.c.due_at.type))
_OVERDUE_LOCKED = _OVERDUE.with_for_update()
# Open offers past their expiry, found through ix_offers_state_expires_at (migration 0005) instead of a scan of
# every offer ever made. Their order is stated, not left to the plan: on SQLite, rowid order, which is the order
# the offers were inserted (offers are never deleted or replaced, so rowids only grow) and exactly the order the
# full-table scan returned before the index existed, so loan_offer.expired events are written as they were.
# PostgreSQL's scan returned heap order, which is no defined order; it takes creation time, then offer id.
_EXPIRING = sa.select(offers.c.offer_id, offers.c.merchant_id).where(
    offers.c.state == OfferState.OPEN.value, offers.c.expires_at <= sa.bindparam("p_now", type_=offers.c.expires_at.type))
_EXPIRING_SQLITE = _EXPIRING.order_by(sa.literal_column("offers.rowid"))
_EXPIRING_PG = _EXPIRING.order_by(offers.c.created_at, offers.c.offer_id)
# Only while still open: an acceptance may have committed since the expiring offers were read (PostgreSQL,
# READ COMMITTED), and an accepted offer must never turn expired nor be announced as such.
_EXPIRE_OFFER = sa.update(offers).where(offers.c.offer_id == sa.bindparam("p_offer"),
                                        offers.c.state == OfferState.OPEN.value).values(
    state=OfferState.EXPIRED.value)
_CHARGE_OFF = sa.update(loans).where(loans.c.loan_id == sa.bindparam("p_loan")).values(
    state=LoanState.CHARGED_OFF.value, dpd=sa.bindparam("p_dpd"), principal_due=0, fee_due=0,
    closed_at=sa.bindparam("p_at", type_=loans.c.closed_at.type))
_SET_DELINQUENT = sa.update(loans).where(loans.c.loan_id == sa.bindparam("p_loan")).values(
    state=LoanState.DELINQUENT.value, dpd=sa.bindparam("p_dpd"), bucket=sa.bindparam("p_bucket"))


# Per charged-off loan of a merchant: the loss still on the books (written off minus recovered), oldest first.
_LOSS = sa.case((journal_lines.c.side == "D", journal_lines.c.amount), else_=-journal_lines.c.amount)
_UNRECOVERED = (
    sa.select(loans.c.loan_id, loans.c.disbursed_at, loans.c.closed_at, sa.func.sum(_LOSS).label("loss"))
    .select_from(loans.join(journal_entries, journal_entries.c.loan_id == loans.c.loan_id)
                 .join(journal_lines, journal_lines.c.entry_id == journal_entries.c.entry_id))
    .where(loans.c.merchant_id == sa.bindparam("p_merchant"), loans.c.state == LoanState.CHARGED_OFF.value,
           journal_lines.c.account == ledger.Account.CHARGE_OFF_LOSS.value,
           journal_lines.c.currency == sa.bindparam("p_currency"))
    .group_by(loans.c.loan_id, loans.c.disbursed_at, loans.c.closed_at)
    .having(sa.func.sum(_LOSS) > 0)
    .order_by(loans.c.disbursed_at, loans.c.loan_id))
# The latest journal entry of a loan: a loan is repaid no earlier than its last booking (payout, earlier repayments).
_LOAN_LAST_ENTRY = sa.select(sa.func.max(journal_entries.c.created_at)).where(
    journal_entries.c.loan_id == sa.bindparam("p_loan"))
_PROCESSED_IN = sa.select(processed_events.c.event_id).where(
    processed_events.c.event_id.in_(sa.bindparam("p_ids", expanding=True)))
# Connection.info key: in a SQLite batch, the event ids already processed (read once, then kept up to date).
TX_PROCESSED = "floatbridge.disbursement.processed_ids"


class ApiKeyInUse(ValueError):
    """The API key already identifies another merchant (keys are unique: they name the caller)."""


class EventRejected(ValueError):
    """An event this service cannot apply (missing or malformed field)."""


@dataclass(frozen=True, slots=True)
class AcceptOffer:
    offer_id: str
    merchant_id: str
    idempotency_key: str
    now: datetime


@dataclass(frozen=True, slots=True)
class AcceptResult:
    status_code: int  # 200 disbursed, 202 accepted (payout pending), 404, 409, 422
    body: dict[str, Any]
    replayed: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code in (200, 202)

    @property
    def code(self) -> str | None:
        err = self.body.get("error")
        return err.get("code") if isinstance(err, dict) else None


def _error(status: int, code: str, message: str) -> AcceptResult:
    return AcceptResult(status, {"error": {"code": code, "message": message}})


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def loan_id_for(offer_id: str) -> str:
    # Derived from the offer: whoever retries, the same offer can only ever name the same loan.
    return "ln_" + uuid.uuid5(uuid.NAMESPACE_URL, "floatbridge:loan:" + offer_id).hex[:24]


@dataclass
class DisbursementService:
    engine: sa.Engine
    settings: DisbursementSettings
    rail: PayoutRail
    transport: WebhookTransport
    clock: Clock
    metrics: DisbursementMetrics
    publisher: Publisher | None = None
    auto_relay: bool = False
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _relaying: bool = False
    _outbox_written: bool = True  # outbox rows may be waiting (True at start: rows left by an earlier run)
    # Merchants known to exist in committed data (merchants are never deleted): their `_ensure_merchant`
    # insert would be a no-op, so it is skipped. Filled only after a commit, never from a rolled-back one.
    _known_merchants: set[str] = field(default_factory=set)
    _pruned_at: datetime | None = None  # event time of the last closed_orders pruning (at most one an hour)

    # ----------------------------------------------------------------- plumbing
    @contextlib.contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        # SQLite (embedded mode) allows one writer: serialise in-process instead of failing with "locked".
        lock = self._lock if self.engine.dialect.name == "sqlite" else contextlib.nullcontext()
        with lock:
            with self.engine.begin() as conn:
                ensured: set[str] = set()
                conn.info[repo.TX_MERCHANTS] = ensured
                conn.info[repo.TX_WEBHOOK_TARGETS] = {}
                conn.info[repo.TX_DEFERRED] = {}
                try:
                    yield conn
                    if repo.flush_deferred(conn):  # still inside the transaction: committed with everything else
                        self._outbox_written = True
                finally:
                    conn.info.pop(repo.TX_MERCHANTS, None)
                    conn.info.pop(repo.TX_WEBHOOK_TARGETS, None)
                    conn.info.pop(repo.TX_DEFERRED, None)
                    conn.info.pop(TX_PROCESSED, None)
            self._known_merchants.update(ensured)

    @property
    def _pg(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def _outbox(self) -> repo.Outbox:
        return repo.Outbox(self.settings.source, self.settings.topic_prefix, self.clock())

    def _audit(self, conn: sa.Connection, actor: str, action: str, merchant_id: str | None, ref: str | None,
               outcome: str, detail: dict[str, Any] | None = None) -> None:
        """One row of the append-only audit trail, written with the caller's transaction (never a secret)."""
        repo.insert_ignore_later(conn, audit_log, {
            "at": self.clock(), "actor": _fit(actor, 160), "action": action, "merchant_id": merchant_id,
            "ref": None if ref is None else _fit(ref, 160), "outcome": outcome[:64], "detail": detail or {}})

    def audit_trail(self, merchant_id: str | None = None) -> list[dict[str, Any]]:
        """The audit trail in the order it was written (one merchant's, or all of it)."""
        stmt = sa.select(audit_log).order_by(audit_log.c.id)
        if merchant_id is not None:
            stmt = stmt.where(audit_log.c.merchant_id == merchant_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt).all()]

    def _after_commit(self) -> None:
        # SQLite (one process): nothing to relay unless a transaction of this service wrote outbox rows
        # since the last relay began.
        if self.auto_relay and self.publisher is not None and (self._pg or self._outbox_written):
            self.relay_outbox()

    # ----------------------------------------------------------------- merchants
    def register_merchant(self, merchant_id: str, webhook_url: str | None = None, api_key: str | None = None,
                          webhook_secret: str | None = None, currency: str | None = None,
                          event_types: tuple[str, ...] = ()) -> str:
        """Create or update a merchant; returns the current webhook secret (generated when not given).

        Re-registering a merchant with another secret (or none: a new one is drawn) is a rotation: the
        secrets signing until now keep signing for `webhook_secret_overlap_seconds` of the service clock,
        so the merchant's receiver verifies every delivery while it switches to the new secret."""
        if not merchant_id:
            raise ValueError("merchant_id must not be empty")
        bad = set(event_types) - repo.WEBHOOK_TYPES
        if bad:
            raise ValueError(f"unknown webhook event types: {', '.join(sorted(bad))}")
        if api_key is not None and len(api_key) < 16:
            raise ValueError("an API key must be at least 16 characters")
        if webhook_url is not None:
            problem = url_problem(webhook_url, self.settings.webhook_allow_private_targets)
            if problem is not None:
                raise TargetRefused(f"webhook URL refused: {problem}")
        secret = webhook_secret or new_secret()
        _check_secret(secret)  # reject a malformed or guessable secret now, not at the first delivery
        values: dict[str, Any] = {"webhook_url": webhook_url, "webhook_secrets": [secret],
                                  "event_types": list(event_types), "webhook_enabled": True, "webhook_failures": 0}
        if api_key is not None:
            values["api_key_hash"] = hash_api_key(api_key)
        if currency is not None:
            values["currency"] = currency
        with self._tx() as conn:
            if api_key is not None:
                self._refuse_key_of_another(conn, merchant_id, values["api_key_hash"])
            created = repo.insert_ignore(conn, merchants, {"merchant_id": merchant_id, "status": "active", **values})
            if not created:
                current = self._merchant(conn, merchant_id, lock=True).webhook_secrets
                values["webhook_secrets"] = rotated(current, secret, self.clock(), self._secret_overlap)
                conn.execute(sa.update(merchants).where(merchants.c.merchant_id == merchant_id).values(**values))
            self._audit(conn, "operator", "merchant_registered" if created else "merchant_updated", merchant_id, None,
                        "ok", {"webhook_host": urlsplit(webhook_url).hostname if webhook_url else None,
                               "event_types": sorted(event_types), "api_key_set": api_key is not None,
                               "secret_given": webhook_secret is not None})
            conn.info.get(repo.TX_WEBHOOK_TARGETS, {}).pop(merchant_id, None)
            conn.info.get(repo.TX_MERCHANTS, set()).add(merchant_id)
        return secret

    @property
    def _secret_overlap(self) -> timedelta:
        return timedelta(seconds=self.settings.webhook_secret_overlap_seconds)

    def rotate_secret(self, merchant_id: str, new: str | None = None, drop_previous: bool = False) -> str:
        """Make a new secret current; the previous ones keep signing for the configured overlap (both sign),
        or stop at once with `drop_previous`."""
        secret = new or new_secret()
        _check_secret(secret)
        with self._tx() as conn:
            current = self._merchant(conn, merchant_id, lock=True).webhook_secrets or []
            overlap = timedelta(0) if drop_previous else self._secret_overlap
            conn.execute(sa.update(merchants).where(merchants.c.merchant_id == merchant_id)
                         .values(webhook_secrets=rotated(current, secret, self.clock(), overlap)))
            self._audit(conn, "operator", "webhook_secret_rotated", merchant_id, None, "ok",
                        {"drop_previous": drop_previous})
        return secret

    @staticmethod
    def _refuse_key_of_another(conn: sa.Connection, merchant_id: str, key_hash: str) -> None:
        # Checked before the insert: ON CONFLICT DO NOTHING would otherwise swallow the clash silently.
        holder = repo.run(conn, _KEY_HOLDER, {"p_hash": key_hash}).scalar()
        if holder is not None and holder != merchant_id:
            raise ApiKeyInUse("this API key is already assigned to another merchant")

    def set_api_key(self, merchant_id: str, api_key: str) -> None:
        if len(api_key) < 16:
            raise ValueError("an API key must be at least 16 characters")
        with self._tx() as conn:
            self._merchant(conn, merchant_id)
            self._refuse_key_of_another(conn, merchant_id, hash_api_key(api_key))
            conn.execute(sa.update(merchants).where(merchants.c.merchant_id == merchant_id)
                         .values(api_key_hash=hash_api_key(api_key)))
            self._audit(conn, "operator", "api_key_set", merchant_id, None, "ok")

    def list_merchants(self) -> list[dict[str, Any]]:
        now = self.clock()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(merchants).order_by(merchants.c.merchant_id)).all()
        return [{
            "merchant_id": r.merchant_id, "currency": r.currency, "status": r.status, "webhook_url": r.webhook_url,
            "active_secrets": len(active_secrets(r.webhook_secrets, now)), "event_types": list(r.event_types or []),
            "webhook_enabled": r.webhook_enabled, "has_api_key": bool(r.api_key_hash),
        } for r in rows]

    def authenticate(self, api_key: str) -> str | None:
        """The merchant owning `api_key`, comparing hashes in constant time."""
        if len(api_key) < 16:  # no key that short is ever stored: nothing to look up
            return None
        digest = hash_api_key(api_key)
        with self.engine.connect() as conn:
            row = repo.run(conn, _BY_API_KEY, {"p_hash": digest}).first()
        if row is None or not hmac.compare_digest(str(row.api_key_hash), digest):
            return None
        return str(row.merchant_id)

    def set_kill_switch(self, on: bool) -> None:
        with self._tx() as conn:
            repo.set_control(conn, KILL_KEY, "1" if on else "0")
            self._audit(conn, "operator", "kill_switch", None, None, "on" if on else "off")

    def kill_switch(self, conn: sa.Connection) -> bool:
        return self.settings.kill_switch or repo.get_control(conn, KILL_KEY) == "1"

    def _merchant(self, conn: sa.Connection, merchant_id: str, lock: bool = False) -> Any:
        stmt = _MERCHANT.with_for_update() if lock and self._pg else _MERCHANT
        row = repo.run(conn, stmt, {"p_merchant": merchant_id}).first()
        if row is None:
            raise KeyError(f"unknown merchant {merchant_id!r}")
        return row

    # ----------------------------------------------------------------- reads
    def get_loan(self, merchant_id: str, loan_id: str) -> dict[str, Any] | None:
        if not _storable(loan_id) or not _storable(merchant_id):
            return None  # no stored id holds NUL or a lone surrogate (PostgreSQL cannot even be asked)
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(loans).where(loans.c.loan_id == loan_id,
                                                      loans.c.merchant_id == merchant_id)).first()
        return None if row is None else repo.loan_view(row)

    def get_offer(self, merchant_id: str, offer_id: str) -> dict[str, Any] | None:
        if not _storable(offer_id) or not _storable(merchant_id):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(offers).where(offers.c.offer_id == offer_id,
                                                       offers.c.merchant_id == merchant_id)).first()
        if row is None:
            return None
        return {
            "offer_id": row.offer_id, "state": row.state, "amount": repo.money(row.amount, row.currency),
            "fee": repo.money(row.fee, row.currency), "apr": row.apr, "due_at": format_rfc3339(row.due_at),
            "expires_at": format_rfc3339(row.expires_at), "order_ids": list(row.order_ids),
            "reasons": row.data.get("reasons", []),
        }

    def balances(self) -> dict[tuple[str, str], int]:
        """Ledger balances (debits minus credits) per (account, currency)."""
        with self.engine.connect() as conn:
            return repo.account_balances(conn)

    def event_clock(self) -> datetime | None:
        with self.engine.connect() as conn:
            value = repo.get_control(conn, CLOCK_KEY)
        return None if value is None else parse_rfc3339(value)

    # ----------------------------------------------------------------- events in
    def handle(self, event: dict[str, Any]) -> None:
        """Apply one consumed event exactly once (dedupe by event id in the same transaction)."""
        with self._tx() as conn:
            etype = self._apply(conn, event)
        if etype is not None:
            self.metrics.events.labels(etype).inc()
        self._after_commit()

    def handle_many(self, events: list[dict[str, Any]]) -> None:
        """Apply consumed events in order in one transaction, each exactly once: the same effects as
        handle() on each in turn, for a fraction of the commits. If any event fails, nothing of the
        batch is kept and the events are applied one by one, so the good ones before it commit and the
        failure is raised exactly as handle() raises it."""
        if not events:
            return
        try:
            with self._tx() as conn:
                latest: list[datetime] = []  # the event clock only moves forward: advanced once, to the latest
                if not self._pg:
                    # SQLite has one writer (this process, under _lock): the ids already processed are read
                    # once for the batch and the new ones inserted together at commit, instead of one
                    # INSERT ... ON CONFLICT per event. PostgreSQL keeps the per-event insert, whose unique
                    # index is what stops two consumers applying the same event.
                    conn.info[TX_PROCESSED] = self._processed_among(conn, events)
                    repo.preload_webhook_targets(conn, {str(e.get("subject")) for e in events})
                applied = [etype for event in events if (etype := self._apply(conn, event, latest)) is not None]
                if latest:
                    self._advance_clock(conn, latest[0])
        except Exception:
            for event in events:
                self.handle(event)
            return
        for etype in applied:
            self.metrics.events.labels(etype).inc()
        self._after_commit()

    def _apply(self, conn: sa.Connection, event: dict[str, Any], latest: list[datetime] | None = None) -> str | None:
        """One event in the caller's transaction; its type when applied, None when already processed.
        With `latest` (a batch), the event clock is not written here: latest[0] keeps the batch's maximum."""
        try:
            etype, eid, subject = event["type"], event["id"], event["subject"]
            at = parse_rfc3339(event["time"])
        except (KeyError, TypeError, ValueError) as exc:
            raise EventRejected(f"event envelope incomplete: {exc}") from None
        for name, value in (("type", etype), ("id", eid), ("subject", subject)):
            _text(value, f"event {name}")
        handler = self._handlers().get(etype)
        seen: set[str] | None = conn.info.get(TX_PROCESSED)
        row = {"event_id": eid, "event_type": etype, "processed_at": self.clock()}
        if seen is not None:
            if eid in seen:
                return None
            seen.add(eid)
            repo.insert_ignore_later(conn, processed_events, row)
        elif not repo.insert_ignore(conn, processed_events, row):
            return None
        if etype in _MARKETPLACE_TYPES:
            if latest is None:
                self._advance_clock(conn, at)
            elif not latest:
                latest.append(at)
            elif at > latest[0]:
                latest[0] = at
        if handler is not None:
            try:
                handler(conn, event, subject, at)
            except (KeyError, TypeError, AttributeError) as exc:
                # AttributeError: `data` or a Money that is a list or a string (an event produced straight to
                # the topic, past ingest): refused like any malformed field, never an endless retry.
                raise EventRejected(f"{etype} {eid}: missing or malformed field {exc}") from None
        return str(etype)

    @staticmethod
    def _processed_among(conn: sa.Connection, events: list[dict[str, Any]]) -> set[str]:
        ids = list({e["id"] for e in events if isinstance(e, dict) and "id" in e})
        seen: set[str] = set()
        for i in range(0, len(ids), 500):
            seen.update(repo.run(conn, _PROCESSED_IN, {"p_ids": ids[i:i + 500]}).scalars())
        return seen

    def _handlers(self) -> dict[str, Any]:
        return {
            "credit_limit.updated": self._on_credit_limit,
            "loan_offer.created": self._on_offer_created,
            "loan_offer.withdrawn": self._on_offer_withdrawn,
            "merchant.onboarded": self._on_merchant,
            "merchant.updated": self._on_merchant,
            "settlement.paid": self._on_settlement,
            "order.paid": self._on_order_paid,
            "order.refunded": self._on_order_shortfall,
            "order.cancelled": self._on_order_shortfall,
            "order.chargeback": self._on_order_shortfall,
        }

    def _advance_clock(self, conn: sa.Connection, at: datetime) -> None:
        current = repo.get_control(conn, CLOCK_KEY)
        if current is None or parse_rfc3339(current) < at:
            repo.set_control(conn, CLOCK_KEY, format_rfc3339(at))

    def _ensure_merchant(self, conn: sa.Connection, merchant_id: str, currency: str | None = None) -> None:
        if merchant_id in self._known_merchants:
            return  # the insert below would do nothing
        ensured = conn.info.get(repo.TX_MERCHANTS)
        if ensured is not None and merchant_id in ensured:
            return
        repo.insert_ignore(conn, merchants, {"merchant_id": merchant_id, "status": "active", "currency": currency,
                                             "webhook_secrets": [], "event_types": []})
        if ensured is not None:
            ensured.add(merchant_id)

    def _on_merchant(self, conn: sa.Connection, event: dict[str, Any], mid: str, at: datetime) -> None:
        data = event["data"]
        for key in ("currency", "status"):
            if key in data:
                _text(data[key], f"{event['type']} {key}")
        self._ensure_merchant(conn, mid, data.get("currency"))
        current = repo.run(conn, _MERCHANT_STATUS_AT, {"p_merchant": mid}).first()
        if current is not None and current.status_at is not None and at < current.status_at:
            # Older than what was applied (re-sent late by the marketplace): it changes nothing, except a
            # currency the merchant does not have yet.
            log.warning("merchant %s: %s %s is older than its latest update; ignored", mid, event["type"],
                        event["id"])
            if "currency" in data and current.currency is None:
                repo.run(conn, _UPDATE_MERCHANT, {"p_merchant": mid, "currency": data["currency"]})
            return
        values = {k: data[k] for k in ("currency", "status") if k in data}
        # the columns set are the keys given
        repo.run(conn, _UPDATE_MERCHANT, {"p_merchant": mid, **values, "status_at": at})

    def _on_credit_limit(self, conn: sa.Connection, event: dict[str, Any], mid: str, at: datetime) -> None:
        data = event["data"]
        limit, available = Money.from_json(data["limit"]), Money.from_json(data["available"])
        if available.currency != limit.currency:
            raise EventRejected(f"credit_limit.updated {event['id']}: available in {available.currency}, "
                                f"limit in {limit.currency}")
        trigger = data.get("trigger_event_id")
        if trigger is not None:
            _text(trigger, "credit_limit.updated trigger_event_id")
        self._ensure_merchant(conn, mid, limit.currency)
        # Read only by acceptances (their own transactions): inserted with the batch at commit.
        repo.insert_ignore_later(conn, credit_limits, {
            "merchant_id": mid, "event_id": event["id"], "currency": limit.currency, "limit_amount": limit.amount,
            "available_amount": available.amount, "trigger_event_id": data.get("trigger_event_id"), "event_time": at,
        })
        self._outbox().emit(conn, topic=None, event=event)

    def _on_offer_created(self, conn: sa.Connection, event: dict[str, Any], mid: str, at: datetime) -> None:
        data = event["data"]
        _text(data["offer_id"], "loan_offer.created offer_id")
        if not _is_id(data["offer_id"]):
            # Published again in loan.disbursed / loan_offer.accepted (schemas: Id): one the contract refuses
            # would be dead-lettered by every consumer of loans.v1, so the loan would never be known there.
            raise EventRejected(f"loan_offer.created {event['id']}: offer_id must be 1-128 printable ASCII "
                                "characters (schemas: Id)")
        amount, fee = Money.from_json(data["amount"]), Money.from_json(data["fee"])
        due_at, expires_at = parse_rfc3339(data["due_at"]), parse_rfc3339(data["expires_at"])
        raw_orders = data.get("order_ids")
        # A list (a string would be read as its characters, each one an "order"); never empty: an advance is
        # made against named receivables (DESIGN: money already on its way), and a loan without any would be
        # covered by nothing from its first day.
        if not isinstance(raw_orders, list) or not raw_orders:
            raise EventRejected(f"loan_offer.created {data['offer_id']}: order_ids must be a non-empty list of the "
                                "orders the offer advances against")
        order_ids = list(raw_orders)
        problem = _offer_problem(amount, fee, due_at, expires_at, at, order_ids, self.settings.max_term_days) or \
            _orders_problem(data.get("orders"), order_ids, amount.currency)
        if problem is not None:
            raise EventRejected(f"loan_offer.created {data['offer_id']}: {problem}")
        self._ensure_merchant(conn, mid, amount.currency)
        stored = repo.run(conn, _OFFER_OWNER, {"p_offer": data["offer_id"]}).first()
        if stored is not None:
            if stored.merchant_id != mid:
                # Never stored for this merchant, and its open offer is left alone.
                raise EventRejected(f"loan_offer.created {event['id']}: offer id already belongs to another merchant")
            return  # the same offer delivered again (under a new event id): stored and announced once
        # One open offer per merchant: a fresh one replaces older ones; one that arrives after a newer offer
        # (out of order) is stored already superseded.
        newer = repo.run(conn, _NEWER_OPEN, {"p_merchant": mid, "p_offer": data["offer_id"], "p_at": at}).first()
        if newer is None:
            repo.run(conn, _SUPERSEDE_OLDER, {"p_merchant": mid, "p_offer": data["offer_id"], "p_at": at})
        repo.insert_ignore(conn, offers, {
            "offer_id": data["offer_id"], "merchant_id": mid,
            "state": (OfferState.OPEN if newer is None else OfferState.SUPERSEDED).value,
            "currency": amount.currency, "amount": amount.amount, "fee": fee.amount, "apr": str(data["apr"]),
            "due_at": due_at, "expires_at": expires_at, "created_at": at, "order_ids": order_ids, "data": data,
        })
        if newer is None:  # a merchant is never offered what is already replaced
            self._outbox().emit(conn, topic=None, event=event)

    def _on_offer_withdrawn(self, conn: sa.Connection, event: dict[str, Any], mid: str, at: datetime) -> None:
        # Announced only when an open offer was withdrawn: the underwriter may withdraw an offer the merchant
        # has already accepted (it has not heard of the acceptance yet); that merchant must not be told the
        # loan it was paid was withdrawn.
        offer_id = _text(event["data"]["offer_id"], "loan_offer.withdrawn offer_id")
        if repo.run(conn, _WITHDRAW_OPEN, {"p_offer": offer_id, "p_merchant": mid}).rowcount:
            self._outbox().emit(conn, topic=None, event=event)

    # ----------------------------------------------------------------- acceptance
    def accept(self, cmd: AcceptOffer) -> AcceptResult:
        """Accept an offer: checks, loan + ledger in one transaction, then the payout (idempotent per loan)."""
        started = _time.perf_counter()
        if not cmd.idempotency_key or len(cmd.idempotency_key) > 255 or not _storable(cmd.idempotency_key):
            result = _error(422, "idempotency_key_invalid",
                            "Idempotency-Key must be 1 to 255 characters, without NUL or unpaired surrogates")
        elif not cmd.offer_id or len(cmd.offer_id) > _MAX_ID or not _storable(cmd.offer_id):
            # No stored offer has such an id (nothing is stored for it either: the answer never changes).
            result = _error(404, "offer_not_found", "no such offer")
        else:
            result = self._accept(cmd)
        outcome = "accepted" if result.ok else (result.code or "error")
        self.metrics.accepts.labels(outcome).inc()
        self.metrics.accept_latency.labels("accepted" if result.ok else "refused").observe(
            _time.perf_counter() - started)
        self._after_commit()
        return result

    def _accept(self, cmd: AcceptOffer) -> AcceptResult:
        try:
            first, loan_id = self._accept_tx(cmd)
        except sa.exc.IntegrityError:
            # A concurrent request with the same Idempotency-Key or for the same offer won the race.
            first, loan_id = self._replay_or_conflict(cmd), None
        if loan_id is None:
            return first
        body = first.body
        paid, view = self._pay_loan(loan_id, (cmd.merchant_id, int(body["principal"]["amount"]),
                                              str(body["principal"]["currency"])))
        if view is not None:  # this call disbursed it: the stored answer is now (200, view)
            return AcceptResult(200, view)
        if paid:
            with self.engine.connect() as conn:
                stored = repo.run(conn, _STORED_ANSWER, {"p_merchant": cmd.merchant_id,
                                                       "p_key": cmd.idempotency_key}).one()
            return AcceptResult(stored.status_code, stored.response)
        with self.engine.connect() as conn:  # the payout failed: pending (202), or cancelled for good (409)
            stored = repo.run(conn, _STORED_ANSWER, {"p_merchant": cmd.merchant_id,
                                                   "p_key": cmd.idempotency_key}).first()
        if stored is not None and stored.status_code != first.status_code:
            return AcceptResult(stored.status_code, stored.response)
        return first

    def _replay_or_conflict(self, cmd: AcceptOffer) -> AcceptResult:
        with self.engine.connect() as conn:
            stored = self._stored_answer(conn, cmd)
        if stored is not None:
            return stored
        return _error(409, "offer_already_accepted", "this offer has already been accepted")

    def _stored_answer(self, conn: sa.Connection, cmd: AcceptOffer) -> AcceptResult | None:
        row = repo.run(conn, _STORED, {"p_merchant": cmd.merchant_id, "p_key": cmd.idempotency_key}).first()
        if row is None:
            return None
        if row.offer_id != cmd.offer_id:
            return _error(422, "idempotency_key_reused", "this Idempotency-Key was already used for another offer")
        return AcceptResult(row.status_code, row.response, replayed=True)

    def _remember(self, conn: sa.Connection, cmd: AcceptOffer, result: AcceptResult) -> AcceptResult:
        repo.run(conn, _INSERT_IDEMPOTENCY, {
            "merchant_id": cmd.merchant_id, "key": cmd.idempotency_key, "offer_id": cmd.offer_id,
            "status_code": result.status_code, "response": result.body, "created_at": self.clock()})
        return result

    def _accept_tx(self, cmd: AcceptOffer) -> tuple[AcceptResult, str | None]:
        with self._tx() as conn:
            stored = self._stored_answer(conn, cmd)
            if stored is not None:
                return stored, None
            offer = repo.run(conn, _OFFER.with_for_update() if self._pg else _OFFER, {"p_offer": cmd.offer_id}).first()
            actor = "merchant:" + cmd.merchant_id
            if offer is None or offer.merchant_id != cmd.merchant_id:
                # Same answer whether the offer does not exist or belongs to someone else. Not stored under the
                # key: the offer may still arrive (a merchant app reading loan.offers.v1 ahead of this consumer),
                # and a retry with the same key must then be decided on it.
                self._audit(conn, actor, "accept", cmd.merchant_id, cmd.offer_id, "offer_not_found",
                            {"idempotency_key": cmd.idempotency_key})
                return _error(404, "offer_not_found", "no such offer"), None
            facts, limit_id = self._facts(conn, offer, cmd.now)
            why = refusal(facts)
            decided = {"idempotency_key": cmd.idempotency_key, "amount": facts.offer_amount.to_json(),
                       "available": None if facts.available is None else facts.available.to_json(),
                       "limit_id": limit_id, "kill_switch": facts.kill_switch, "merchant_status": facts.merchant_status}
            self._audit(conn, actor, "accept", cmd.merchant_id, cmd.offer_id,
                        "accepted" if why is None else why.code, decided)
            if why is not None:
                refused = _error(409, why.code, why.message)
                # A refusal that may not hold tomorrow (kill switch, limit, status...) is not stored: a retry
                # with the same Idempotency-Key once the cause is gone is decided again, not answered "no".
                return (self._remember(conn, cmd, refused) if why.final else refused), None
            loan = self._open_loan(conn, offer, cmd.now, limit_id)
            return self._remember(conn, cmd, AcceptResult(202, repo.loan_view(loan))), loan.loan_id

    def _facts(self, conn: sa.Connection, offer: Any, now: datetime) -> tuple[AcceptanceFacts, int | None]:
        """The acceptance facts, and the id of the limit row `available` was read from."""
        merchant = self._merchant(conn, offer.merchant_id)
        delinquent = repo.run(conn, _BAD_LOANS, {"p_merchant": offer.merchant_id}).scalar_one()
        owed = repo.run(conn, _OWED_LOANS, {"p_merchant": offer.merchant_id}).all()
        # Past due is a fact of the due date, not of whether the aging pass has run since.
        delinquent = delinquent or any(aging.days_past_due(r.due_at, now) > 0 for r in owed)
        taken = repo.run(conn, _OFFER_TAKEN, {"p_offer": offer.offer_id}).scalar_one()
        state = OfferState.ACCEPTED if taken else OfferState(offer.state)
        available, limit_id = self._available(conn, offer.merchant_id, owed)
        financed: tuple[str, ...] = ()
        changed = set((offer.data or {}).get("changed_orders") or {})
        if offer.order_ids:
            params = {"p_merchant": offer.merchant_id, "p_orders": list(offer.order_ids)}
            rows = repo.run(conn, _FINANCED_IN, params)
            financed = tuple(sorted({str(r.order_id) for r in rows}))
            # Closed before the offer arrived here (another topic), or since: the receivable is gone. A settled,
            # cancelled or charged-back order never backs an advance, whenever it closed; a refund (possibly
            # partial) counts after the offer's own time: one until then (the very refund that triggered the
            # offer included) was known to the underwriter, which sized the offer on what the order still brings.
            changed.update(str(r.order_id) for r in repo.run(conn, _CLOSED_AMONG, params).all()
                           if r.change != "refunded" or r.closed_at > offer.created_at)
        return AcceptanceFacts(
            offer_state=state, offer_amount=Money(offer.amount, offer.currency), expires_at=offer.expires_at,
            due_at=offer.due_at,
            now=now, kill_switch=self.kill_switch(conn), merchant_status=merchant.status,
            merchant_delinquent=bool(delinquent), available=available, already_financed=financed,
            owed_currencies=tuple(sorted({str(r.currency) for r in owed})),
            changed_receivables=tuple(sorted(changed)),
        ), limit_id

    def _available(self, conn: sa.Connection, merchant_id: str, owed: list[Any]) -> tuple[Money | None, int | None]:
        """Latest available limit minus principal accepted since that limit arrived, and never more than
        the latest limit minus what the merchant owes now: a limit the underwriter computed before it
        heard of a loan (its `available` still counts that money) must not lend the same money twice."""
        lim = repo.run(conn, _LATEST_LIMIT, {"p_merchant": merchant_id}).first()
        if lim is None:
            return None, None
        since = repo.run(conn, _ACCEPTED_SINCE, {"p_merchant": merchant_id, "p_limit": lim.id}).scalar_one()
        outstanding = sum(int(r.principal_due) + int(r.fee_due) for r in owed if r.currency == lim.currency)
        available = min(lim.available_amount - int(since), lim.limit_amount - outstanding)
        return Money(available, lim.currency), int(lim.id)

    def _open_loan(self, conn: sa.Connection, offer: Any, now: datetime, limit_id: int | None) -> Any:
        """Insert the loan (against the limit row the acceptance checked); returns the row as written."""
        loan_id = loan_id_for(offer.offer_id)
        principal, fee = Money(offer.amount, offer.currency), Money(offer.fee, offer.currency)
        row = {"loan_id": loan_id, "offer_id": offer.offer_id, "merchant_id": offer.merchant_id,
               "state": LoanState.ACCEPTED.value, "currency": offer.currency, "principal": offer.amount,
               "fee": offer.fee, "principal_due": offer.amount, "fee_due": offer.fee, "apr": offer.apr,
               "due_at": offer.due_at, "accepted_at": now, "limit_id": limit_id, "dpd": 0,
               "order_ids": list(offer.order_ids)}
        repo.run(conn, _INSERT_LOAN, row)
        repo.post_entry(conn, ledger.disbursement(f"disbursement:{loan_id}", loan_id, principal, fee),
                        offer.merchant_id, now)
        self._finance_orders(conn, loan_id, offer, principal + fee)
        repo.run(conn, _ACCEPT_OFFER, {"p_offer": offer.offer_id})
        self._outbox().new(conn, topic=topics.LOANS, etype="loan_offer.accepted", merchant_id=offer.merchant_id,
                           data={"offer_id": offer.offer_id, "loan_id": loan_id, "accepted_at": format_rfc3339(now)},
                           time=now, event_id=deterministic_id("loan_offer.accepted", offer.offer_id))
        return SimpleNamespace(**row, payout_id=None)

    def _finance_orders(self, conn: sa.Connection, loan_id: str, offer: Any, owed: Money) -> None:
        """Record what each financed order is expected to bring back: its own amount's share of what is owed
        (coll.financed_shares), on the amounts the offer names, else on those the orders were paid (order.paid),
        else an equal share."""
        order_ids = list(offer.order_ids)
        if not order_ids:
            return
        amounts: dict[str, int] = {o["order_id"]: int(o["amount"]["amount"])
                                   for o in offer.data.get("orders", []) if "order_id" in o}
        missing = [oid for oid in order_ids if oid not in amounts]
        for i in range(0, len(missing), 500):
            amounts.update((str(r.order_id), int(r.amount)) for r in repo.run(conn, _ORDER_AMOUNTS_OF, {
                "p_merchant": offer.merchant_id, "p_currency": owed.currency, "p_orders": missing[i:i + 500]}))
        shares = coll.financed_shares(owed.amount, order_ids, amounts)
        rows = [{"order_id": oid, "loan_id": loan_id, "merchant_id": offer.merchant_id, "state": "open",
                 "expected": shares[oid]} for oid in order_ids]
        repo.run(conn, _INSERT_FINANCED, rows)

    # ----------------------------------------------------------------- payout
    def _drive_payout(self, loan_id: str) -> bool:
        """Pay a loan still in `accepted` (same idempotency key on every retry); True once disbursed."""
        return self._pay_loan(loan_id)[0]

    def _pay_loan(self, loan_id: str, accepted: tuple[str, int, str] | None = None
                  ) -> tuple[bool, dict[str, Any] | None]:
        """(disbursed, the loan's view when this call disbursed it). `accepted`: (merchant, principal,
        currency) of a loan this process has just committed in `accepted`, so it is not read back before
        paying (the payout is idempotent per loan; the state is checked again, locked, before any write)."""
        first_try = accepted
        if accepted is None:
            with self.engine.connect() as conn:
                loan = repo.run(conn, _LOAN, {"p_loan": loan_id}).one()
            if loan.state != LoanState.ACCEPTED.value:
                return True, None
            accepted = (loan.merchant_id, loan.principal, loan.currency)
        merchant_id, principal, currency = accepted
        try:
            payout_id = self.rail.pay(PayoutRequest(loan_id, merchant_id, principal, currency, f"loan {loan_id}"))
            _check_payout_id(payout_id)
        except PayoutRejected as exc:  # refused for good: retrying cannot pay it, so the loan is cancelled
            log.warning("payout of %s refused for good, cancelling the loan: %s", loan_id, exc)
            self._cancel_loan(loan_id, str(exc))
            return False, None
        except Exception as exc:  # noqa: BLE001 - whatever the rail raised, the loan is committed and stays owed
            # A rail adapter bug or an unexpected error is a failed payout like PayoutFailed: the acceptance
            # stands (202, loan `accepted`) and recovery retries with the same idempotency key; it must not
            # turn into a server error for a loan that exists.
            if isinstance(exc, PayoutFailed):
                log.warning("payout of %s failed, recovery will retry: %s", loan_id, exc)
            else:
                log.exception("payout of %s raised; recovery will retry", loan_id)
            error = f"{'' if isinstance(exc, PayoutFailed) else type(exc).__name__ + ': '}{exc}"[:300]
            self._payout_failed(loan_id, error, audit=first_try is not None)
            return False, None
        try:
            done = self._record_payout(loan_id, payout_id, first_try is not None)
        except sa.exc.IntegrityError as exc:
            # The rail answered a payout id already recorded for another loan (a rail that reuses ids, a mock
            # answering a constant): it cannot be this loan's payout record. A rail error like any other: the
            # loan stays `accepted` (202), the attempt is counted, and the cap parks it for ops.
            cause = str(getattr(exc, "orig", exc)).splitlines()[0][:160]
            log.warning("payout of %s: the rail's payout id %r could not be recorded: %s", loan_id, payout_id, cause)
            error = f"the rail's payout id {payout_id!r} could not be recorded (one id per payout): {cause}"
            self._payout_failed(loan_id, error[:300], audit=first_try is not None)
            return False, None
        if done is None:
            return True, None
        loan, view = done
        self.metrics.disbursed.labels(loan.currency).inc(loan.principal)
        return True, view

    def _record_payout(self, loan_id: str, payout_id: str, just_accepted: bool) -> tuple[Any, dict[str, Any]] | None:
        """Record the rail's payout of a loan still `accepted` and disburse it; None when it is no longer
        `accepted` (paid or cancelled meanwhile), else (the loan row, its view as disbursed)."""
        with self._tx() as conn:
            loan = repo.run(conn, _LOAN.with_for_update() if self._pg else _LOAN, {"p_loan": loan_id}).one()
            if loan.state != LoanState.ACCEPTED.value:
                return None
            now = self.clock()
            repo.run(conn, _INSERT_PAYOUT, {"payout_id": payout_id, "loan_id": loan_id, "merchant_id": loan.merchant_id,
                                          "amount": loan.principal, "currency": loan.currency, "created_at": now})
            transition(LoanState(loan.state), LoanState.DISBURSED)
            repo.run(conn, _LOAN_DISBURSED, {"p_loan": loan_id, "p_payout": payout_id, "p_at": now})
            # A loan accepted by the version before the merchant payable (upgraded in place while its payout was
            # failing) already took the cash at acceptance: paying it books nothing more. Only recovery can meet
            # one; a loan this call has just accepted booked the payable.
            if just_accepted or repo.run(conn, _BOOKED_PAYABLE, {"p_entry": f"disbursement:{loan_id}"}).first():
                repo.post_entry(conn, ledger.payout(f"payout:{loan_id}", loan_id,
                                                    Money(loan.principal, loan.currency)), loan.merchant_id, now)
            self._outbox().new(conn, topic=topics.LOANS, etype="loan.disbursed", merchant_id=loan.merchant_id, data={
                "loan_id": loan_id, "offer_id": loan.offer_id, "principal": repo.money(loan.principal, loan.currency),
                "fee": repo.money(loan.fee, loan.currency), "due_at": format_rfc3339(loan.due_at),
                "payout_id": payout_id, "order_ids": list(loan.order_ids)}, time=now, event_id=deterministic_id("loan.disbursed", loan_id))
            view = repo.loan_view(SimpleNamespace(**{**loan._asdict(), "state": LoanState.DISBURSED.value,
                                                     "payout_id": payout_id, "disbursed_at": now}))
            repo.run(conn, _ANSWER_DISBURSED, {"p_offer": loan.offer_id, "p_response": view})
            self._audit(conn, "system", "payout", loan.merchant_id, loan_id, "paid",
                        {"payout_id": payout_id, "amount": repo.money(loan.principal, loan.currency)})
            self._refresh_instruction(conn, loan.merchant_id, now, f"disbursed:{loan_id}")
        return loan, view

    def _payout_failed(self, loan_id: str, error: str, audit: bool) -> None:
        """Count a failed (not refused) payout attempt; past the cap (attempts or age since acceptance) the loan
        is parked: recovery stops retrying it, the parked gauge counts it, ops resume or cancel it. Only the
        first failure (`audit`, the acceptance's own attempt) and the parking are audited, not every pass."""
        cap, max_age = self.settings.payout_max_attempts, self.settings.payout_max_age_seconds
        with self._tx() as conn:
            loan = repo.run(conn, _LOAN.with_for_update() if self._pg else _LOAN, {"p_loan": loan_id}).one()
            if loan.state != LoanState.ACCEPTED.value or loan.payout_parked_at is not None:
                return  # paid, cancelled or parked meanwhile (another replica)
            now = self.clock()
            attempts = int(loan.payout_attempts or 0) + 1
            amount = repo.money(loan.principal, loan.currency)
            if audit:
                self._audit(conn, "system", "payout", loan.merchant_id, loan_id, "failed",
                            {"amount": amount, "error": error})
            park = (cap > 0 and attempts >= cap) or (
                max_age > 0 and (now - loan.accepted_at).total_seconds() >= max_age)
            repo.run(conn, _PAYOUT_ATTEMPT, {"p_loan": loan_id, "p_attempts": attempts,
                                             "p_parked": now if park else None})
            if park:
                log.error("payout of %s parked for ops after %d failed attempts since %s: %s", loan_id, attempts,
                          format_rfc3339(loan.accepted_at), error)
                self._audit(conn, "system", "payout", loan.merchant_id, loan_id, "parked",
                            {"amount": amount, "attempts": attempts, "error": error})

    def _refund_failed(self, refund_id: str, error: str) -> None:
        """Count a failed payout of an overpayment refund; past the cap it is parked like a loan's payout (the
        money stays owed to the merchant in `merchant_payable`; ops resume it)."""
        cap, max_age = self.settings.payout_max_attempts, self.settings.payout_max_age_seconds
        with self._tx() as conn:
            row = conn.execute(sa.select(merchant_refunds).where(merchant_refunds.c.refund_id == refund_id)).first()
            if row is None or row.state != "pending" or row.payout_parked_at is not None:
                return
            now = self.clock()
            attempts = int(row.payout_attempts or 0) + 1
            park = (cap > 0 and attempts >= cap) or (
                max_age > 0 and (now - row.created_at).total_seconds() >= max_age)
            conn.execute(sa.update(merchant_refunds).where(merchant_refunds.c.refund_id == refund_id,
                                                           merchant_refunds.c.state == "pending")
                         .values(payout_attempts=attempts, payout_parked_at=now if park else None))
            if park:
                log.error("refund %s parked for ops after %d failed attempts: %s", refund_id, attempts, error)
                self._audit(conn, "system", "refund_payout", row.merchant_id, refund_id, "parked",
                            {"amount": repo.money(row.amount, row.currency), "attempts": attempts, "error": error})

    def parked_payouts(self) -> list[dict[str, Any]]:
        """Loans and overpayment refunds whose payout is parked for ops (oldest first)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(loans).where(loans.c.state == LoanState.ACCEPTED.value,
                                                       loans.c.payout_parked_at.is_not(None))
                                .order_by(loans.c.payout_parked_at, loans.c.loan_id)).all()
            refunds = conn.execute(sa.select(merchant_refunds).where(
                merchant_refunds.c.state == "pending", merchant_refunds.c.payout_parked_at.is_not(None))
                .order_by(merchant_refunds.c.payout_parked_at, merchant_refunds.c.refund_id)).all()
        return [{"kind": "loan", "loan_id": r.loan_id, "merchant_id": r.merchant_id,
                 "amount": repo.money(r.principal, r.currency), "accepted_at": format_rfc3339(r.accepted_at),
                 "parked_at": format_rfc3339(r.payout_parked_at), "attempts": r.payout_attempts} for r in rows] + [
                {"kind": "refund", "refund_id": r.refund_id, "merchant_id": r.merchant_id,
                 "amount": repo.money(r.amount, r.currency), "created_at": format_rfc3339(r.created_at),
                 "parked_at": format_rfc3339(r.payout_parked_at), "attempts": r.payout_attempts} for r in refunds]

    def resume_payout(self, loan_id: str, actor: str = "operator") -> bool:
        """Unpark a loan (or an overpayment refund: its refund id) and try its payout again now (same
        idempotency key: a payout the rail did make is answered, not made twice). True once paid; a new
        failure counts from zero again."""
        with self._tx() as conn:
            loan = repo.run(conn, _LOAN, {"p_loan": loan_id}).first()
            refund = None if loan is not None else conn.execute(
                sa.select(merchant_refunds).where(merchant_refunds.c.refund_id == loan_id)).first()
            if refund is not None:
                if refund.state != "pending":
                    return True
                conn.execute(sa.update(merchant_refunds).where(merchant_refunds.c.refund_id == loan_id)
                             .values(payout_attempts=0, payout_parked_at=None))
                self._audit(conn, actor, "payout_resumed", refund.merchant_id, loan_id, "ok",
                            {"attempts": refund.payout_attempts})
            elif loan is None:
                raise KeyError(f"unknown loan or refund {loan_id!r}")
            elif loan.state != LoanState.ACCEPTED.value:
                return bool(loan.state != LoanState.CANCELLED.value)
            else:
                repo.run(conn, _PAYOUT_ATTEMPT, {"p_loan": loan_id, "p_attempts": 0, "p_parked": None})
                self._audit(conn, actor, "payout_resumed", loan.merchant_id, loan_id, "ok",
                            {"attempts": loan.payout_attempts})
        if refund is not None:
            with self.engine.connect() as conn:
                fresh = conn.execute(sa.select(merchant_refunds).where(merchant_refunds.c.refund_id == loan_id)).one()
            paid = self._pay_refund(fresh)
            self._after_commit()
            return paid
        done = self._drive_payout(loan_id)
        self._after_commit()
        return done

    def cancel_parked_payout(self, loan_id: str, reason: str, actor: str = "operator") -> bool:
        """Cancel a parked loan once the rail's owners confirmed no payout was made under its key (as a payout
        refused for good: reversing entry, loan.cancelled, 409 payout_rejected). Refused while not parked."""
        with self.engine.connect() as conn:
            loan = repo.run(conn, _LOAN, {"p_loan": loan_id}).first()
        if loan is None:
            raise KeyError(f"unknown loan {loan_id!r}")
        if loan.state != LoanState.ACCEPTED.value or loan.payout_parked_at is None:
            raise ValueError(f"loan {loan_id} is {loan.state}, not a parked payout: only a parked one is cancelled")
        done = self._cancel_loan(loan_id, f"cancelled by {actor} after parking: {reason}"[:300])
        self._after_commit()
        return done

    def _cancel_loan(self, loan_id: str, error: str) -> bool:
        """Cancel a loan still in `accepted` whose payout the rail refused for good: the acceptance entry is
        reversed (nothing owed either way, no cash moved), its orders are no longer financed, the offer stays
        closed (its loan exists), the Idempotency-Key answer becomes the final refusal `payout_rejected`, and
        loan.cancelled tells the underwriter (which releases the offer's exposure) and the merchant."""
        with self._tx() as conn:
            loan = repo.run(conn, _LOAN.with_for_update() if self._pg else _LOAN, {"p_loan": loan_id}).one()
            if loan.state != LoanState.ACCEPTED.value:
                return False  # paid or cancelled meanwhile
            now = self.clock()
            transition(LoanState(loan.state), LoanState.CANCELLED)
            repo.run(conn, _LOAN_CANCELLED, {"p_loan": loan_id, "p_at": now})
            # The acceptance entry exactly as posted (principal owed against the merchant payable, fee), reversed.
            entry_id = f"disbursement:{loan_id}"
            posted = repo.run(conn, _ENTRY_LINES, {"p_entry": entry_id}).all()
            if posted:
                accepted_entry = ledger.make_entry(entry_id, "disbursement", loan_id, [
                    (ledger.Account(r.account), ledger.Side(r.side), Money(int(r.amount), r.currency)) for r in posted])
                repo.post_entry(conn, ledger.reversing_entry(accepted_entry, f"cancellation:{loan_id}"),
                                loan.merchant_id, now)
            repo.run(conn, _RELEASE_FINANCED, {"p_loan": loan_id})
            reason = "payout_rejected"
            repo.run(conn, _ANSWER_CANCELLED, {"p_offer": loan.offer_id, "p_response": {"error": {
                "code": reason, "message": "the payout rail refused this payout for good; the loan was cancelled",
                "loan_id": loan_id}}})
            self._audit(conn, "system", "payout", loan.merchant_id, loan_id, "rejected",
                        {"amount": repo.money(loan.principal, loan.currency), "error": error[:300]})
            self._outbox().new(conn, topic=topics.LOANS, etype="loan.cancelled", merchant_id=loan.merchant_id,
                               data={"loan_id": loan_id, "offer_id": loan.offer_id, "reason": reason}, time=now,
                               event_id=deterministic_id("loan.cancelled", loan_id))
            self._refresh_instruction(conn, loan.merchant_id, now, f"cancelled:{loan_id}")
        self.metrics.cancelled.labels(loan.currency).inc()
        return True

    def recover(self, now: datetime | None = None) -> int:
        """Re-drive loans stuck in `accepted` and overpayment refunds not yet paid; returns how many were paid."""
        now = now or self.clock()
        cutoff = now - timedelta(seconds=self.settings.recovery_after_seconds)
        with self.engine.connect() as conn:
            stuck = conn.execute(sa.select(loans.c.loan_id).where(
                loans.c.state == LoanState.ACCEPTED.value, loans.c.accepted_at <= cutoff,
                loans.c.payout_parked_at.is_(None))).scalars().all()
            refunds = conn.execute(sa.select(merchant_refunds).where(
                merchant_refunds.c.state == "pending", merchant_refunds.c.payout_parked_at.is_(None))).all()
        done = 0
        for what, job in [*((loan_id, functools.partial(self._drive_payout, loan_id)) for loan_id in stuck),
                          *((r.refund_id, functools.partial(self._pay_refund, r)) for r in refunds)]:
            try:
                done += bool(job())
            except Exception:  # one payout the rail cannot take must not hold up every other one
                log.exception("recovery of %s failed; the next pass retries", what)
        self._after_commit()
        return done

    def _pay_refund(self, refund: Any) -> bool:
        try:
            payout_id = self.rail.pay(PayoutRequest(refund.refund_id, refund.merchant_id, refund.amount,
                                                    refund.currency, f"overpayment {refund.refund_id}"))
            _check_payout_id(payout_id)
        except Exception as exc:  # noqa: BLE001 - any failure: the refund stays owed and pending, counted
            log.warning("refund %s failed, will retry: %s", refund.refund_id, exc)
            error = f"{'' if isinstance(exc, PayoutFailed) else type(exc).__name__ + ': '}{exc}"[:300]
            self._refund_failed(refund.refund_id, error)
            return False
        with self._tx() as conn:
            changed = conn.execute(sa.update(merchant_refunds).where(
                merchant_refunds.c.refund_id == refund.refund_id, merchant_refunds.c.state == "pending")
                .values(state="paid", payout_id=payout_id)).rowcount
            if changed:
                repo.post_entry(conn, ledger.overpayment_returned(_fit(f"returned:{refund.refund_id}"),
                                Money(refund.amount, refund.currency)), refund.merchant_id, self.clock())
                self._audit(conn, "system", "refund_payout", refund.merchant_id, refund.refund_id, "paid",
                            {"payout_id": payout_id, "amount": repo.money(refund.amount, refund.currency)})
        return True

    # ----------------------------------------------------------------- collections
    def _first_time(self, conn: sa.Connection, kind: str, mid: str, ref: str) -> bool:
        """True the first time a marketplace reference (settlement, refund, chargeback id) is seen for this
        merchant. A sloppy sender may resend one under a new event id: its money must count once."""
        # "#" never starts a CloudEvents id (schemas: a letter or digit first): no event id can take this key.
        key = f"#{kind}:{deterministic_id(kind, mid, ref)}"
        if repo.insert_ignore(conn, processed_events, {"event_id": key, "event_type": kind,
                                                       "processed_at": self.clock()}):
            return True
        log.warning("%s %s of merchant %s was already applied under another event id; ignored", kind, ref, mid)
        return False

    def _reference_increase(self, conn: sa.Connection, kind: str, mid: str, ref: str, amount: int) -> int | None:
        """What a refund or chargeback reference (`ref`: "<order_id>:<refund_id>") adds to what was counted for it:
        all of `amount` the first time, then only what a re-send with a larger amount adds (the marker keeps the
        largest amount counted, processed_events.amount); None when it adds nothing (the same or a smaller amount,
        or a marker written before amounts were kept: its amount is unknown, so a re-send is ignored as before)."""
        key = f"#{kind}:{deterministic_id(kind, mid, ref)}"
        if repo.insert_ignore(conn, processed_events, {"event_id": key, "event_type": kind,
                                                       "processed_at": self.clock(), "amount": amount}):
            return amount
        for _ in range(8):  # a concurrent writer raised it between the read and the update: read it again
            counted = repo.run(conn, _REFERENCE_AMOUNT, {"p_key": key}).scalar()
            if counted is None or amount <= counted:
                log.warning("%s %s of merchant %s was already applied under another event id (amount %s, now %s); "
                            "ignored", kind, ref, mid, counted, amount)
                return None
            if repo.run(conn, _RAISE_REFERENCE_AMOUNT, {"p_key": key, "p_old": counted, "p_new": amount}).rowcount:
                log.warning("%s %s of merchant %s re-sent with a larger amount (%s, counted %s): the difference "
                            "counts", kind, ref, mid, amount, counted)
                return amount - int(counted)
        raise RuntimeError(f"{kind} {ref} of merchant {mid}: its counted amount keeps changing")

    def _on_settlement(self, conn: sa.Connection, event: dict[str, Any], mid: str, at: datetime) -> None:
        data = event["data"]
        settlement_id = _text(data["settlement_id"], "settlement.paid settlement_id")
        withheld = _non_negative(event, "withheld")
        if not self._first_time(conn, "settlement.paid", mid, str(settlement_id)):
            return
        # A merchant this service never saw onboarded still gets back whatever was withheld from it.
        self._ensure_merchant(conn, mid, withheld.currency)
        paid_for = _order_amounts(data.get("orders", []), withheld.currency)
        self._note_offered_orders(conn, mid, paid_for, "settled", at)
        earmarks: dict[str, Money] = {}
        if paid_for:
            params = {"p_merchant": mid, "p_orders": list(paid_for)}
            rows = repo.run(conn, _FINANCED_ANY, params).all()
            for r in rows:  # a financed order's payout belongs to its own loan first
                amount = paid_for[r.order_id]
                if r.state != "open" and amount is None:
                    continue  # named again without an amount: nothing more is known to belong to its loan
                # An order paid out in parts (or again) after its first settlement: the later parts are its own
                # loan's too, not the oldest loan's (that loan would be left owing what its receivable brought).
                mark = Money(amount if amount is not None else r.expected, withheld.currency)
                earmarks[r.loan_id] = earmarks[r.loan_id] + mark if r.loan_id in earmarks else mark
            if any(r.state == "open" for r in rows):
                repo.run(conn, _SETTLE_FINANCED, params)
        # Only the loans disbursed by the settlement's time: it answered the instruction in force then
        # (coll.repayable_by); a younger loan is not repaid "before it existed".
        open_ = coll.repayable_by(repo.open_loans(conn, mid, lock=True), at)
        order = AllocationOrder(self.settings.allocation_order)
        alloc = coll.allocate(withheld, [ln for ln in open_ if ln.remaining.currency == withheld.currency],
                              earmarks, order)
        for loan_id, split in alloc.per_loan:
            self._apply_repayment(conn, mid, loan_id, settlement_id, split.fee, split.principal, at)
        left = alloc.overpayment
        if left.amount > 0:
            left = self._recover_charged_off(conn, mid, settlement_id, left, at)
        if left.amount > 0:
            refund_id = _fit(f"refund:{mid}:{settlement_id}", _REFUND_ID_MAX)
            repo.post_entry(conn, ledger.overpayment(_fit(f"overpayment:{mid}:{settlement_id}"), left), mid, at)
            repo.insert_ignore(conn, merchant_refunds, {
                "refund_id": refund_id, "merchant_id": mid, "amount": left.amount,
                "currency": left.currency, "state": "pending", "created_at": at})
        self._refresh_instruction(conn, mid, at, f"settlement:{settlement_id}")

    def _recover_charged_off(self, conn: sa.Connection, mid: str, settlement_id: str, money: Money,
                             at: datetime) -> Money:
        """Money beyond the open loans first recovers what was written off for this merchant (oldest loan
        first, never more than its loss), booked as a recovery; returns what is left for the merchant.
        Only loans disbursed by the settlement's time (as for open loans: coll.repayable_by); a recovery of
        money withheld before the charge-off is booked at the charge-off, never before the loss it reduces."""
        rows = repo.run(conn, _UNRECOVERED, {"p_merchant": mid, "p_currency": money.currency}).all()
        for row in rows:
            if money.is_zero():
                break
            if row.disbursed_at is None or row.disbursed_at > at:
                continue
            part = money.min(Money(int(row.loss), money.currency))
            if part.amount <= 0:
                continue
            booked = at if row.closed_at is None else max(at, row.closed_at)
            repo.post_entry(conn, ledger.recovery(_fit(f"recovery:{row.loan_id}:{settlement_id}"), row.loan_id, part),
                            mid, booked)
            money = money - part
            self._outbox().new(conn, topic=topics.LOANS, etype="loan.repayment_applied", merchant_id=mid, data={
                "loan_id": row.loan_id, "settlement_id": settlement_id, "amount": part.to_json(),
                "remaining": repo.money(int(row.loss) - part.amount, money.currency)}, time=booked,
                event_id=deterministic_id("loan.repayment_applied", row.loan_id, settlement_id))
        return money

    def _apply_repayment(self, conn: sa.Connection, mid: str, loan_id: str, settlement_id: str,
                         fee: Money, principal: Money, at: datetime) -> None:
        loan = repo.run(conn, _LOAN, {"p_loan": loan_id}).one()
        repo.post_entry(conn, ledger.repayment(_fit(f"repayment:{loan_id}:{settlement_id}"), loan_id, fee, principal), mid, at)
        p_due, f_due = loan.principal_due - principal.amount, loan.fee_due - fee.amount
        target = LoanState.REPAID if p_due == 0 and f_due == 0 else (
            LoanState.DELINQUENT if loan.state == LoanState.DELINQUENT.value else LoanState.REPAYING)
        transition(LoanState(loan.state), target)
        repaid_at = at
        if target is LoanState.REPAID:
            # Repaid once every part of the money was withheld: not before the latest booking of the loan (a
            # settlement dated later that arrived earlier; the payout). repayable_by already keeps `at` at or
            # after the disbursement; this keeps loans.closed_at and loan.repaid in order whatever arrives when.
            last = repo.run(conn, _LOAN_LAST_ENTRY, {"p_loan": loan_id}).scalar()
            if last is not None and last > repaid_at:
                repaid_at = last
        repo.run(conn, _LOAN_REPAID_PART, {"p_loan": loan_id, "p_principal_due": p_due, "p_fee_due": f_due,
                                         "p_state": target.value,
                                         "p_closed_at": repaid_at if target is LoanState.REPAID else None})
        ob = self._outbox()
        ob.new(conn, topic=topics.LOANS, etype="loan.repayment_applied", merchant_id=mid, data={
            "loan_id": loan_id, "settlement_id": settlement_id, "amount": (fee + principal).to_json(),
            "remaining": repo.money(p_due + f_due, loan.currency)}, time=at,
            event_id=deterministic_id("loan.repayment_applied", loan_id, settlement_id))
        if target is LoanState.REPAID:
            ob.new(conn, topic=topics.LOANS, etype="loan.repaid", merchant_id=mid,
                   data={"loan_id": loan_id, "repaid_at": format_rfc3339(repaid_at)}, time=repaid_at,
                   event_id=deterministic_id("loan.repaid", loan_id))

    def _note_offered_orders(self, conn: sa.Connection, mid: str, order_ids: Iterable[str], change: str,
                             at: datetime) -> None:
        """Remember on the merchant's open offer which of its orders settled, were cancelled, refunded or
        charged back: an advance on money already paid out (or never coming) is refused at acceptance."""
        wanted = set(order_ids)
        if not wanted:
            return
        for oid in sorted(wanted):
            if len(oid) <= _MAX_ID and _storable(oid):
                repo.insert_ignore_later(conn, closed_orders, {"merchant_id": mid, "order_id": oid, "change": change,
                                                               "closed_at": at})
        for row in repo.run(conn, _OPEN_OFFER_OF, {"p_merchant": mid}).all():
            hit = wanted.intersection(row.order_ids or ())
            if not hit:
                continue
            data = dict(row.data or {})
            changed = dict(data.get("changed_orders") or {})
            changed.update({oid: changed.get(oid, change) for oid in sorted(hit)})
            data["changed_orders"] = changed
            repo.run(conn, _SET_OFFER_DATA, {"p_offer": row.offer_id, "p_data": data})

    def _on_order_paid(self, conn: sa.Connection, event: dict[str, Any], mid: str, at: datetime) -> None:
        """Remember what the order was paid (the first amount): a loan advanced on it expects its own share."""
        data = event["data"]
        order_id = _text(data["order_id"], "order.paid order_id")
        amount = _non_negative(event, "amount")
        if len(order_id) <= _MAX_ID and _storable(order_id) and len(mid) <= _MAX_ID:
            repo.insert_ignore_later(conn, order_amounts, {"merchant_id": mid, "order_id": order_id,
                                                           "amount": amount.amount, "currency": amount.currency,
                                                           "paid_at": at})

    def _on_order_shortfall(self, conn: sa.Connection, event: dict[str, Any], mid: str, at: datetime) -> None:
        """A refunded or cancelled financed order will not repay its loan: the withhold must cover it."""
        data, etype = event["data"], event["type"]
        _text(data["order_id"], f"{etype} order_id")
        amount = None if etype == "order.cancelled" else _non_negative(event, "amount")
        self._note_offered_orders(conn, mid, (data["order_id"],), _CLOSED_BY[etype], at)
        rows = repo.run(conn, _FINANCED_ORDER, {"p_merchant": mid, "p_order": data["order_id"]}).all()
        if not rows:
            return
        if amount is not None:
            currency = repo.run(conn, _LOAN, {"p_loan": rows[0].loan_id}).one().currency
            if amount.currency != currency:
                # Not comparable with what the order was expected to bring back: refused (dead-lettered for
                # ops), never subtracted as if it were the loan's currency.
                raise EventRejected(f"{etype} {event['id']}: amount in {amount.currency}, the financed order's "
                                    f"loan is in {currency}")
        ref = data.get(_SHORTFALL_REFS.get(etype, ""))
        if ref is not None and amount is not None:
            # Once per refund_id / chargeback_id, at the largest amount reported under it (as the underwriter
            # counts it): one re-sent under another event id moves only what it adds to the amount counted.
            increase = self._reference_increase(conn, etype, mid, f"{data['order_id']}:{ref}", amount.amount)
            if increase is None:
                return  # the same refund or chargeback resent under another event id, no larger than counted
            amount = Money(increase, amount.currency)
        for row in rows:
            left = 0 if amount is None else max(0, row.expected - amount.amount)
            repo.run(conn, _SET_FINANCED, {
                "p_order": row.order_id, "p_loan": row.loan_id, "p_expected": left,
                "p_state": "open" if left else _CLOSED_BY[etype]})
        self._refresh_instruction(conn, mid, at, f"{event['type']}:{event['id']}")

    def _refresh_instruction(self, conn: sa.Connection, mid: str, at: datetime, cause: str) -> None:
        """Publish collection.instruction when what the merchant owes (or the rate) changed."""
        merchant = repo.run(conn, _INSTRUCTION_STATE, {"p_merchant": mid}).first()  # two columns, not the row
        if merchant is None:
            raise KeyError(f"unknown merchant {mid!r}")
        open_ = repo.open_loans(conn, mid)
        currency = open_[0].principal_due.currency if open_ else (
            (merchant.last_instruction or {}).get("owed", {}).get("currency") or merchant.currency)
        if currency is None:
            return
        # One currency per instruction (acceptance refuses a second currency while a loan is owed).
        open_ = [ln for ln in open_ if ln.principal_due.currency == currency]
        # Charged-off loans are still owed: what is left of their write-off stays in the instruction.
        written_off = [(str(r.loan_id), Money(int(r.loss), currency))
                       for r in repo.run(conn, _UNRECOVERED, {"p_merchant": mid, "p_currency": currency}).all()]
        ins = coll.instruction(open_, currency, self.settings.withhold_rate_bps,
                               self.settings.shortfall_withhold_rate_bps, written_off)
        data = {"owed": ins.owed.to_json(), "withhold_rate_bps": ins.withhold_rate_bps, "loan_ids": list(ins.loan_ids)}
        if ins.loan_ids:
            # Receivables still financed: the marketplace withholds their payouts first, in full (up to owed).
            financed = repo.run(conn, _FINANCED_OPEN, {"p_merchant": mid, "p_loans": list(ins.loan_ids)}
                                    ).scalars().all()
            data["financed_order_ids"] = list(financed)
        last = dict(merchant.last_instruction or {})
        last_time = last.pop(_INSTRUCTION_TIME, None)
        if (merchant.last_instruction is not None and last == data) or (
                merchant.last_instruction is None and ins.owed.is_zero()):
            return
        # Never dated before the merchant's previous instruction: an event dated earlier that arrives later (a late
        # refund, a back-dated settlement) changes what is asked from now on, and a consumer that keeps the latest
        # instruction by time must not take the older one for current.
        if isinstance(last_time, str) and (previous := parse_rfc3339(last_time)) > at:
            at = previous
        repo.run(conn, _SET_INSTRUCTION, {"p_merchant": mid,
                                          "p_instruction": {**data, _INSTRUCTION_TIME: format_rfc3339(at)}})
        self._outbox().new(conn, topic=topics.COLLECTIONS, etype="collection.instruction", merchant_id=mid,
                           data=data, time=at, event_id=deterministic_id("collection.instruction", mid, cause))

    # ----------------------------------------------------------------- aging
    def age(self, now: datetime) -> None:
        """Expire offers, move loans through the delinquency buckets and charge off at the threshold."""
        touched: set[str] = set()
        with self._tx() as conn:
            self._expire_offers(conn, now)
            dpd_only: list[dict[str, Any]] = []  # loans whose only change is the day count: one executemany
            for loan in repo.run(conn, _OVERDUE_LOCKED if self._pg else _OVERDUE, {"p_now": now}).all():
                if self._age_loan(conn, loan, now, dpd_only):
                    touched.add(loan.merchant_id)
            if dpd_only:
                repo.run(conn, _SET_DPD, dpd_only)
            for mid in sorted(touched):
                self._refresh_instruction(conn, mid, now, f"aging:{format_rfc3339(now)}")
            if self._pruned_at is None or now - self._pruned_at >= timedelta(hours=1) or now < self._pruned_at:
                repo.run(conn, _PRUNE_CLOSED, {"p_before": now - timedelta(days=self.settings.closed_orders_retention_days)})
                repo.run(conn, _PRUNE_ORDER_AMOUNTS, {"p_before": now - _ORDER_AMOUNTS_RETENTION})
                pruned = now
            else:
                pruned = self._pruned_at
        self._pruned_at = pruned
        self._after_commit()

    def _expire_offers(self, conn: sa.Connection, now: datetime) -> None:
        expiring = _EXPIRING_PG if self._pg else _EXPIRING_SQLITE
        for offer_id, mid in repo.run(conn, expiring, {"p_now": now}).all():
            if not repo.run(conn, _EXPIRE_OFFER, {"p_offer": offer_id}).rowcount:
                continue  # accepted (or withdrawn) meanwhile
            self._outbox().new(conn, topic=None, etype="loan_offer.expired", merchant_id=mid,
                               data={"offer_id": offer_id, "reasons": [{"code": "expired", "text": "offer expired"}]},
                               time=now, event_id=deterministic_id("loan_offer.expired", offer_id))

    def _age_loan(self, conn: sa.Connection, loan: Any, now: datetime, dpd_only: list[dict[str, Any]]) -> bool:
        dpd = aging.days_past_due(loan.due_at, now)
        if dpd < (loan.dpd or 0):
            # An aging pass at an earlier time than one already applied (a late `age --now`, a clock that went
            # back): a loan never ages backwards, nor is told again that it entered an earlier bucket.
            return False
        remaining = repo.money(loan.principal_due + loan.fee_due, loan.currency)
        ob = self._outbox()
        if aging.should_charge_off(dpd, self.settings.charge_off_dpd):
            transition(LoanState(loan.state), LoanState.DELINQUENT)  # charge-off only follows delinquency
            repo.post_entry(conn, ledger.charge_off(f"charge_off:{loan.loan_id}", loan.loan_id,
                                                    Money(loan.principal_due, loan.currency),
                                                    Money(loan.fee_due, loan.currency)), loan.merchant_id, now)
            repo.run(conn, _CHARGE_OFF, {"p_loan": loan.loan_id, "p_dpd": dpd, "p_at": now})
            self._audit(conn, "system", "charge_off", loan.merchant_id, loan.loan_id, "charged_off",
                        {"amount": remaining, "days_past_due": dpd})
            ob.new(conn, topic=topics.LOANS, etype="loan.charged_off", merchant_id=loan.merchant_id,
                   data={"loan_id": loan.loan_id, "amount": remaining}, time=now,
                   event_id=deterministic_id("loan.charged_off", loan.loan_id))
            self.metrics.charge_offs.labels(loan.currency).inc()
            return True
        name = aging.bucket(dpd)
        if name is None or name == loan.bucket:
            if dpd != loan.dpd:
                dpd_only.append({"p_loan": loan.loan_id, "p_dpd": dpd})
            return False
        transition(LoanState(loan.state), LoanState.DELINQUENT)
        repo.run(conn, _SET_DELINQUENT, {"p_loan": loan.loan_id, "p_dpd": dpd, "p_bucket": name})
        ob.new(conn, topic=topics.LOANS, etype="loan.delinquent", merchant_id=loan.merchant_id, data={
            "loan_id": loan.loan_id, "days_past_due": dpd, "bucket": name, "remaining": remaining}, time=now,
            event_id=deterministic_id("loan.delinquent", loan.loan_id, name))
        return True

    # ----------------------------------------------------------------- outbox relay and webhooks
    def relay_outbox(self, limit: int = 500) -> int:
        """Publish unsent outbox rows in order; returns how many were published."""
        from services.disbursement.adapters.dispatcher import relay_batch

        if self.publisher is None or self._relaying:
            return 0  # re-entrant call from an in-process bus: the outer loop picks the new rows up
        self._relaying = True
        self._outbox_written = False  # rows written from now on are relayed by the loop below or the next call
        try:
            total = 0
            while True:
                n = relay_batch(self, limit)
                total += n
                if n < limit:
                    return total
        finally:
            self._relaying = False

    def replay_dead_webhooks(self, merchant_id: str | None = None, actor: str = "operator") -> int:
        """Queue dead-lettered webhooks again (one merchant's, or all), due now with a fresh attempt count, and
        re-enable their endpoints (the named merchant's in any case: a disabled endpoint holds its pending
        deliveries too); returns how many. The same webhook-id is sent: a receiver that got it
        before acknowledges it without acting twice (verifier: WebhookDuplicate)."""
        from services.disbursement.adapters.orm import webhook_deliveries as wd

        now = self.clock()
        where = [wd.c.state == "dead"]
        if merchant_id is not None:
            where.append(wd.c.merchant_id == merchant_id)
        with self._tx() as conn:
            owners = sorted(set(conn.execute(sa.select(wd.c.merchant_id).where(*where)).scalars()))
            if merchant_id is not None and merchant_id not in owners:
                owners.append(merchant_id)  # its endpoint may be disabled with deliveries still pending
            n = conn.execute(sa.update(wd).where(*where).values(
                state="pending", attempts=0, next_attempt_at=now, finished_at=None)).rowcount
            if owners:
                conn.execute(sa.update(merchants).where(merchants.c.merchant_id.in_(owners))
                             .values(webhook_enabled=True, webhook_failures=0))
            self._audit(conn, actor, "webhooks_replayed", merchant_id, None, "ok",
                        {"deliveries": n, "merchants": len(owners)})
        return int(n)

    def dispatch_webhooks(self, now: datetime, limit: int = 100) -> int:
        """Deliver due webhooks; returns the number of delivery attempts made."""
        from services.disbursement.adapters.dispatcher import dispatch

        return dispatch(self, now, limit)


def topics_marketplace_types() -> frozenset[str]:
    from schemas.codec import MARKETPLACE_TYPES

    return frozenset(MARKETPLACE_TYPES)


_MARKETPLACE_TYPES = topics_marketplace_types()
# What a financed order that will not (fully) settle becomes, and the field naming each partial event once.
_CLOSED_BY = {"order.cancelled": "cancelled", "order.refunded": "refunded", "order.chargeback": "charged_back"}
_SHORTFALL_REFS = {"order.refunded": "refund_id", "order.chargeback": "chargeback_id"}


_ENTRY_ID_MAX = 128  # journal_entries.entry_id
_REFUND_ID_MAX = 160  # merchant_refunds.refund_id


def _fit(key: str, limit: int = _ENTRY_ID_MAX) -> str:
    """A derived id that fits its column: unchanged when short enough, else its head plus a hash of the
    whole (ids may be 128 characters each, so `repayment:<loan>:<settlement>` can exceed the column)."""
    if len(key) <= limit:
        return key
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]
    return f"{key[:limit - 41]}~{digest}"


def _is_id(value: Any) -> bool:
    """schemas' Id: 1-128 printable ASCII characters, no space or control character."""
    return isinstance(value, str) and 0 < len(value) <= _MAX_ID and all("\x21" <= c <= "\x7e" for c in value)


def _check_payout_id(payout_id: Any) -> None:
    """A rail's payout id is recorded on the loan and announced in loan.disbursed (schemas: Id, 1-128 printable
    ASCII): one that is not (too long, a space, a control character, not text) cannot be recorded, so the
    answer is a rail error (PayoutFailed). The loan stays `accepted` and the retry, with the same idempotency
    key, asks again; the cap on attempts parks it for ops if the rail keeps answering so."""
    if not _is_id(payout_id):
        shown = repr(payout_id)[:60]
        raise PayoutFailed(f"the rail answered a payout id that cannot be recorded (1-128 printable ASCII "
                           f"characters): {shown}")


def _offer_problem(amount: Money, fee: Money, due_at: datetime, expires_at: datetime, at: datetime,
                   order_ids: list[Any], max_term_days: int = 60) -> str | None:
    """Why an offer cannot be stored as a loan to be, or None. The underwriter never sends such an offer;
    one that arrives anyway (a bug, a hand-made event) is refused here rather than lent on."""
    if fee.currency != amount.currency:
        return f"fee in {fee.currency}, amount in {amount.currency}"
    if amount.amount <= 0 or fee.amount < 0:
        return f"amount {amount.amount} and fee {fee.amount} must be > 0 and >= 0"
    if not all(_is_id(o) for o in order_ids):
        return "order_ids must be ids (1-128 printable ASCII characters, schemas: Id)"
    if len(set(order_ids)) != len(order_ids):
        return "an order is named twice in order_ids"
    if due_at <= at:
        return f"due_at {format_rfc3339(due_at)} is not after the offer ({format_rfc3339(at)})"
    if expires_at <= at:
        return f"expires_at {format_rfc3339(expires_at)} is not after the offer ({format_rfc3339(at)})"
    if due_at > at + timedelta(days=max_term_days):
        return f"due_at {format_rfc3339(due_at)} is more than {max_term_days} days after the offer"
    return None


def _orders_problem(orders: Any, order_ids: list[Any], currency: str) -> str | None:
    """Why an offer's optional per-order amounts (what each financed order is expected to bring back) cannot
    be used, or None: read at acceptance, a malformed one would fail every acceptance of the offer."""
    if orders is None:
        return None
    if not isinstance(orders, list):
        return "orders must be a list"
    for o in orders:
        amount = o.get("amount") if isinstance(o, dict) else None
        if not isinstance(o, dict) or o.get("order_id") not in order_ids or not isinstance(amount, dict) \
                or type(amount.get("amount")) is not int or amount["amount"] < 0 or amount.get("currency") != currency:
            return f"orders must name order_ids with a non-negative amount in {currency}"
    return None


def _check_secret(secret: str) -> None:
    """A webhook secret given by an operator: whsec_ + base64 of 24 to 64 random bytes (Standard Webhooks);
    a short one (a few bytes) could be found by trying every value against one signed delivery."""
    size = len(secret_bytes(secret))
    if not 24 <= size <= 64:
        raise BadSecret(f"a webhook secret must hold 24 to 64 bytes, this one holds {size}")


def _non_negative(event: dict[str, Any], field: str) -> Money:
    """The event's Money `field`; a negative amount is refused (only a record produced straight to the topic
    can carry one: ingest refuses it)."""
    money = Money.from_json(event["data"][field])
    if money.amount < 0:
        raise EventRejected(f"{event['type']} {event['id']}: {field} {money.amount} is negative")
    return money


def _text(value: Any, what: str) -> str:
    """`value` when it is text a database can store as an id, else EventRejected: an integer or an object
    where an id belongs (an event produced straight to the topic) would otherwise fail in PostgreSQL with an
    error the consumer cannot tell from a real fault."""
    if not isinstance(value, str) or not value or not _storable(value):
        raise EventRejected(f"{what} must be non-empty text, got {type(value).__name__}")
    return value


def _storable(text: str) -> bool:
    """True when a text can be a stored id: PostgreSQL refuses NUL in text, UTF-8 refuses lone surrogates."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _order_amounts(orders: list[dict[str, Any]], currency: str) -> dict[str, int | None]:
    """Order id -> what the settlement paid for it in the withheld currency (None when not stated)."""
    out: dict[str, int | None] = {}
    for o in orders:
        if not isinstance(o, dict) or not isinstance(o.get("order_id"), str):
            continue  # an order the settlement cannot name repays no particular loan; the money still counts
        amount = o.get("amount")
        ok = isinstance(amount, dict) and amount.get("currency") == currency and isinstance(amount.get("amount"), int)
        out[o["order_id"]] = amount["amount"] if ok else None  # type: ignore[index]
    return out
