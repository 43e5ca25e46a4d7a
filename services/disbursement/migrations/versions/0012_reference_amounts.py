"""processed_events.amount: the amount counted for a refund or chargeback of a financed order, kept on its
reference marker ("#order.refunded:<id>", "#order.chargeback:<id>"). A refund re-sent under its refund_id with a
larger amount (the marketplace amended it) moves only the difference onto the withhold; one re-sent with the same
or a smaller amount moves nothing. Markers written before this revision have no amount (NULL): such a re-send is
ignored, as it was before. Every other row (event ids, settlement markers) leaves it NULL.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("processed_events", sa.Column("amount", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("processed_events") as batch:
        batch.drop_column("amount")
