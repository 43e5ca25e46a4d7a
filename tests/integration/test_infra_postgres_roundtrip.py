"""The test PostgreSQL answers SQLAlchemy 2 and the per-test schema fixture isolates and cleans up."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

pytestmark = pytest.mark.integration


def test_row_written_in_unique_schema_reads_back_and_schema_is_dropped(
    pg_url: str, unique_name: Callable[[str], str]
) -> None:
    schema = unique_name("rt")
    engine = create_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            conn.execute(text(f'CREATE TABLE "{schema}".ledger (id serial PRIMARY KEY, amount_minor bigint NOT NULL, currency char(3) NOT NULL)'))
            conn.execute(text(f'INSERT INTO "{schema}".ledger (amount_minor, currency) VALUES (:a, :c)'), {"a": 123456789012, "c": "EUR"})
        with engine.connect() as conn:
            row = conn.execute(text(f'SELECT amount_minor, currency FROM "{schema}".ledger')).one()
        assert (row.amount_minor, row.currency) == (123456789012, "EUR")
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        with engine.connect() as conn:
            left = conn.execute(text("SELECT count(*) FROM information_schema.schemata WHERE schema_name = :s"), {"s": schema}).scalar()
        engine.dispose()
    assert left == 0


def test_pg_schema_url_gives_an_empty_private_schema(pg_schema_url: str) -> None:
    schema = str(make_url(pg_schema_url).query["options"]).split("=", 1)[1]
    engine = create_engine(pg_schema_url)
    try:
        with engine.begin() as conn:
            assert conn.execute(text("SELECT current_schema()")).scalar() == schema
            conn.execute(text("CREATE TABLE t (v int)"))  # unqualified: lands in the private schema
            conn.execute(text("INSERT INTO t VALUES (7)"))
        with engine.connect() as conn:
            found = conn.execute(text("SELECT table_schema FROM information_schema.tables WHERE table_name = 't' AND table_schema = :s"), {"s": schema}).scalar()
            assert found == schema
            assert conn.execute(text("SELECT v FROM t")).scalar() == 7
    finally:
        engine.dispose()
