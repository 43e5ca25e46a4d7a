"""The ledger balance invariant as a database constraint on SQLite too (embedded mode), checked at COMMIT as
PostgreSQL's deferred constraint trigger (0002) is: an entry whose lines do not sum to zero per currency is
refused however it was written (code, a script, the sqlite3 shell with foreign keys on).

SQLite has no deferred triggers, but it has deferred foreign keys, checked at COMMIT. A trigger on every new
journal line marks its (entry, currency) in `journal_open_balances` and removes the mark once the entry's lines
in that currency sum to zero; each mark references a row of `journal_never` (always empty) through a
DEFERRABLE INITIALLY DEFERRED foreign key, and cannot be deleted by hand while unbalanced nor updated. A transaction that leaves any entry unbalanced therefore leaves a
dangling reference, and its COMMIT fails with "FOREIGN KEY constraint failed": nothing of it is kept. Between
statements of one transaction an entry may be half written, exactly as on PostgreSQL. The engine turns
foreign keys on for every connection (bootstrap.make_engine: PRAGMA foreign_keys=ON).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_SUM = ("(SELECT COALESCE(SUM(CASE WHEN side = 'D' THEN amount ELSE -amount END), 0) FROM journal_lines "
        "WHERE entry_id = {e}.entry_id AND currency = {e}.currency)")

_SQLITE_UP = [
    "CREATE TABLE journal_never (id INTEGER PRIMARY KEY)",
    """
    CREATE TABLE journal_open_balances (
        entry_id VARCHAR(128) NOT NULL,
        currency VARCHAR(3) NOT NULL,
        unbalanced INTEGER NOT NULL DEFAULT 1
            REFERENCES journal_never (id) DEFERRABLE INITIALLY DEFERRED,
        PRIMARY KEY (entry_id, currency)
    )
    """,
    # Rows of journal_never would satisfy the reference: it stays empty.
    "CREATE TRIGGER journal_never_stays_empty BEFORE INSERT ON journal_never "
    "BEGIN SELECT RAISE(ABORT, 'journal_never stays empty (ledger balance guard)'); END",
    # After each line: the (entry, currency) is marked open, and unmarked once its lines sum to zero (read from
    # the journal itself, which is append-only, so nothing but more lines can change that sum).
    f"""
    CREATE TRIGGER journal_lines_balance_tracked AFTER INSERT ON journal_lines
    BEGIN
        INSERT OR IGNORE INTO journal_open_balances (entry_id, currency) VALUES (NEW.entry_id, NEW.currency);
        DELETE FROM journal_open_balances
         WHERE entry_id = NEW.entry_id AND currency = NEW.currency AND {_SUM.format(e="NEW")} = 0;
    END
    """,
    # The marks cannot be removed or changed by hand: only a balanced (entry, currency) is unmarked.
    f"CREATE TRIGGER journal_open_balances_kept BEFORE DELETE ON journal_open_balances "
    f"WHEN {_SUM.format(e='OLD')} != 0 "
    "BEGIN SELECT RAISE(ABORT, 'journal entry does not balance in this currency'); END",
    "CREATE TRIGGER journal_open_balances_no_update BEFORE UPDATE ON journal_open_balances "
    "BEGIN SELECT RAISE(ABORT, 'journal_open_balances is maintained by the journal triggers'); END",
]
_SQLITE_DOWN = [
    "DROP TRIGGER journal_open_balances_no_update",
    "DROP TRIGGER journal_open_balances_kept",
    "DROP TRIGGER journal_lines_balance_tracked",
    "DROP TRIGGER journal_never_stays_empty",
    "DROP TABLE journal_open_balances",
    "DROP TABLE journal_never",
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for stmt in _SQLITE_UP:
            op.execute(stmt)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for stmt in _SQLITE_DOWN:
            op.execute(stmt)
