"""order_amounts: what each order was paid (order.paid), per merchant, the first amount kept. A loan's financed
orders are each expected to bring back their own amount's share of what the loan owes (financed_orders.expected),
not an equal share: a financed order refunded in full is then closed like a cancelled one instead of staying open
with part of an equal share still expected. Offers that name their orders' amounts (loan_offer.created `orders`)
are split on those. Rows older than any receivable an offer may name are pruned by the aging pass.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "order_amounts",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("order_id", sa.String(128), primary_key=True),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_order_amounts_paid_at", "order_amounts", ["paid_at"])  # retention pruning


def downgrade() -> None:
    op.drop_index("ix_order_amounts_paid_at", table_name="order_amounts")
    op.drop_table("order_amounts")
