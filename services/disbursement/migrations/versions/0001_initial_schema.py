"""initial schema

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('control',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_table('credit_limits',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('merchant_id', sa.String(length=128), nullable=False),
    sa.Column('event_id', sa.String(length=128), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('limit_amount', sa.BigInteger(), nullable=False),
    sa.Column('available_amount', sa.BigInteger(), nullable=False),
    sa.Column('trigger_event_id', sa.String(length=128), nullable=True),
    sa.Column('event_time', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('event_id')
    )
    op.create_index(op.f('ix_credit_limits_merchant_id'), 'credit_limits', ['merchant_id'], unique=False)

    op.create_table('idempotency_keys',
    sa.Column('merchant_id', sa.String(length=128), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('offer_id', sa.String(length=128), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=False),
    sa.Column('response', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('merchant_id', 'key')
    )
    op.create_table('journal_entries',
    sa.Column('entry_id', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=48), nullable=False),
    sa.Column('loan_id', sa.String(length=64), nullable=True),
    sa.Column('merchant_id', sa.String(length=128), nullable=True),
    sa.Column('reverses', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('entry_id')
    )
    op.create_index(op.f('ix_journal_entries_loan_id'), 'journal_entries', ['loan_id'], unique=False)
    op.create_index(op.f('ix_journal_entries_merchant_id'), 'journal_entries', ['merchant_id'], unique=False)

    op.create_table('merchant_refunds',
    sa.Column('refund_id', sa.String(length=160), nullable=False),
    sa.Column('merchant_id', sa.String(length=128), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('payout_id', sa.String(length=128), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('refund_id')
    )
    op.create_table('merchants',
    sa.Column('merchant_id', sa.String(length=128), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('status', sa.String(length=16), server_default='active', nullable=False),
    sa.Column('api_key_hash', sa.String(length=64), nullable=True),
    sa.Column('webhook_url', sa.String(length=2048), nullable=True),
    sa.Column('webhook_secrets', sa.JSON(), nullable=False),
    sa.Column('event_types', sa.JSON(), nullable=False),
    sa.Column('webhook_enabled', sa.Boolean(), server_default=sa.true(), nullable=False),
    sa.Column('webhook_failures', sa.Integer(), server_default='0', nullable=False),
    sa.Column('last_instruction', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('merchant_id'),
    sa.UniqueConstraint('api_key_hash')
    )
    op.create_table('offers',
    sa.Column('offer_id', sa.String(length=128), nullable=False),
    sa.Column('merchant_id', sa.String(length=128), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('fee', sa.BigInteger(), nullable=False),
    sa.Column('apr', sa.String(length=32), nullable=False),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('order_ids', sa.JSON(), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.CheckConstraint('amount > 0 AND fee >= 0', name='offers_amounts_valid'),
    sa.PrimaryKeyConstraint('offer_id')
    )
    op.create_index(op.f('ix_offers_merchant_id'), 'offers', ['merchant_id'], unique=False)

    op.create_table('outbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.String(length=128), nullable=False),
    sa.Column('topic', sa.String(length=128), nullable=False),
    sa.Column('key', sa.String(length=128), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('event_id')
    )
    op.create_index('outbox_unsent', 'outbox', ['sent_at', 'id'], unique=False)

    op.create_table('processed_events',
    sa.Column('event_id', sa.String(length=128), nullable=False),
    sa.Column('event_type', sa.String(length=64), nullable=False),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('event_id')
    )
    op.create_table('sandbox_payouts',
    sa.Column('idempotency_key', sa.String(length=160), nullable=False),
    sa.Column('payout_id', sa.String(length=128), nullable=False),
    sa.Column('merchant_id', sa.String(length=128), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('idempotency_key'),
    sa.UniqueConstraint('payout_id')
    )
    op.create_table('webhook_deliveries',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('msg_id', sa.String(length=128), nullable=False),
    sa.Column('merchant_id', sa.String(length=128), nullable=False),
    sa.Column('event_type', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('msg_id', 'merchant_id', name='webhook_deliveries_once')
    )
    op.create_index('webhook_deliveries_due', 'webhook_deliveries', ['state', 'next_attempt_at'], unique=False)

    op.create_table('journal_lines',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('entry_id', sa.String(length=128), nullable=False),
    sa.Column('account', sa.String(length=48), nullable=False),
    sa.Column('side', sa.String(length=1), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.CheckConstraint("side IN ('D', 'C')", name='journal_lines_side_valid'),
    sa.CheckConstraint('amount > 0', name='journal_lines_amount_positive'),
    sa.ForeignKeyConstraint(['entry_id'], ['journal_entries.entry_id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_journal_lines_entry_id'), 'journal_lines', ['entry_id'], unique=False)

    op.create_table('loans',
    sa.Column('loan_id', sa.String(length=64), nullable=False),
    sa.Column('offer_id', sa.String(length=128), nullable=False),
    sa.Column('merchant_id', sa.String(length=128), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('principal', sa.BigInteger(), nullable=False),
    sa.Column('fee', sa.BigInteger(), nullable=False),
    sa.Column('principal_due', sa.BigInteger(), nullable=False),
    sa.Column('fee_due', sa.BigInteger(), nullable=False),
    sa.Column('apr', sa.String(length=32), nullable=False),
    sa.Column('due_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('accepted_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('disbursed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('payout_id', sa.String(length=128), nullable=True),
    sa.Column('limit_id', sa.BigInteger(), nullable=True),
    sa.Column('dpd', sa.Integer(), server_default='0', nullable=False),
    sa.Column('bucket', sa.String(length=8), nullable=True),
    sa.Column('order_ids', sa.JSON(), nullable=False),
    sa.CheckConstraint('principal_due >= 0 AND fee_due >= 0', name='loans_dues_non_negative'),
    sa.ForeignKeyConstraint(['offer_id'], ['offers.offer_id'], ),
    sa.PrimaryKeyConstraint('loan_id'),
    sa.UniqueConstraint('offer_id')
    )
    op.create_index(op.f('ix_loans_merchant_id'), 'loans', ['merchant_id'], unique=False)
    op.create_index(op.f('ix_loans_state'), 'loans', ['state'], unique=False)

    op.create_table('financed_orders',
    sa.Column('order_id', sa.String(length=128), nullable=False),
    sa.Column('loan_id', sa.String(length=64), nullable=False),
    sa.Column('merchant_id', sa.String(length=128), nullable=False),
    sa.Column('expected', sa.BigInteger(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.ForeignKeyConstraint(['loan_id'], ['loans.loan_id'], ),
    sa.PrimaryKeyConstraint('order_id', 'loan_id')
    )
    op.create_index(op.f('ix_financed_orders_merchant_id'), 'financed_orders', ['merchant_id'], unique=False)

    op.create_table('payouts',
    sa.Column('payout_id', sa.String(length=128), nullable=False),
    sa.Column('loan_id', sa.String(length=64), nullable=False),
    sa.Column('merchant_id', sa.String(length=128), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['loan_id'], ['loans.loan_id'], ),
    sa.PrimaryKeyConstraint('payout_id'),
    sa.UniqueConstraint('loan_id')
    )


def downgrade() -> None:
    op.drop_table('payouts')
    op.drop_index(op.f('ix_financed_orders_merchant_id'), table_name='financed_orders')

    op.drop_table('financed_orders')
    op.drop_index(op.f('ix_loans_state'), table_name='loans')
    op.drop_index(op.f('ix_loans_merchant_id'), table_name='loans')

    op.drop_table('loans')
    op.drop_index(op.f('ix_journal_lines_entry_id'), table_name='journal_lines')

    op.drop_table('journal_lines')
    op.drop_index('webhook_deliveries_due', table_name='webhook_deliveries')

    op.drop_table('webhook_deliveries')
    op.drop_table('sandbox_payouts')
    op.drop_table('processed_events')
    op.drop_index('outbox_unsent', table_name='outbox')

    op.drop_table('outbox')
    op.drop_index(op.f('ix_offers_merchant_id'), table_name='offers')

    op.drop_table('offers')
    op.drop_table('merchants')
    op.drop_table('merchant_refunds')
    op.drop_index(op.f('ix_journal_entries_merchant_id'), table_name='journal_entries')
    op.drop_index(op.f('ix_journal_entries_loan_id'), table_name='journal_entries')

    op.drop_table('journal_entries')
    op.drop_table('idempotency_keys')
    op.drop_index(op.f('ix_credit_limits_merchant_id'), table_name='credit_limits')

    op.drop_table('credit_limits')
    op.drop_table('control')
