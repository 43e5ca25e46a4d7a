"""merchants.status_at: the event time of the latest merchant.onboarded/updated applied, so an older one
re-sent later (a sloppy marketplace) can no longer lift a suspension or close-out. NULL for merchants
migrated from before: the next update sets it.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("merchants", sa.Column("status_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("merchants") as batch:
        batch.drop_column("status_at")
