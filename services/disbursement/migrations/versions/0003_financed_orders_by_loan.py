"""Indexes for lookups that scanned whole tables: financed_orders by loan (what a loan still expects
from its financed orders is summed per loan whenever a collection instruction is refreshed) and
idempotency_keys by offer (the stored answer is updated when the loan is disbursed).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_financed_orders_loan_id"), "financed_orders", ["loan_id"], unique=False)
    op.create_index(op.f("ix_idempotency_keys_offer_id"), "idempotency_keys", ["offer_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_idempotency_keys_offer_id"), table_name="idempotency_keys")
    op.drop_index(op.f("ix_financed_orders_loan_id"), table_name="financed_orders")
