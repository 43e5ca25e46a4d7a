"""Indexes for the per-merchant lookups that read a merchant's whole history on every call, so long
replays slowed down with the size of their biggest sellers: the open financed orders of a merchant
(collection instructions and settlements), the merchant's latest credit limit (acceptances) and the
merchant's loans by state (acceptances, instructions). Purely additive; every query keeps its results.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_financed_orders_merchant_state_order", "financed_orders",
                    ["merchant_id", "state", "order_id"], unique=False)
    op.create_index("ix_credit_limits_merchant_time", "credit_limits", ["merchant_id", "event_time", "id"],
                    unique=False)
    op.create_index("ix_loans_merchant_state", "loans", ["merchant_id", "state"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_loans_merchant_state", table_name="loans")
    op.drop_index("ix_credit_limits_merchant_time", table_name="credit_limits")
    op.drop_index("ix_financed_orders_merchant_state_order", table_name="financed_orders")
