"""The journal takes only the ledger's own accounts and ISO 4217-shaped currency codes: a line on an
invented account ("free_money") balanced by another one passed the balance trigger before. PostgreSQL gets
CHECK constraints; SQLite (no ALTER TABLE ... ADD CONSTRAINT) a BEFORE INSERT trigger with the same rule.
New accounts need a migration that widens the list.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

ACCOUNTS = ("loan_principal_receivable", "fee_receivable", "fee_income", "funding_cash", "merchant_payable",
            "charge_off_loss")
_IN = ", ".join(f"'{a}'" for a in ACCOUNTS)

_PG_UP = [
    f"ALTER TABLE journal_lines ADD CONSTRAINT journal_lines_account_known CHECK (account IN ({_IN}))",
    "ALTER TABLE journal_lines ADD CONSTRAINT journal_lines_currency_code CHECK (currency ~ '^[A-Z]{3}$')",
]
_PG_DOWN = [
    "ALTER TABLE journal_lines DROP CONSTRAINT journal_lines_currency_code",
    "ALTER TABLE journal_lines DROP CONSTRAINT journal_lines_account_known",
]
_SQLITE_UP = [
    "CREATE TRIGGER journal_lines_account_known BEFORE INSERT ON journal_lines "
    f"WHEN NEW.account NOT IN ({_IN}) OR length(NEW.currency) != 3 OR NEW.currency GLOB '*[^A-Z]*' "
    "BEGIN SELECT RAISE(ABORT, 'journal line on an unknown account or currency code'); END",
]
_SQLITE_DOWN = ["DROP TRIGGER journal_lines_account_known"]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for stmt in _PG_UP if dialect == "postgresql" else _SQLITE_UP if dialect == "sqlite" else []:
        op.execute(stmt)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for stmt in _PG_DOWN if dialect == "postgresql" else _SQLITE_DOWN if dialect == "sqlite" else []:
        op.execute(stmt)
