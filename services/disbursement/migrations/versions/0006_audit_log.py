"""Append-only audit trail (DESIGN, Security: decisions and money movements are written to an append-only
audit trail): every acceptance decision (refusals included), payout and its failures, refund payout,
charge-off and operator action (kill switch, merchant registration, secret rotation, API key), with its
actor. The journal stays the record of the money itself. UPDATE, DELETE and TRUNCATE are refused by
triggers on both databases.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_PG_UP = [
    """
    CREATE FUNCTION fb_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'the audit log is append-only (% on %)', TG_OP, TG_TABLE_NAME
            USING ERRCODE = 'restrict_violation';
    END $$
    """,
    "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
    "FOR EACH ROW EXECUTE FUNCTION fb_audit_append_only()",
    "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
    "FOR EACH STATEMENT EXECUTE FUNCTION fb_audit_append_only()",
]
_PG_DOWN = [
    "DROP TRIGGER audit_log_no_truncate ON audit_log",
    "DROP TRIGGER audit_log_append_only ON audit_log",
    "DROP FUNCTION fb_audit_append_only()",
]
_SQLITE_UP = [
    f"CREATE TRIGGER audit_log_no_{op_.lower()} BEFORE {op_} ON audit_log "
    f"BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
    for op_ in ("UPDATE", "DELETE")
]
_SQLITE_DOWN = [f"DROP TRIGGER audit_log_no_{op_.lower()}" for op_ in ("UPDATE", "DELETE")]


def upgrade() -> None:
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    op.create_table(
        "audit_log",
        sa.Column("id", big_id, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(160), nullable=False),
        sa.Column("action", sa.String(48), nullable=False),
        sa.Column("merchant_id", sa.String(128)),
        sa.Column("ref", sa.String(160)),
        sa.Column("outcome", sa.String(64), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
    )
    op.create_index("ix_audit_log_merchant", "audit_log", ["merchant_id", "id"], unique=False)
    dialect = op.get_bind().dialect.name
    for stmt in _PG_UP if dialect == "postgresql" else _SQLITE_UP if dialect == "sqlite" else []:
        op.execute(stmt)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for stmt in _PG_DOWN if dialect == "postgresql" else _SQLITE_DOWN if dialect == "sqlite" else []:
        op.execute(stmt)
    op.drop_index("ix_audit_log_merchant", table_name="audit_log")
    op.drop_table("audit_log")
