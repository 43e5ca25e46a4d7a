"""Disbursement attacked a fourth time. Through bootstrap on SQLite; the scenario functions (run_*) are shared with
tests/integration/test_disbursement_round4_postgres.py, which runs them on PostgreSQL.

1. A settlement dated before a loan's disbursement, arriving after it: the marketplace withheld that money answering
   the collection instruction in force at the settlement's time, which did not name the loan yet. It repays only the
   loans disbursed at or before that time; what is left is the merchant's (payable and refund), never a repayment
   "before the loan existed". Collection instructions never go backwards in time for a merchant.
2. A financed order refunded in full closes like a cancelled one, and each financed order is expected to bring back
   its own amount's share of the loan, not an equal share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from services.common.timeutil import parse_rfc3339
from services.disbursement.adapters.orm import financed_orders, journal_entries, loans, merchant_refunds
from services.disbursement.domain import ledger
from services.disbursement.service import loan_id_for
from tests.migration_roundtrip import down_and_up_again, tables
from tests.unit.disbursement_helpers import T0, disburse, ev, m, service_env, settlement

pytestmark = pytest.mark.unit

DISBURSED = T0 + timedelta(hours=6)


@pytest.fixture()
def env(tmp_path: Any) -> dict[str, Any]:
    return service_env(db_url=f"sqlite:///{tmp_path}/d.db")


# ----------------------------------------------------------------- helpers
def _loan(svc: Any, offer_id: str) -> Any:
    with svc.engine.connect() as conn:
        return conn.execute(sa.select(loans).where(loans.c.loan_id == loan_id_for(offer_id))).one()


def _entries(svc: Any, loan_id: str) -> dict[str, datetime]:
    with svc.engine.connect() as conn:
        rows = conn.execute(sa.select(journal_entries.c.kind, journal_entries.c.created_at)
                            .where(journal_entries.c.loan_id == loan_id)).all()
    return {str(r.kind): _utc(r.created_at) for r in rows}


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _refunds(svc: Any) -> list[tuple[int, str]]:
    with svc.engine.connect() as conn:
        return [(int(r.amount), str(r.state)) for r in conn.execute(
            sa.select(merchant_refunds.c.amount, merchant_refunds.c.state).order_by(merchant_refunds.c.refund_id))]


def _published(env: dict[str, Any], etype: str) -> list[dict[str, Any]]:
    env["svc"].relay_outbox()  # PostgreSQL: nothing relays on its own
    return list(env["bus"].of_type(etype))


def _instruction_times(env: dict[str, Any]) -> list[datetime]:
    return [parse_rfc3339(e["time"]) for e in _published(env, "collection.instruction")]


def _books_balanced(svc: Any) -> None:
    bals = svc.balances()
    per_currency: dict[str, int] = {}
    for (_account, cur), value in bals.items():
        per_currency[cur] = per_currency.get(cur, 0) + value
    assert all(v == 0 for v in per_currency.values()), bals
    typed = {(ledger.Account(a), c): v for (a, c), v in bals.items()}
    assert ledger.sign_violations(typed) == []


def _disburse_at(env: dict[str, Any], offer_id: str, amount: int, fee: int, at: datetime,
                 order_ids: tuple[str, ...] = ("o1",)) -> str:
    """An offer made at `at` - 1 minute, accepted and paid out at `at` (the service clock)."""
    env["clock"].now = at
    disburse(env["svc"], offer_id, amount, fee, at=at - timedelta(minutes=1), order_ids=order_ids)
    loan = _loan(env["svc"], offer_id)
    assert _utc(loan.disbursed_at) == at
    return str(loan.loan_id)


# ----------------------------------------------------------------- item 1: settlement dated before the loan
def run_settlement_dated_before_the_disbursement_scenario(env: dict[str, Any], back: timedelta) -> None:
    svc = env["svc"]
    loan_id = _disburse_at(env, "of1", 10_000, 300, DISBURSED)
    before = _instruction_times(env)
    assert _published(env, "collection.instruction")[-1]["data"]["owed"] == m(10_300)
    # The marketplace settles, dated `back` before the payout, and withholds exactly what the loan owes.
    env["clock"].now = DISBURSED + timedelta(hours=1)
    svc.handle(settlement("m1", "late-s1", 10_300, DISBURSED - back, gross=20_000))
    loan = _loan(svc, "of1")
    assert (loan.state, loan.principal_due, loan.fee_due, loan.closed_at) == ("disbursed", 10_000, 300, None), \
        "money withheld before the loan existed does not repay it"
    assert not [e for e in _published(env, "loan.repayment_applied") if e["data"]["loan_id"] == loan_id]
    assert not _published(env, "loan.repaid")
    assert _refunds(svc) == [(10_300, "pending")], "the money is the merchant's, as any withholding with no loan"
    assert "repayment" not in _entries(svc, loan_id)
    _books_balanced(svc)
    times = _instruction_times(env)
    assert times == sorted(times) and times[:len(before)] == before
    assert _published(env, "collection.instruction")[-1]["data"]["owed"] == m(10_300), "the loan is still owed"
    # A settlement after the payout repays it, at its own time, never before the disbursement.
    svc.handle(settlement("m1", "s2", 10_300, DISBURSED + timedelta(days=1), gross=20_000))
    loan = _loan(svc, "of1")
    assert (loan.state, loan.principal_due + loan.fee_due) == ("repaid", 0)
    assert _utc(loan.closed_at) >= _utc(loan.disbursed_at)
    repaid = _published(env, "loan.repaid")
    assert [parse_rfc3339(e["data"]["repaid_at"]) for e in repaid] == [DISBURSED + timedelta(days=1)]
    entries = _entries(svc, loan_id)
    assert entries["repayment"] >= entries["payout"] >= entries["disbursement"]
    times = _instruction_times(env)
    assert times == sorted(times)
    assert _published(env, "collection.instruction")[-1]["data"]["owed"] == m(0)
    _books_balanced(svc)


@pytest.mark.parametrize("back", [timedelta(minutes=30), timedelta(days=100)], ids=["30min", "100days"])
def test_a_settlement_dated_before_the_disbursement_does_not_repay_the_loan_and_its_money_is_refunded(
        env: dict[str, Any], back: timedelta) -> None:
    run_settlement_dated_before_the_disbursement_scenario(env, back)


def run_late_settlement_repays_only_the_loans_of_its_time_scenario(env: dict[str, Any]) -> None:
    """Loan A is disbursed 2 h before the settlement's time, loan B 30 min after it; the settlement (arriving after
    both) even names B's financed order. It was withheld under the instruction naming A alone: A is repaid, the rest
    goes back to the merchant, B is untouched but its settled order no longer covers it."""
    svc = env["svc"]
    at = DISBURSED
    loan_a = _disburse_at(env, "ofA", 5_000, 100, at - timedelta(hours=2), order_ids=("oa",))
    loan_b = _disburse_at(env, "ofB", 8_000, 200, at + timedelta(minutes=30), order_ids=("ob",))
    last_before = _instruction_times(env)[-1]
    env["clock"].now = at + timedelta(hours=1)
    svc.handle(settlement("m1", "late-s1", 9_000, at, orders=(("ob", 9_000),), gross=9_000))
    a, b = _loan(svc, "ofA"), _loan(svc, "ofB")
    assert (a.state, a.principal_due + a.fee_due) == ("repaid", 0)
    assert (b.state, b.principal_due + b.fee_due) == ("disbursed", 8_200)
    assert _refunds(svc) == [(9_000 - 5_100, "pending")]
    applied = {e["data"]["loan_id"] for e in _published(env, "loan.repayment_applied")}
    assert applied == {loan_a}
    with svc.engine.connect() as conn:
        state = conn.execute(sa.select(financed_orders.c.state).where(financed_orders.c.order_id == "ob")).scalar()
    assert state == "settled", "the receivable was paid out before the loan: it no longer covers it"
    ins = _published(env, "collection.instruction")
    assert ins[-1]["data"]["owed"] == m(8_200) and ins[-1]["data"]["loan_ids"] == [loan_b]
    assert parse_rfc3339(ins[-1]["time"]) >= last_before, "an instruction never goes back in time"
    times = _instruction_times(env)
    assert times == sorted(times)
    _books_balanced(svc)


def test_a_late_settlement_repays_only_loans_disbursed_by_its_time_and_refunds_the_rest(
        env: dict[str, Any]) -> None:
    run_late_settlement_repays_only_the_loans_of_its_time_scenario(env)


def run_late_refund_instruction_not_backwards_scenario(env: dict[str, Any]) -> None:
    svc = env["svc"]
    _disburse_at(env, "of1", 10_000, 0, DISBURSED, order_ids=("o1", "o2"))
    last_before = _instruction_times(env)[-1]
    # A refund of a financed order dated before the payout, arriving after it: the withhold changes (shortfall)
    # and the new instruction is the latest one for the merchant, not one dated before the previous.
    svc.handle(ev("order.refunded", "m1", {"order_id": "o1", "refund_id": "r1", "amount": m(2_000)},
                  DISBURSED - timedelta(hours=3)))
    ins = _published(env, "collection.instruction")
    assert ins[-1]["data"]["withhold_rate_bps"] > ins[-2]["data"]["withhold_rate_bps"]
    assert parse_rfc3339(ins[-1]["time"]) >= last_before
    times = _instruction_times(env)
    assert times == sorted(times)


def test_an_instruction_caused_by_a_late_refund_is_not_dated_before_the_previous_instruction(
        env: dict[str, Any]) -> None:
    run_late_refund_instruction_not_backwards_scenario(env)


def run_out_of_order_settlements_repaid_at_the_later_one_scenario(env: dict[str, Any]) -> None:
    """Two settlements after the payout arrive in reverse order: the loan is repaid when the later-dated one had
    been withheld too, not at the earlier date that happened to arrive last."""
    svc = env["svc"]
    _disburse_at(env, "of1", 10_000, 0, DISBURSED)
    svc.handle(settlement("m1", "s2", 4_000, DISBURSED + timedelta(days=2)))
    svc.handle(settlement("m1", "s1", 6_000, DISBURSED + timedelta(days=1)))
    loan = _loan(svc, "of1")
    assert loan.state == "repaid"
    assert _utc(loan.closed_at) == DISBURSED + timedelta(days=2)
    repaid = _published(env, "loan.repaid")
    assert [parse_rfc3339(e["data"]["repaid_at"]) for e in repaid] == [DISBURSED + timedelta(days=2)]
    times = _instruction_times(env)
    assert times == sorted(times)


def test_a_loan_repaid_by_settlements_arriving_out_of_order_is_repaid_at_the_later_one(env: dict[str, Any]) -> None:
    run_out_of_order_settlements_repaid_at_the_later_one_scenario(env)


# ----------------------------------------------------------------- item 2: a financed order refunded in full
def _financed(svc: Any) -> dict[str, tuple[int, str]]:
    with svc.engine.connect() as conn:
        return {str(r.order_id): (int(r.expected), str(r.state)) for r in conn.execute(
            sa.select(financed_orders.c.order_id, financed_orders.c.expected, financed_orders.c.state))}


def _paid(order_id: str, amount: int, day: int = 0) -> dict[str, Any]:
    return ev("order.paid", "m1", {"order_id": order_id, "amount": m(amount)}, T0 - timedelta(days=3 - day))


def run_full_refund_closes_like_a_cancellation_scenario(env: dict[str, Any], closing: str) -> None:
    """o1 (5,000) and o2 (15,000) were paid; a loan owing 16,000 is advanced on both. Each is expected to bring back
    its own amount's share of what is owed (4,000 and 12,000), not an equal 8,000; o1 refunded in full (or
    cancelled) is closed, leaves the instruction's financed orders and no phantom amount stays expected."""
    svc = env["svc"]
    svc.handle(_paid("o1", 5_000))
    svc.handle(_paid("o2", 15_000, day=1))
    _disburse_at(env, "of1", 15_700, 300, DISBURSED, order_ids=("o1", "o2"))
    assert _financed(svc) == {"o1": (4_000, "open"), "o2": (12_000, "open")}
    base = _published(env, "collection.instruction")[-1]["data"]
    assert base["financed_order_ids"] == ["o1", "o2"]
    later = DISBURSED + timedelta(minutes=30)
    if closing == "refunded":
        svc.handle(ev("order.refunded", "m1", {"order_id": "o1", "refund_id": "rf1", "amount": m(5_000)}, later))
    else:
        svc.handle(ev("order.cancelled", "m1", {"order_id": "o1", "reason": "buyer"}, later))
    assert _financed(svc) == {"o1": (0, closing), "o2": (12_000, "open")}
    last = _published(env, "collection.instruction")[-1]["data"]
    assert last["financed_order_ids"] == ["o2"]
    assert last["owed"] == m(16_000) and last["withhold_rate_bps"] > base["withhold_rate_bps"]


