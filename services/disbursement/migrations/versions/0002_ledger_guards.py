"""Ledger guards in the database: balanced entries per currency at commit, append-only journal.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_PG_UP = [
    # Deferred so the lines of one entry can be inserted one by one; checked once at COMMIT.
    """
    CREATE FUNCTION fb_journal_entry_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE bad record;
    BEGIN
        SELECT currency, SUM(CASE WHEN side = 'D' THEN amount ELSE -amount END) AS diff
          INTO bad
          FROM journal_lines WHERE entry_id = NEW.entry_id
         GROUP BY currency
        HAVING SUM(CASE WHEN side = 'D' THEN amount ELSE -amount END) <> 0
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'journal entry % does not balance in %: debits - credits = %',
                NEW.entry_id, bad.currency, bad.diff USING ERRCODE = 'check_violation';
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE CONSTRAINT TRIGGER journal_lines_balanced
    AFTER INSERT ON journal_lines DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION fb_journal_entry_balanced()
    """,
    """
    CREATE FUNCTION fb_journal_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'the journal is append-only (% on %); post a reversing entry instead',
            TG_OP, TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
    END $$
    """,
    "CREATE TRIGGER journal_lines_append_only BEFORE UPDATE OR DELETE ON journal_lines "
    "FOR EACH ROW EXECUTE FUNCTION fb_journal_append_only()",
    "CREATE TRIGGER journal_entries_append_only BEFORE UPDATE OR DELETE ON journal_entries "
    "FOR EACH ROW EXECUTE FUNCTION fb_journal_append_only()",
    "CREATE TRIGGER journal_lines_no_truncate BEFORE TRUNCATE ON journal_lines "
    "FOR EACH STATEMENT EXECUTE FUNCTION fb_journal_append_only()",
    "CREATE TRIGGER journal_entries_no_truncate BEFORE TRUNCATE ON journal_entries "
    "FOR EACH STATEMENT EXECUTE FUNCTION fb_journal_append_only()",
]

_PG_DOWN = [
    "DROP TRIGGER journal_entries_no_truncate ON journal_entries",
    "DROP TRIGGER journal_lines_no_truncate ON journal_lines",
    "DROP TRIGGER journal_entries_append_only ON journal_entries",
    "DROP TRIGGER journal_lines_append_only ON journal_lines",
    "DROP FUNCTION fb_journal_append_only()",
    "DROP TRIGGER journal_lines_balanced ON journal_lines",
    "DROP FUNCTION fb_journal_entry_balanced()",
]

# SQLite has no deferred constraint triggers; the balance rule is enforced in code there (embedded mode).
_SQLITE_UP = [
    f"CREATE TRIGGER {table}_no_{op_.lower()} BEFORE {op_} ON {table} "
    f"BEGIN SELECT RAISE(ABORT, 'the journal is append-only; post a reversing entry instead'); END"
    for table in ("journal_lines", "journal_entries")
    for op_ in ("UPDATE", "DELETE")
]
_SQLITE_DOWN = [
    f"DROP TRIGGER {table}_no_{op_.lower()}" for table in ("journal_lines", "journal_entries") for op_ in ("UPDATE", "DELETE")
]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for stmt in _PG_UP if dialect == "postgresql" else _SQLITE_UP if dialect == "sqlite" else []:
        op.execute(stmt)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for stmt in _PG_DOWN if dialect == "postgresql" else _SQLITE_DOWN if dialect == "sqlite" else []:
        op.execute(stmt)
