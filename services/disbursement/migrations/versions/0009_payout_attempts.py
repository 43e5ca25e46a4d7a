"""payout_attempts and payout_parked_at on loans and merchant_refunds: a payout (a loan's, or the return of an
overpayment) that keeps failing transiently is no longer retried for ever. Each failed attempt is counted; past
`payout_max_attempts` or `payout_max_age_seconds` it is parked (payout_parked_at set): recovery skips it until
ops resume it (or, for a loan, cancel it) (docs/runbook.md, FloatbridgePayoutsParked). Rows migrated from
before start at 0 attempts, not parked.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


_TABLES = ("loans", "merchant_refunds")


def upgrade() -> None:
    for table in _TABLES:
        op.add_column(table, sa.Column("payout_attempts", sa.Integer, nullable=False, server_default="0"))
        op.add_column(table, sa.Column("payout_parked_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("payout_parked_at")
            batch.drop_column("payout_attempts")