@pytest.mark.parametrize("closing", ["refunded", "cancelled"])
def test_a_financed_order_refunded_in_full_is_closed_like_a_cancelled_one(env: dict[str, Any], closing: str) -> None:
    run_full_refund_closes_like_a_cancellation_scenario(env, closing)


def test_partial_refunds_adding_up_to_the_whole_order_close_it(env: dict[str, Any]) -> None:
    svc = env["svc"]
    svc.handle(_paid("o1", 5_000))
    svc.handle(_paid("o2", 15_000))
    _disburse_at(env, "of1", 16_000, 0, DISBURSED, order_ids=("o1", "o2"))
    svc.handle(ev("order.refunded", "m1", {"order_id": "o1", "refund_id": "rf1", "amount": m(2_500)}, DISBURSED))
    assert _financed(svc)["o1"] == (1_500, "open")
    svc.handle(ev("order.refunded", "m1", {"order_id": "o1", "refund_id": "rf2", "amount": m(2_500)}, DISBURSED))
    assert _financed(svc)["o1"] == (0, "refunded")


def test_amounts_named_by_the_offer_are_split_in_proportion_too(env: dict[str, Any]) -> None:
    svc = env["svc"]
    env["clock"].now = DISBURSED
    disburse(svc, "of1", 9_000, 0, at=DISBURSED - timedelta(minutes=1), order_ids=("o1", "o2", "o3"),
             orders=[{"order_id": "o1", "amount": m(1_000)}, {"order_id": "o2", "amount": m(3_000)},
                     {"order_id": "o3", "amount": m(8_000)}])
    shares = _financed(svc)
    assert shares == {"o1": (750, "open"), "o2": (2_250, "open"), "o3": (6_000, "open")}
    svc.handle(ev("order.refunded", "m1", {"order_id": "o1", "refund_id": "rf1", "amount": m(1_000)}, DISBURSED))
    assert _financed(svc)["o1"] == (0, "refunded")


