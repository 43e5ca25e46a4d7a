"""Index for the daily offer expiry: open offers due to expire were found by scanning every offer ever
made, once per aging pass, so long replays slowed down with their history. (state, expires_at) finds the
few open offers past their expiry directly. Purely additive; the expiry query now states its order
explicitly (see DisbursementService._expire_offers), so the index does not change which offers expire
or in which order their loan_offer.expired events are written.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_offers_state_expires_at", "offers", ["state", "expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_offers_state_expires_at", table_name="offers")
