"""Disbursement attacked a third time, and the leftovers of the earlier rounds: a payout failing for ever, the
ledger balance as a SQLite constraint, a rail answering a payout id that cannot be recorded. Each test is one
scenario, through bootstrap on SQLite."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import generate_latest

from services.disbursement.adapters.orm import loans
from services.disbursement.ports import PayoutFailed, PayoutRequest
from services.disbursement.service import AcceptOffer, loan_id_for
from services.disbursement.settings import DisbursementSettings
from tests.migration_roundtrip import columns, down_and_up_again, tables
from tests.unit.disbursement_helpers import (
    T0,
    DownThenUpRail,
    limit,
    offer,
    service_env,
)

pytestmark = pytest.mark.unit


def _loan(svc: Any, offer_id: str = "of1") -> Any:
    with svc.engine.connect() as conn:
        return conn.execute(sa.select(loans).where(loans.c.loan_id == loan_id_for(offer_id))).one()


def _accepted_while_rail_down(tmp_path: Any, **settings: Any) -> dict[str, Any]:
    rail = DownThenUpRail()
    e = service_env(DisbursementSettings(recovery_after_seconds=0, **settings), db_url=f"sqlite:///{tmp_path}/d.db",
                    rail=rail)
    rail.attach(e["svc"].engine)
    e["rail"] = rail
    svc = e["svc"]
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 10_000, 300))
    assert svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(minutes=1))).status_code == 202
    return e


# ----------------------------------------------------------------- leftover 1: no cap on payout attempts
def test_a_payout_failing_past_the_attempt_cap_is_parked_and_no_longer_retried(tmp_path: Any) -> None:
    e = _accepted_while_rail_down(tmp_path, payout_max_attempts=3, payout_max_age_seconds=0)
    svc, rail = e["svc"], e["rail"]
    calls: list[str] = []
    inner_pay = rail.pay
    rail.pay = lambda request: (calls.append(request.idempotency_key), inner_pay(request))[1]
    assert svc.recover(T0 + timedelta(minutes=2)) == 0  # attempt 2
    assert _loan(svc).payout_parked_at is None
    assert svc.recover(T0 + timedelta(minutes=3)) == 0  # attempt 3: the cap
    row = _loan(svc)
    assert (row.state, row.payout_attempts) == ("accepted", 3) and row.payout_parked_at is not None
    assert svc.recover(T0 + timedelta(minutes=4)) == 0
    assert len(calls) == 2, "a parked payout is not retried by recovery"
    assert [p["loan_id"] for p in svc.parked_payouts()] == [loan_id_for("of1")]
    last = svc.audit_trail("m1")[-1]
    assert (last["action"], last["outcome"], last["detail"]["attempts"]) == ("payout", "parked", 3)


def test_a_payout_still_failing_past_the_maximum_age_is_parked(tmp_path: Any) -> None:
    e = _accepted_while_rail_down(tmp_path, payout_max_attempts=0, payout_max_age_seconds=3600)
    svc, clock = e["svc"], e["clock"]
    clock.now = T0 + timedelta(minutes=30)
    svc.recover()
    assert _loan(svc).payout_parked_at is None
    clock.now = T0 + timedelta(minutes=62)  # accepted at T0 + 1 min: 61 minutes old
    svc.recover()
    assert _loan(svc).payout_parked_at is not None


def test_parked_payouts_are_a_metric_for_the_on_call_alert(tmp_path: Any) -> None:
    e = _accepted_while_rail_down(tmp_path, payout_max_attempts=1)
    text = generate_latest(e["svc"].metrics.registry).decode()
    assert 'floatbridge_disbursement_payouts_parked{currency="BRL",kind="loan"} 1.0' in text


def test_ops_resume_a_parked_payout_and_it_is_paid_once_with_the_same_key(tmp_path: Any) -> None:
    e = _accepted_while_rail_down(tmp_path, payout_max_attempts=1)
    svc, rail = e["svc"], e["rail"]
    assert _loan(svc).payout_parked_at is not None
    rail.down = False
    assert svc.recover(T0 + timedelta(minutes=5)) == 0, "recovery leaves a parked loan to ops"
    assert svc.resume_payout(loan_id_for("of1")) is True
    row = _loan(svc)
    assert row.state == "disbursed" and rail.inner.count() == 1
    assert svc.resume_payout(loan_id_for("of1")) is True and rail.inner.count() == 1
    replay = svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(minutes=6)))
    assert (replay.status_code, replay.body["state"]) == (200, "disbursed")


def test_ops_cancel_a_parked_payout_like_a_refused_one_and_the_books_return_to_zero(tmp_path: Any) -> None:
    e = _accepted_while_rail_down(tmp_path, payout_max_attempts=1)
    svc, bus = e["svc"], e["bus"]
    assert svc.cancel_parked_payout(loan_id_for("of1"), "rail confirmed no payout under this key") is True
    assert _loan(svc).state == "cancelled"
    assert all(v == 0 for v in svc.balances().values()), svc.balances()
    assert [c["data"]["reason"] for c in bus.of_type("loan.cancelled")] == ["payout_rejected"]
    replay = svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(minutes=6)))
    assert (replay.status_code, replay.code) == (409, "payout_rejected")


def test_a_loan_that_is_not_parked_cannot_be_cancelled_by_ops(tmp_path: Any) -> None:
    e = _accepted_while_rail_down(tmp_path)  # default caps: one failure parks nothing
    with pytest.raises(ValueError, match="not a parked payout"):
        e["svc"].cancel_parked_payout(loan_id_for("of1"), "oops")
    assert _loan(e["svc"]).state == "accepted"


# ----------------------------------------------------------------- leftover 2: ledger balance on SQLite
def _raw_entry(svc: Any, lines: list[tuple[str, str, int, str]]) -> None:
    with svc.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO journal_entries (entry_id, kind, created_at) "
                             "VALUES ('raw1', 'manual', '2025-03-01 00:00:00')"))
        for account, side, amount, currency in lines:
            conn.execute(sa.text("INSERT INTO journal_lines (entry_id, account, side, amount, currency) "
                                 "VALUES ('raw1', :a, :s, :m, :c)"), {"a": account, "s": side, "m": amount, "c": currency})


@pytest.mark.parametrize("lines", [
    [("funding_cash", "D", 100, "BRL"), ("merchant_payable", "C", 90, "BRL")],
    [("funding_cash", "D", 100, "BRL"), ("merchant_payable", "C", 100, "USD")],
    [("funding_cash", "D", 100, "BRL")],
], ids=["short_credit", "other_currency", "one_sided"])
def test_a_raw_unbalanced_journal_entry_is_refused_by_sqlite_at_commit(
        tmp_path: Any, lines: list[tuple[str, str, int, str]]) -> None:
    svc = service_env(db_url=f"sqlite:///{tmp_path}/d.db")["svc"]
    before = svc.balances()
    with pytest.raises(sa.exc.IntegrityError, match="FOREIGN KEY constraint failed"):
        _raw_entry(svc, lines)
    assert svc.balances() == before
    with svc.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM journal_entries WHERE entry_id = 'raw1'")).scalar() == 0


def test_a_raw_balanced_journal_entry_is_accepted_by_sqlite(tmp_path: Any) -> None:
    svc = service_env(db_url=f"sqlite:///{tmp_path}/d.db")["svc"]
    _raw_entry(svc, [("funding_cash", "D", 100, "BRL"), ("merchant_payable", "C", 60, "BRL"),
                     ("merchant_payable", "C", 40, "BRL")])
    assert svc.balances()[("funding_cash", "BRL")] == 100


def test_a_line_added_later_to_a_committed_entry_is_refused_by_sqlite(tmp_path: Any) -> None:
    svc = service_env(db_url=f"sqlite:///{tmp_path}/d.db")["svc"]
    _raw_entry(svc, [("funding_cash", "D", 100, "BRL"), ("merchant_payable", "C", 100, "BRL")])
    with pytest.raises(sa.exc.IntegrityError), svc.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO journal_lines (entry_id, account, side, amount, currency) "
                             "VALUES ('raw1', 'fee_income', 'C', 5, 'BRL')"))
    with pytest.raises(sa.exc.DatabaseError, match="stays empty"), svc.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO journal_never (id) VALUES (1)"))


# ----------------------------------------------------------------- leftover 3: payout id over 128 characters
class LongIdRail:
    def __init__(self, payout_id: Any) -> None:
        self.payout_id = payout_id
        self.calls = 0

    def pay(self, request: PayoutRequest) -> str:
        self.calls += 1
        return self.payout_id  # type: ignore[no-any-return]


@pytest.mark.parametrize("payout_id", ["p" * 129, "po 1", "po\n1", "pó1", "", 12345])
def test_a_payout_id_that_cannot_be_recorded_is_a_rail_error_and_the_loan_stays_accepted(
        tmp_path: Any, payout_id: Any) -> None:
    rail = LongIdRail(payout_id)
    e = service_env(DisbursementSettings(recovery_after_seconds=0, payout_max_attempts=3),
                    db_url=f"sqlite:///{tmp_path}/d.db", rail=rail)
    svc = e["svc"]
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 10_000, 300))
    first = svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(minutes=1)))
    assert (first.status_code, first.body["state"]) == (202, "accepted")
    assert "cannot be recorded" in svc.audit_trail("m1")[-1]["detail"]["error"]
    svc.recover(T0 + timedelta(minutes=2))
    svc.recover(T0 + timedelta(minutes=3))
    svc.recover(T0 + timedelta(minutes=4))
    row = _loan(svc)
    assert (row.state, row.payout_id) == ("accepted", None) and row.payout_parked_at is not None
    assert rail.calls == 3
    svc.relay_outbox()
    assert e["bus"].of_type("loan.disbursed") == []


def test_a_refund_payout_id_that_cannot_be_recorded_leaves_the_refund_pending(tmp_path: Any) -> None:
    from services.disbursement.adapters.orm import merchant_refunds
    from tests.unit.disbursement_helpers import settlement

    rail = LongIdRail("r" * 200)
    svc = service_env(db_url=f"sqlite:///{tmp_path}/d.db", rail=rail)["svc"]
    svc.handle(settlement("m1", "s1", 5_000, T0))  # nothing owed: all of it goes back
    svc.recover(T0 + timedelta(minutes=1))
    with svc.engine.connect() as conn:
        assert conn.execute(sa.select(merchant_refunds.c.state, merchant_refunds.c.payout_id)).one() == ("pending", None)


def test_a_refund_payout_failing_past_the_cap_is_parked_then_resumed_by_ops_and_paid_once(tmp_path: Any) -> None:
    from services.disbursement.adapters.orm import merchant_refunds
    from tests.unit.disbursement_helpers import settlement

    rail = DownThenUpRail()
    svc = service_env(DisbursementSettings(payout_max_attempts=2), db_url=f"sqlite:///{tmp_path}/d.db",
                      rail=rail)["svc"]
    rail.attach(svc.engine)
    svc.handle(settlement("m1", "s1", 5_000, T0))
    for minute in (1, 2, 3):
        svc.recover(T0 + timedelta(minutes=minute))
    with svc.engine.connect() as conn:
        row = conn.execute(sa.select(merchant_refunds)).one()
    assert (row.state, row.payout_attempts) == ("pending", 2) and row.payout_parked_at is not None
    assert [p["kind"] for p in svc.parked_payouts()] == ["refund"]
    text = generate_latest(svc.metrics.registry).decode()
    assert 'floatbridge_disbursement_payouts_parked{currency="BRL",kind="refund"} 1.0' in text
    rail.down = False
    assert svc.recover(T0 + timedelta(minutes=4)) == 0, "a parked refund waits for ops"
    assert svc.resume_payout(row.refund_id) is True
    assert svc.resume_payout(row.refund_id) is True and rail.inner.count() == 1
    assert svc.balances().get(("merchant_payable", "BRL"), 0) == 0
    with pytest.raises(KeyError):
        svc.cancel_parked_payout(row.refund_id, "a refund is owed: never cancelled")


def test_payout_failed_is_what_an_unusable_payout_id_raises() -> None:
    from services.disbursement.service import _check_payout_id

    _check_payout_id("po_" + "x" * 125)
    with pytest.raises(PayoutFailed):
        _check_payout_id("po_" + "x" * 126)


def test_on_sqlite_migrations_0009_to_0011_downgrade_to_0008_and_upgrade_again(tmp_path: Any) -> None:
    eng = sa.create_engine(f"sqlite:///{tmp_path}/m.db")
    down_and_up_again(eng, "0008", lambda conn: ["journal_open_balances" in tables(conn),
                                                 "closed_orders" in tables(conn),
                                                 "payout_parked_at" in columns(conn, "loans")])
    eng.dispose()


def test_ops_list_resume_and_cancel_parked_payouts_from_the_command_line(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from floatbridge.cli import main

    _accepted_while_rail_down(tmp_path, payout_max_attempts=1)
    monkeypatch.setenv("FLOATBRIDGE_DISBURSEMENT_DATABASE_URL", f"sqlite:///{tmp_path}/d.db")
    capsys.readouterr()
    assert main(["disbursement", "payouts", "parked"]) == 0
    assert loan_id_for("of1") in capsys.readouterr().out
    assert main(["disbursement", "payouts", "cancel", loan_id_for("of1")]) == 2  # a reason is required
    assert main(["disbursement", "payouts", "resume", loan_id_for("of1")]) == 0  # the sandbox rail pays it
    assert "paid" in capsys.readouterr().out
    assert main(["disbursement", "payouts", "cancel", loan_id_for("of1"), "--reason", "x"]) == 1  # not parked


# ----------------------------------------------------------------- attacks: settlement before the offer arrives
@pytest.mark.parametrize("closure", ["settled", "cancelled", "refunded", "charged_back"])
def test_an_offer_arriving_after_its_order_was_closed_on_the_other_topic_cannot_be_accepted(
        tmp_path: Any, closure: str) -> None:
    from tests.unit.disbursement_helpers import ev, m, settlement

    e = service_env(db_url=f"sqlite:///{tmp_path}/d.db")
    svc = e["svc"]
    svc.handle(limit("m1", 100_000))
    later = T0 + timedelta(minutes=5)  # applied first, though the offer was made before it
    svc.handle({
        "settled": settlement("m1", "s1", 0, later, orders=(("o1", 20_000),)),
        "cancelled": ev("order.cancelled", "m1", {"order_id": "o1"}, later),
        "refunded": ev("order.refunded", "m1", {"order_id": "o1", "refund_id": "r1", "amount": m(20_000)}, later),
        "charged_back": ev("order.chargeback", "m1", {"order_id": "o1", "chargeback_id": "c1",
                                                      "amount": m(20_000), "reason": "fraud"}, later),
    }[closure])
    svc.handle(offer("m1", "of1", 10_000, 300, at=T0, order_ids=("o1", "o2")))
    result = svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(minutes=10)))
    assert (result.status_code, result.code) == (409, "receivables_changed")
    assert "o1" in result.body["error"]["message"]
    with svc.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(loans)).scalar() == 0


def test_an_offer_on_orders_never_closed_is_still_accepted(tmp_path: Any) -> None:
    from tests.unit.disbursement_helpers import settlement

    svc = service_env(db_url=f"sqlite:///{tmp_path}/d.db")["svc"]
    svc.handle(limit("m1", 100_000))
    svc.handle(settlement("m1", "s1", 0, T0 + timedelta(minutes=5), orders=(("o9", 20_000),)))
    svc.handle(offer("m1", "of1", 10_000, 300, at=T0, order_ids=("o1",)))
    assert svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(minutes=10))).status_code == 200


# ----------------------------------------------------------------- attacks: webhook dead letter and replay
def test_a_dead_lettered_webhook_is_replayed_by_ops_with_the_same_id_and_delivered(tmp_path: Any) -> None:
    from services.disbursement.adapters.orm import webhook_deliveries

    e = service_env(DisbursementSettings(webhook_max_attempts=2, webhook_disable_after_failures=2),
                    db_url=f"sqlite:///{tmp_path}/d.db")
    svc, transport = e["svc"], e["transport"]
    svc.handle(limit("m1", 100_000))
    transport.status = 503
    now = T0
    for _ in range(4):
        now += timedelta(hours=2)
        svc.dispatch_webhooks(now)
    with svc.engine.connect() as conn:
        dead = conn.execute(sa.select(webhook_deliveries.c.msg_id).where(webhook_deliveries.c.state == "dead")
                            ).scalars().all()
    assert dead, "the delivery was dead-lettered and the endpoint disabled"
    transport.status = 200
    transport.calls.clear()
    assert svc.replay_dead_webhooks("m2") == 0  # another merchant's letters only
    assert svc.replay_dead_webhooks("m1") == len(dead)
    svc.dispatch_webhooks(now + timedelta(minutes=1))
    assert sorted(h["webhook-id"] for _, h, _ in transport.calls) == sorted(dead)
    with svc.engine.connect() as conn:
        states = conn.execute(sa.select(webhook_deliveries.c.state)).scalars().all()
    assert set(states) == {"delivered"}
    assert svc.audit_trail("m1")[-1]["action"] == "webhooks_replayed"


def test_the_example_receiver_acknowledges_a_delivery_it_already_received_without_acting_again() -> None:
    import io

    from services.disbursement.domain.webhooks_signing import headers, new_secret
    from services.disbursement.verifier import example_receiver
    from services.disbursement.verifier.verify import WebhookDuplicate, WebhookVerificationError, verify

    secret = new_secret()
    body = b'{"type":"loan.disbursed","id":"e1","data":{}}'
    hdrs = headers([secret], "msg_1", int(T0.timestamp()), body)
    seen: set[str] = set()
    verify(secret, hdrs, body, now=T0.timestamp(), seen_ids=seen)
    with pytest.raises(WebhookDuplicate):
        verify(secret, hdrs, body, now=T0.timestamp(), seen_ids=seen)
    assert issubclass(WebhookDuplicate, WebhookVerificationError)  # callers that refuse every error still do

    answers: list[int] = []

    class Fake(example_receiver.Receiver):
        def __init__(self) -> None:  # no socket: drive do_POST directly
            self.headers = {**hdrs, "content-length": str(len(body))}  # type: ignore[assignment]
            self.rfile = io.BytesIO(body)
            self.wfile = io.BytesIO()

        def send_response(self, code: int, message: str | None = None) -> None:
            answers.append(code)

        def end_headers(self) -> None:
            pass

    import time as _t
    fresh = headers([secret], "msg_2", int(_t.time()), body)
    example_receiver.SECRET = secret
    example_receiver.SEEN.clear()
    for _ in range(2):
        f = Fake()
        f.headers = {**fresh, "content-length": str(len(body))}  # type: ignore[assignment]
        f.do_POST()
    assert answers == [204, 204]
    f = Fake()
    f.headers = {**fresh, "webhook-signature": "v1,AAAA", "content-length": str(len(body))}  # type: ignore[assignment]
    f.do_POST()
    assert answers[-1] == 400


# ----------------------------------------------------------------- attacks: an offer backed by nothing
@pytest.mark.parametrize("order_ids", [[], "o1", None], ids=["empty", "a_string", "missing"])
def test_an_offer_that_names_no_receivable_is_refused_and_never_lent_on(tmp_path: Any, order_ids: Any) -> None:
    from services.disbursement.service import EventRejected

    svc = service_env(db_url=f"sqlite:///{tmp_path}/d.db")["svc"]
    svc.handle(limit("m1", 100_000))
    event = offer("m1", "of1", 10_000, 300)
    if order_ids is None:
        del event["data"]["order_ids"]
    else:
        event["data"]["order_ids"] = order_ids
    with pytest.raises(EventRejected, match="order_ids"):
        svc.handle(event)
    assert svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(minutes=1))).code == "offer_not_found"


def test_a_refund_the_underwriter_knew_of_when_it_made_the_offer_does_not_block_it(tmp_path: Any) -> None:
    from tests.unit.disbursement_helpers import ev, m

    svc = service_env(db_url=f"sqlite:///{tmp_path}/d.db")["svc"]
    svc.handle(limit("m1", 100_000))
    # partly refunded an hour before the offer: the offer was sized on what o1 still brings
    svc.handle(ev("order.refunded", "m1", {"order_id": "o1", "refund_id": "r1", "amount": m(2_000)},
                  T0 - timedelta(hours=1)))
    svc.handle(offer("m1", "of1", 10_000, 300, at=T0, order_ids=("o1",)))
    assert svc.accept(AcceptOffer("of1", "m1", "k", T0 + timedelta(minutes=10))).status_code == 200


# ----------------------------------------------------------------- attacks: a rail reusing a payout id
def test_a_rail_answering_a_payout_id_already_recorded_leaves_the_second_loan_accepted_and_counted(
        tmp_path: Any) -> None:
    rail = LongIdRail("po_same")
    e = service_env(DisbursementSettings(recovery_after_seconds=0, payout_max_attempts=3),
                    db_url=f"sqlite:///{tmp_path}/d.db", rail=rail)
    svc = e["svc"]
    svc.handle(limit("m1", 1_000_000))
    svc.handle(offer("m1", "of1", 10_000, 300, order_ids=("o1",)))
    assert svc.accept(AcceptOffer("of1", "m1", "k1", T0 + timedelta(minutes=1))).status_code == 200
    svc.handle(offer("m1", "of2", 10_000, 300, at=T0 + timedelta(minutes=2), order_ids=("o2",)))
    second = svc.accept(AcceptOffer("of2", "m1", "k2", T0 + timedelta(minutes=3)))  # no server error
    assert (second.status_code, second.body["state"]) == (202, "accepted")
    error = svc.audit_trail("m1")[-1]["detail"]["error"]
    assert "could not be recorded" in error and "payouts.payout_id" in error
    svc.recover(T0 + timedelta(minutes=4))
    svc.recover(T0 + timedelta(minutes=5))
    row = _loan(svc, "of2")
    assert row.state == "accepted" and row.payout_attempts == 3 and row.payout_parked_at is not None
    assert _loan(svc, "of1").payout_id == "po_same"


@pytest.mark.parametrize("cover_up", ["DELETE FROM journal_open_balances",
                                      "UPDATE journal_open_balances SET unbalanced = NULL"])
def test_removing_the_unbalanced_mark_by_hand_does_not_get_an_unbalanced_entry_past_sqlite(
        tmp_path: Any, cover_up: str) -> None:
    svc = service_env(db_url=f"sqlite:///{tmp_path}/d.db")["svc"]
    with pytest.raises(sa.exc.DatabaseError), svc.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO journal_entries (entry_id, kind, created_at) "
                             "VALUES ('raw1', 'manual', '2025-03-01 00:00:00')"))
        conn.execute(sa.text("INSERT INTO journal_lines (entry_id, account, side, amount, currency) "
                             "VALUES ('raw1', 'funding_cash', 'D', 100, 'BRL')"))
        conn.execute(sa.text(cover_up))
    with svc.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM journal_lines WHERE entry_id = 'raw1'")).scalar() == 0


def test_closed_orders_older_than_the_retention_are_pruned_by_the_aging_pass(tmp_path: Any) -> None:
    from services.disbursement.adapters.orm import closed_orders
    from tests.unit.disbursement_helpers import settlement

    svc = service_env(DisbursementSettings(closed_orders_retention_days=30), db_url=f"sqlite:///{tmp_path}/d.db")["svc"]
    svc.handle(settlement("m1", "s1", 0, T0, orders=(("o1", 20_000),)))
    svc.handle(settlement("m1", "s2", 0, T0 + timedelta(days=20), orders=(("o2", 20_000),)))

    def kept() -> list[str]:
        with svc.engine.connect() as conn:
            return sorted(conn.execute(sa.select(closed_orders.c.order_id)).scalars())

    svc.age(T0 + timedelta(days=29))
    assert kept() == ["o1", "o2"]
    svc.age(T0 + timedelta(days=31))
    assert kept() == ["o2"]


def test_replaying_one_merchants_webhooks_re_enables_its_endpoint_and_sends_what_was_pending(tmp_path: Any) -> None:
    from services.disbursement.adapters.orm import merchants

    e = service_env(DisbursementSettings(webhook_max_attempts=50, webhook_disable_after_failures=1),
                    db_url=f"sqlite:///{tmp_path}/d.db")
    svc, transport = e["svc"], e["transport"]
    svc.handle(limit("m1", 100_000))
    transport.status = 500
    svc.dispatch_webhooks(T0 + timedelta(hours=1))  # one failure disables the endpoint; nothing is dead yet
    transport.status = 200
    transport.calls.clear()
    svc.dispatch_webhooks(T0 + timedelta(days=1))
    assert transport.calls == []
    assert svc.replay_dead_webhooks("m1") == 0
    svc.dispatch_webhooks(T0 + timedelta(days=1, minutes=1))
    assert transport.calls, "the pending delivery went out once the endpoint was enabled again"
    with svc.engine.connect() as conn:
        assert conn.execute(sa.select(merchants.c.webhook_enabled).where(merchants.c.merchant_id == "m1")).scalar()


# ----------------------------------------------------------------- attacks: Unicode and other non-Id offer ids
@pytest.mark.parametrize("offer_id,order_ids", [
    ("ofé1", ("o1",)), ("of 1", ("o1",)), ("o" * 129, ("o1",)), ("of1", ("ordér",)), ("of1", ("o\t1",)),
], ids=["unicode_offer", "space_offer", "long_offer", "unicode_order", "control_order"])
def test_an_offer_whose_ids_the_contract_refuses_is_refused_so_loans_v1_never_carries_them(
        tmp_path: Any, offer_id: str, order_ids: tuple[str, ...]) -> None:
    from services.disbursement.service import EventRejected

    e = service_env(db_url=f"sqlite:///{tmp_path}/d.db")
    svc = e["svc"]
    svc.handle(limit("m1", 100_000))
    with pytest.raises(EventRejected):
        svc.handle(offer("m1", offer_id, 10_000, 300, order_ids=order_ids))
    assert svc.accept(AcceptOffer(offer_id, "m1", "k", T0 + timedelta(minutes=1))).code == "offer_not_found"
    svc.relay_outbox()
    assert e["bus"].of_type("loan.disbursed") == [] and e["bus"].of_type("loan_offer.created") == []


# ----------------------------------------------------------------- attacks: a financed order paid out in parts
def test_the_later_parts_of_a_financed_orders_payout_repay_its_own_loan_not_the_oldest(tmp_path: Any) -> None:
    from tests.unit.disbursement_helpers import audit_collections, disburse, settlement

    e = service_env(db_url=f"sqlite:///{tmp_path}/d.db")
    svc, clock = e["svc"], e["clock"]
    disburse(svc, "of1", 10_000, 300, order_ids=("oa",))
    clock.now = T0 + timedelta(hours=1)
    disburse(svc, "of2", 10_000, 300, at=T0 + timedelta(hours=1), order_ids=("ob",))
    svc.handle(settlement("m1", "s1", 3_000, T0 + timedelta(days=1), orders=(("ob", 3_000),)))
    svc.handle(settlement("m1", "s2", 7_300, T0 + timedelta(days=2), orders=(("ob", 7_300),)))
    assert (_loan(svc, "of2").state, _loan(svc, "of2").principal_due) == ("repaid", 0)
    assert (_loan(svc, "of1").principal_due, _loan(svc, "of1").fee_due) == (10_000, 300)
    # named once more, paying nothing for it: the withheld money repays the oldest loan
    svc.handle(settlement("m1", "s3", 1_000, T0 + timedelta(days=3), orders=(("ob", 0),)))
    assert _loan(svc, "of1").principal_due + _loan(svc, "of1").fee_due == 9_300
    assert audit_collections(svc) == []