def test_orders_of_unknown_amount_keep_the_equal_split(env: dict[str, Any]) -> None:
    svc = env["svc"]
    svc.handle(_paid("o1", 5_000))  # o2 was never seen paid here
    _disburse_at(env, "of1", 10_001, 0, DISBURSED, order_ids=("o1", "o2"))
    assert _financed(svc) == {"o1": (5_001, "open"), "o2": (5_000, "open")}


def test_order_amounts_older_than_any_receivable_an_offer_may_name_are_pruned_by_the_aging_pass(
        env: dict[str, Any]) -> None:
    from services.disbursement.adapters.orm import order_amounts

    svc = env["svc"]
    svc.handle(_paid("o-old", 1_000))
    svc.handle(ev("order.paid", "m1", {"order_id": "o-new", "amount": m(2_000)}, T0 + timedelta(days=80)))
    svc.age(T0 + timedelta(days=95))
    with svc.engine.connect() as conn:
        kept = set(conn.execute(sa.select(order_amounts.c.order_id)).scalars())
    assert kept == {"o-new"}


def test_on_sqlite_migration_0013_downgrades_to_0012_and_upgrades_again(tmp_path: Any) -> None:
    eng = sa.create_engine(f"sqlite:///{tmp_path}/m.db")
    down_and_up_again(eng, "0012", lambda conn: ["order_amounts" in tables(conn)])
    eng.dispose()


