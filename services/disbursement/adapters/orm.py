"""SQLAlchemy Core tables. The schema itself is created by the Alembic migrations in ../migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

metadata = sa.MetaData()

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrement needs INTEGER


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, whatever the backend stores (SQLite keeps naive text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(name: str, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, UTCDateTime(), nullable=nullable)


merchants = sa.Table(
    "merchants", metadata,
    sa.Column("merchant_id", sa.String(128), primary_key=True),
    sa.Column("currency", sa.String(3)),
    sa.Column("status", sa.String(16), nullable=False, server_default="active"),
    sa.Column("api_key_hash", sa.String(64), unique=True),
    sa.Column("webhook_url", sa.String(2048)),
    sa.Column("webhook_secrets", sa.JSON, nullable=False, default=list),
    sa.Column("event_types", sa.JSON, nullable=False, default=list),
    sa.Column("webhook_enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("webhook_failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_instruction", sa.JSON),
    # Event time of the latest merchant.onboarded/updated applied (migration 0007): an older one re-sent later
    # never overrides it (a stale "active" must not lift a suspension).
    _ts("status_at", nullable=True),
)

control = sa.Table(
    "control", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

processed_events = sa.Table(
    "processed_events", metadata,
    sa.Column("event_id", sa.String(128), primary_key=True),
    sa.Column("event_type", sa.String(64), nullable=False),
    _ts("processed_at"),
    # The amount counted for a refund or chargeback reference marker (migration 0012); NULL on every other row.
    sa.Column("amount", sa.BigInteger, nullable=True),
)

credit_limits = sa.Table(
    "credit_limits", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("merchant_id", sa.String(128), nullable=False, index=True),
    sa.Column("event_id", sa.String(128), nullable=False, unique=True),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("limit_amount", sa.BigInteger, nullable=False),
    sa.Column("available_amount", sa.BigInteger, nullable=False),
    sa.Column("trigger_event_id", sa.String(128)),
    _ts("event_time"),
    sa.Index("ix_credit_limits_merchant_time", "merchant_id", "event_time", "id"),
)

offers = sa.Table(
    "offers", metadata,
    sa.Column("offer_id", sa.String(128), primary_key=True),
    sa.Column("merchant_id", sa.String(128), nullable=False, index=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("fee", sa.BigInteger, nullable=False),
    sa.Column("apr", sa.String(32), nullable=False),
    _ts("due_at"),
    _ts("expires_at"),
    _ts("created_at"),
    sa.Column("order_ids", sa.JSON, nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.CheckConstraint("amount > 0 AND fee >= 0", name="offers_amounts_valid"),
    sa.Index("ix_offers_state_expires_at", "state", "expires_at"),
)

loans = sa.Table(
    "loans", metadata,
    sa.Column("loan_id", sa.String(64), primary_key=True),
    sa.Column("offer_id", sa.String(128), sa.ForeignKey("offers.offer_id"), nullable=False, unique=True),
    sa.Column("merchant_id", sa.String(128), nullable=False, index=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("principal", sa.BigInteger, nullable=False),
    sa.Column("fee", sa.BigInteger, nullable=False),
    sa.Column("principal_due", sa.BigInteger, nullable=False),
    sa.Column("fee_due", sa.BigInteger, nullable=False),
    sa.Column("apr", sa.String(32), nullable=False),
    _ts("due_at"),
    _ts("accepted_at"),
    _ts("disbursed_at", nullable=True),
    _ts("closed_at", nullable=True),
    sa.Column("payout_id", sa.String(128)),
    sa.Column("limit_id", sa.BigInteger),
    sa.Column("dpd", sa.Integer, nullable=False, server_default="0"),
    sa.Column("bucket", sa.String(8)),
    sa.Column("order_ids", sa.JSON, nullable=False),
    # Failed payout attempts and when the loan was parked for ops after too many (migration 0009).
    sa.Column("payout_attempts", sa.Integer, nullable=False, server_default="0"),
    _ts("payout_parked_at", nullable=True),
    sa.CheckConstraint("principal_due >= 0 AND fee_due >= 0", name="loans_dues_non_negative"),
    sa.Index("ix_loans_merchant_state", "merchant_id", "state"),
)

financed_orders = sa.Table(
    "financed_orders", metadata,
    sa.Column("order_id", sa.String(128), primary_key=True),
    sa.Column("loan_id", sa.String(64), sa.ForeignKey("loans.loan_id"), primary_key=True, index=True),
    sa.Column("merchant_id", sa.String(128), nullable=False, index=True),
    sa.Column("expected", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Index("ix_financed_orders_merchant_state_order", "merchant_id", "state", "order_id"),
)

# Orders settled, cancelled, refunded or charged back, per merchant (first closure kept; migration 0011): an offer
# backed by one is refused at acceptance even when its loan_offer.created arrived after the closure.
closed_orders = sa.Table(
    "closed_orders", metadata,
    sa.Column("merchant_id", sa.String(128), primary_key=True),
    sa.Column("order_id", sa.String(128), primary_key=True),
    sa.Column("change", sa.String(16), nullable=False),
    _ts("closed_at"),
    sa.Index("ix_closed_orders_closed_at", "closed_at"),
)

# What each order was paid, per merchant (order.paid; first kept; migration 0013): a loan's financed orders are
# each expected to bring back their own amount's share of it. Rows older than the receivables an offer may
# name are pruned by the aging pass.
order_amounts = sa.Table(
    "order_amounts", metadata,
    sa.Column("merchant_id", sa.String(128), primary_key=True),
    sa.Column("order_id", sa.String(128), primary_key=True),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    _ts("paid_at"),
    sa.Index("ix_order_amounts_paid_at", "paid_at"),
)

journal_entries = sa.Table(
    "journal_entries", metadata,
    sa.Column("entry_id", sa.String(128), primary_key=True),
    sa.Column("kind", sa.String(48), nullable=False),
    sa.Column("loan_id", sa.String(64), index=True),
    sa.Column("merchant_id", sa.String(128), index=True),
    sa.Column("reverses", sa.String(128)),
    _ts("created_at"),
)

journal_lines = sa.Table(
    "journal_lines", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("entry_id", sa.String(128), sa.ForeignKey("journal_entries.entry_id"), nullable=False, index=True),
    sa.Column("account", sa.String(48), nullable=False),
    sa.Column("side", sa.String(1), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.CheckConstraint("amount > 0", name="journal_lines_amount_positive"),
    sa.CheckConstraint("side IN ('D', 'C')", name="journal_lines_side_valid"),
)

payouts = sa.Table(
    "payouts", metadata,
    sa.Column("payout_id", sa.String(128), primary_key=True),
    sa.Column("loan_id", sa.String(64), sa.ForeignKey("loans.loan_id"), nullable=False, unique=True),
    sa.Column("merchant_id", sa.String(128), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    _ts("created_at"),
)

merchant_refunds = sa.Table(
    "merchant_refunds", metadata,
    sa.Column("refund_id", sa.String(160), primary_key=True),
    sa.Column("merchant_id", sa.String(128), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("payout_id", sa.String(128)),
    _ts("created_at"),
    # Failed payout attempts and when the refund was parked for ops after too many (migration 0009).
    sa.Column("payout_attempts", sa.Integer, nullable=False, server_default="0"),
    _ts("payout_parked_at", nullable=True),
)

sandbox_payouts = sa.Table(
    "sandbox_payouts", metadata,
    sa.Column("idempotency_key", sa.String(160), primary_key=True),
    sa.Column("payout_id", sa.String(128), nullable=False, unique=True),
    sa.Column("merchant_id", sa.String(128), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    _ts("created_at"),
)

outbox = sa.Table(
    "outbox", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("event_id", sa.String(128), nullable=False, unique=True),
    sa.Column("topic", sa.String(128), nullable=False),
    sa.Column("key", sa.String(128), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    _ts("created_at"),
    _ts("sent_at", nullable=True),
    sa.Index("outbox_unsent", "sent_at", "id"),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("msg_id", sa.String(128), nullable=False),
    sa.Column("merchant_id", sa.String(128), nullable=False),
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    _ts("next_attempt_at"),
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.Text),
    _ts("created_at"),
    _ts("finished_at", nullable=True),
    sa.UniqueConstraint("msg_id", "merchant_id", name="webhook_deliveries_once"),
    sa.Index("webhook_deliveries_due", "state", "next_attempt_at"),
)

idempotency_keys = sa.Table(
    "idempotency_keys", metadata,
    sa.Column("merchant_id", sa.String(128), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("offer_id", sa.String(128), nullable=False, index=True),
    sa.Column("status_code", sa.Integer, nullable=False),
    sa.Column("response", sa.JSON, nullable=False),
    _ts("created_at"),
)


# Append-only (triggers refuse UPDATE, DELETE and TRUNCATE: migration 0006): every acceptance decision, payout,
# refund payout, charge-off and operator action, with who made it. Money movements themselves are the journal.
audit_log = sa.Table(
    "audit_log", metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    _ts("at"),
    sa.Column("actor", sa.String(160), nullable=False),
    sa.Column("action", sa.String(48), nullable=False),
    sa.Column("merchant_id", sa.String(128)),
    sa.Column("ref", sa.String(160)),
    sa.Column("outcome", sa.String(64), nullable=False),
    sa.Column("detail", sa.JSON, nullable=False),
    sa.Index("ix_audit_log_merchant", "merchant_id", "id"),
)
