"""A refund of a financed order re-sent under its refund_id with a larger amount, on real PostgreSQL: the larger
amount counts and only the difference moves onto the withhold (the SQLite twin is in
tests/unit/test_disbursement_refund_resent.py); and migration 0012 goes down and up again."""

from __future__ import annotations

from typing import Any

import pytest

from services.disbursement.bootstrap import make_engine
from tests.migration_roundtrip import columns, down_and_up_again
from tests.unit.disbursement_helpers import pg_service_env
from tests.unit.test_disbursement_refund_resent import run_resent_refund_scenario

pytestmark = pytest.mark.integration


@pytest.fixture()
def env(pg_schema_url: str) -> Any:
    with pg_service_env(pg_schema_url) as e:
        yield e


def test_on_postgres_a_refund_resent_with_a_larger_amount_moves_only_the_difference_onto_the_withhold(
        env: dict[str, Any]) -> None:
    run_resent_refund_scenario(env)


def test_on_postgres_migration_0012_downgrades_to_0011_and_upgrades_again(pg_schema_url: str) -> None:
    eng = make_engine(pg_schema_url)
    try:
        down_and_up_again(eng, "0011", lambda conn: ["amount" in columns(conn, "processed_events")])
    finally:
        eng.dispose()
