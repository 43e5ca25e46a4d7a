"""Fourth-round attacks on real PostgreSQL (migrated schema with its constraints); the SQLite twins and what each
scenario shows are in tests/unit/test_disbursement_attacks_round4.py: a settlement dated before a loan's
disbursement never repays it, instructions never go back in time, a financed order refunded in full is closed,
and migration 0013 goes down and up again."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from services.disbursement.bootstrap import make_engine
from tests.migration_roundtrip import down_and_up_again, tables
from tests.unit.disbursement_helpers import pg_service_env
from tests.unit.test_disbursement_attacks_round4 import (
    run_full_refund_closes_like_a_cancellation_scenario,
    run_late_refund_instruction_not_backwards_scenario,
    run_late_settlement_and_a_charged_off_loan_scenario,
    run_late_settlement_repays_only_the_loans_of_its_time_scenario,
    run_out_of_order_settlements_repaid_at_the_later_one_scenario,
    run_settlement_dated_before_the_disbursement_scenario,
)

pytestmark = pytest.mark.integration


@pytest.fixture()
def env(pg_schema_url: str) -> Any:
    with pg_service_env(pg_schema_url) as e:
        yield e


@pytest.mark.parametrize("back", [timedelta(minutes=30), timedelta(days=100)], ids=["30min", "100days"])
def test_on_postgres_a_settlement_dated_before_the_disbursement_does_not_repay_the_loan_and_is_refunded(
        env: dict[str, Any], back: timedelta) -> None:
    run_settlement_dated_before_the_disbursement_scenario(env, back)


def test_on_postgres_a_late_settlement_repays_only_loans_disbursed_by_its_time(env: dict[str, Any]) -> None:
    run_late_settlement_repays_only_the_loans_of_its_time_scenario(env)


def test_on_postgres_an_instruction_caused_by_a_late_refund_is_not_dated_before_the_previous_one(
        env: dict[str, Any]) -> None:
    run_late_refund_instruction_not_backwards_scenario(env)


def test_on_postgres_a_loan_repaid_by_settlements_out_of_order_is_repaid_at_the_later_one(env: dict[str, Any]) -> None:
    run_out_of_order_settlements_repaid_at_the_later_one_scenario(env)


def test_on_postgres_a_late_settlement_recovers_a_charged_off_loan_only_if_dated_after_its_disbursement(
        env: dict[str, Any]) -> None:
    run_late_settlement_and_a_charged_off_loan_scenario(env)


@pytest.mark.parametrize("closing", ["refunded", "cancelled"])
def test_on_postgres_a_financed_order_refunded_in_full_is_closed_like_a_cancelled_one(
        env: dict[str, Any], closing: str) -> None:
    run_full_refund_closes_like_a_cancellation_scenario(env, closing)


def test_on_postgres_migration_0013_downgrades_to_0012_and_upgrades_again(pg_schema_url: str) -> None:
    eng = make_engine(pg_schema_url)
    try:
        down_and_up_again(eng, "0012", lambda conn: ["order_amounts" in tables(conn)])
    finally:
        eng.dispose()
