"""closed_orders: every order a settlement paid, or a cancellation, refund or chargeback closed, per merchant
(the first closure kept). An offer is made from the underwriter's view of the merchant; its loan_offer.created
(loan.offers.v1) and the marketplace's settlement.paid or order.cancelled (marketplace.events.v1) travel on
different topics, so the closure may be applied here before the offer arrives. The acceptance then refuses an
offer backed by any closed order (`receivables_changed`), whichever arrived first. Rows older than
`closed_orders_retention_days` (event time) are pruned by the aging pass.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "closed_orders",
        sa.Column("merchant_id", sa.String(128), primary_key=True),
        sa.Column("order_id", sa.String(128), primary_key=True),
        sa.Column("change", sa.String(16), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_closed_orders_closed_at", "closed_orders", ["closed_at"])  # retention pruning


def downgrade() -> None:
    op.drop_index("ix_closed_orders_closed_at", table_name="closed_orders")
    op.drop_table("closed_orders")