def run_late_settlement_and_a_charged_off_loan_scenario(env: dict[str, Any]) -> None:
    """A loan charged off; then a settlement dated before its disbursement (not withheld for it: refunded) and one
    dated between the disbursement and the charge-off (withheld for it: a recovery, booked no earlier than the
    loss it reduces)."""
    svc = env["svc"]
    loan_id = _disburse_at(env, "of1", 10_000, 0, DISBURSED)
    charged_at = DISBURSED + timedelta(days=75)
    env["clock"].now = charged_at
    svc.age(charged_at)
    assert _loan(svc, "of1").state == "charged_off"
    svc.handle(settlement("m1", "before", 3_000, DISBURSED - timedelta(days=1)))
    assert _refunds(svc) == [(3_000, "pending")]
    assert "recovery" not in _entries(svc, loan_id)
    svc.handle(settlement("m1", "between", 4_000, DISBURSED + timedelta(days=20)))
    entries = _entries(svc, loan_id)
    assert entries["recovery"] >= entries["charge_off"] == charged_at
    assert _refunds(svc) == [(3_000, "pending")]
    times = _instruction_times(env)
    assert times == sorted(times)
    assert _published(env, "collection.instruction")[-1]["data"]["owed"] == m(6_000)
    _books_balanced(svc)


def test_a_late_settlement_recovers_a_charged_off_loan_only_if_dated_after_its_disbursement(
        env: dict[str, Any]) -> None:
    run_late_settlement_and_a_charged_off_loan_scenario(env)


@pytest.mark.parametrize("owed,amounts", [
    (16_000, [5_000, 15_000]), (10, [7, 7, 7]), (1, [3, 3, 3]), (100, [40, 50]), (0, [5, 5]), (999_999, [1, 2, 999_999]),
])
def test_each_financed_order_expects_its_own_amounts_share_and_never_more_than_itself(
        owed: int, amounts: list[int]) -> None:
    from services.disbursement.domain.collections import financed_shares

    ids = [f"o{i}" for i in range(len(amounts))]
    shares = financed_shares(owed, ids, dict(zip(ids, amounts, strict=True)))
    assert sum(shares.values()) == min(owed, sum(amounts))
    assert all(0 <= shares[oid] <= amount for oid, amount in zip(ids, amounts, strict=True))
    assert financed_shares(owed, ids, dict(zip(ids, amounts, strict=True))) == shares
