"""The disbursement schema's migration round trip, shared by the SQLite and PostgreSQL tests."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa


def down_and_up_again(engine: sa.Engine, to: str, present: Callable[[sa.Connection], list[bool]]) -> None:
    """Upgrade to the newest revision, downgrade to `to` (everything `present` looks for gone), upgrade again
    (all of it back, at the same revision)."""
    from alembic import command

    from services.disbursement.migrations import alembic_config, current, upgrade

    upgrade(engine)
    head = current(engine)
    with engine.begin() as conn:
        command.downgrade(alembic_config(connection=conn), to)
    assert current(engine) == to
    with engine.connect() as conn:
        assert not any(present(conn)), f"downgraded to {to}, yet still there: {present(conn)}"
    upgrade(engine)
    assert current(engine) == head
    with engine.connect() as conn:
        assert all(present(conn)), f"upgraded again to {head}, yet missing: {present(conn)}"


def tables(conn: sa.Connection) -> set[str]:
    return set(sa.inspect(conn).get_table_names())


def columns(conn: sa.Connection, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(conn).get_columns(table)}
