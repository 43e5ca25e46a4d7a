"""A payout the rail refuses for good cancels the loan instead of leaving it `accepted` for ever."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from services.disbursement.adapters.orm import financed_orders, journal_entries, offers, webhook_deliveries
from services.disbursement.adapters.payout_rails import HttpRail, SandboxRail
from services.disbursement.ports import PayoutFailed, PayoutRejected, PayoutRequest
from services.disbursement.service import AcceptOffer, loan_id_for
from services.disbursement.settings import DisbursementSettings
from tests.unit.disbursement_helpers import T0, limit, offer, service_env, settlement


class RefusingRail:
    """Refuses every payout for good (a closed account) while `refuse`; else fails for now, or pays."""

    def __init__(self, refuse: bool = True) -> None:
        self.refuse = refuse
        self.transient = False
        self.inner: SandboxRail | None = None
        self.calls = 0

    def pay(self, request: PayoutRequest) -> str:
        self.calls += 1
        if self.refuse:
            raise PayoutRejected("payout API refused (422): account closed")
        if self.transient:
            raise PayoutFailed("payout API answered 503")
        assert self.inner is not None
        return self.inner.pay(request)


def _env(tmp_path: Any, rail: RefusingRail) -> dict[str, Any]:
    e = service_env(DisbursementSettings(recovery_after_seconds=0), db_url=f"sqlite:///{tmp_path}/d.db", rail=rail)
    rail.inner = SandboxRail(e["svc"].engine)
    svc = e["svc"]
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 10_000, 500, order_ids=("o1", "o2")))
    return e


def _accept(svc: Any, minutes: int = 1, key: str = "k1") -> Any:
    return svc.accept(AcceptOffer("of1", "m1", key, T0 + timedelta(minutes=minutes)))


def test_a_payout_refused_for_good_cancels_the_loan_with_a_final_answer(tmp_path: Any) -> None:
    rail = RefusingRail()
    e = _env(tmp_path, rail)
    svc = e["svc"]
    first = _accept(svc)
    assert first.status_code == 409 and first.code == "payout_rejected", first.body
    loan = svc.get_loan("m1", loan_id_for("of1"))
    assert loan is not None and loan["state"] == "cancelled"
    # A retry of the acceptance gets the same final refusal, and pays nothing.
    again = _accept(svc, minutes=2)
    assert (again.status_code, again.code) == (409, "payout_rejected")
    # Another key for the same offer cannot accept it again: the offer stays closed.
    other = _accept(svc, minutes=3, key="k2")
    assert other.status_code == 409 and other.code != "payout_rejected" and not other.ok
    with svc.engine.connect() as conn:
        assert conn.execute(sa.select(offers.c.state)).scalar_one() == "accepted"
        assert set(conn.execute(sa.select(financed_orders.c.state)).scalars()) == {"cancelled"}
    assert rail.calls == 1


def test_a_cancelled_loan_reverses_its_acceptance_entry_and_moves_no_cash(tmp_path: Any) -> None:
    svc = _env(tmp_path, RefusingRail())["svc"]
    _accept(svc)
    assert all(v == 0 for v in svc.balances().values()), svc.balances()
    with svc.engine.connect() as conn:
        rows = conn.execute(sa.select(journal_entries.c.entry_id, journal_entries.c.reverses)
                            .order_by(journal_entries.c.entry_id)).all()
    lid = loan_id_for("of1")
    assert [tuple(r) for r in rows] == [(f"cancellation:{lid}", f"disbursement:{lid}"), (f"disbursement:{lid}", None)]


def test_a_cancelled_loan_is_announced_audited_counted_and_sent_to_the_merchant(tmp_path: Any) -> None:
    e = _env(tmp_path, RefusingRail())
    svc, bus = e["svc"], e["bus"]
    _accept(svc)
    svc.relay_outbox()
    lid = loan_id_for("of1")
    cancelled = bus.of_type("loan.cancelled")
    assert [c["data"] for c in cancelled] == [{"loan_id": lid, "offer_id": "of1", "reason": "payout_rejected"}]
    assert not bus.of_type("loan.disbursed")
    last = [r for r in svc.audit_trail("m1") if r["action"] == "payout"][-1]
    assert (last["ref"], last["outcome"], last["detail"]["error"]) == (
        lid, "rejected", "payout API refused (422): account closed")
    assert svc.metrics.registry.get_sample_value(
        "floatbridge_disbursement_loans_cancelled_total", {"currency": "BRL"}) == 1.0
    with svc.engine.connect() as conn:
        payloads = conn.execute(sa.select(webhook_deliveries.c.payload).where(
            webhook_deliveries.c.event_type == "loan.cancelled")).scalars().all()
    assert [json.loads(p)["data"]["loan_id"] for p in payloads] == [lid]


def test_recovery_cancels_a_loan_whose_retried_payout_is_then_refused_for_good(tmp_path: Any) -> None:
    rail = RefusingRail(refuse=False)
    rail.transient = True
    svc = _env(tmp_path, rail)["svc"]
    assert _accept(svc).status_code == 202
    assert svc.recover(T0 + timedelta(minutes=5)) == 0
    assert svc.get_loan("m1", loan_id_for("of1"))["state"] == "accepted"  # type: ignore[index]
    rail.transient, rail.refuse = False, True
    assert svc.recover(T0 + timedelta(minutes=10)) == 0
    assert svc.get_loan("m1", loan_id_for("of1"))["state"] == "cancelled"  # type: ignore[index]
    calls = rail.calls
    svc.recover(T0 + timedelta(minutes=15))
    assert rail.calls == calls  # never retried again
    replay = _accept(svc, minutes=20)
    assert (replay.status_code, replay.code) == (409, "payout_rejected")


def test_a_cancelled_loan_frees_the_merchants_available_limit_and_is_never_collected(tmp_path: Any) -> None:
    rail = RefusingRail()
    svc = _env(tmp_path, rail)["svc"]
    _accept(svc)
    rail.refuse = False
    svc.handle(offer("m1", "of2", 95_000, 0, order_ids=("o3",), at=T0 + timedelta(minutes=5)))
    second = svc.accept(AcceptOffer("of2", "m1", "k2", T0 + timedelta(minutes=6)))
    assert second.status_code == 200, second.body  # 95,000 fits only if the cancelled 10,000 lent nothing


def test_a_settlement_after_a_cancellation_collects_nothing_for_the_cancelled_loan(tmp_path: Any) -> None:
    e = _env(tmp_path, RefusingRail())
    svc, bus = e["svc"], e["bus"]
    _accept(svc)
    svc.handle(settlement("m1", "s1", 4_000, T0 + timedelta(hours=1), orders=(("o1", 50_000),)))
    svc.relay_outbox()
    assert not bus.of_type("loan.repayment_applied")
    assert svc.get_loan("m1", loan_id_for("of1"))["remaining"]["amount"] == 0  # type: ignore[index]


@pytest.mark.parametrize("status,permanent", [
    (400, True), (402, True), (410, True), (422, True), (451, True),
    (408, False), (409, False), (425, False), (429, False), (500, False), (502, False), (503, False),
    # our own configuration (key, permissions, URL, method, proxy): retried, never a cancellation of every loan
    (401, False), (403, False), (404, False), (405, False), (407, False),
])
def test_the_http_rail_maps_a_4xx_refusal_to_payout_rejected_and_the_rest_to_payout_failed(
        status: int, permanent: bool) -> None:
    client = httpx.Client(base_url="https://rail.example", transport=httpx.MockTransport(
        lambda req: httpx.Response(status, json={"error": "no"})))
    rail = HttpRail("https://rail.example", client=client)
    with pytest.raises(PayoutFailed) as caught:
        rail.pay(PayoutRequest("ln_1", "m1", 100, "BRL", "loan ln_1"))
    assert isinstance(caught.value, PayoutRejected) is permanent


def test_the_http_rail_treats_an_unreachable_api_as_transient() -> None:
    def down(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=req)

    rail = HttpRail("https://rail.example", client=httpx.Client(base_url="https://rail.example",
                                                                 transport=httpx.MockTransport(down)))
    with pytest.raises(PayoutFailed) as caught:
        rail.pay(PayoutRequest("ln_1", "m1", 100, "BRL", "loan ln_1"))
    assert not isinstance(caught.value, PayoutRejected)
