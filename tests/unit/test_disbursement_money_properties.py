"""Random event streams through the whole disbursement service (SQLite): offers, acceptances, settlements
(resent, early, oversized, foreign currency), refunds, chargebacks, cancellations, aging and recovery.
After every step the money invariants hold: the journal balances per currency, every account keeps its
sign, each loan's dues equal its ledger receivables, the collection instruction asks exactly what is owed,
and money withheld is either applied to loans, recovered, or owed back to the merchant."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.disbursement.adapters.orm import loans
from services.disbursement.domain import ledger
from services.disbursement.service import AcceptOffer
from services.disbursement.settings import DisbursementSettings
from tests.unit.disbursement_helpers import T0, Bus, ev, limit, m, offer, service_env, settlement

pytestmark = pytest.mark.unit

ORDERS = [f"o{i}" for i in range(8)]
step = st.one_of(
    st.tuples(st.just("offer"), st.integers(1_000, 60_000), st.integers(0, 2_000),
              st.lists(st.sampled_from(ORDERS), min_size=1, max_size=3, unique=True), st.integers(1, 20)),
    st.tuples(st.just("accept")),
    st.tuples(st.just("settle"), st.integers(0, 80_000), st.lists(st.sampled_from(ORDERS), max_size=3),
              st.booleans(), st.sampled_from(["BRL", "BRL", "BRL", "USD"])),
    st.tuples(st.just("refund"), st.sampled_from(ORDERS), st.integers(1, 30_000), st.sampled_from(["r1", "r2"])),
    st.tuples(st.just("chargeback"), st.sampled_from(ORDERS), st.integers(1, 30_000)),
    st.tuples(st.just("cancel"), st.sampled_from(ORDERS)),
    st.tuples(st.just("days"), st.integers(1, 40)),
    st.tuples(st.just("recover")),
)


def check(svc: Any, bus: Bus) -> None:
    raw = svc.balances()
    bals = {(ledger.Account(a), c): v for (a, c), v in raw.items()}
    assert ledger.sign_violations(bals) == []
    for cur in {c for _, c in raw}:
        assert sum(v for (_, c), v in raw.items() if c == cur) == 0
    with svc.engine.connect() as conn:
        rows = conn.execute(sa.select(loans)).all()
        per_loan = dict(conn.execute(sa.text(
            "SELECT e.loan_id, SUM(CASE WHEN l.side = 'D' THEN l.amount ELSE -l.amount END) FROM journal_lines l "
            "JOIN journal_entries e ON e.entry_id = l.entry_id WHERE l.account IN "
            "('loan_principal_receivable', 'fee_receivable') AND e.loan_id IS NOT NULL GROUP BY e.loan_id")).all())
        unrecovered = dict(conn.execute(sa.text(
            "SELECT e.loan_id, SUM(CASE WHEN l.side = 'D' THEN l.amount ELSE -l.amount END) FROM journal_lines l "
            "JOIN journal_entries e ON e.entry_id = l.entry_id WHERE l.account = 'charge_off_loss' "
            "AND l.currency = 'BRL' GROUP BY e.loan_id")).all())
    owed = 0
    for r in rows:
        assert r.principal_due >= 0 and r.fee_due >= 0
        assert r.principal_due <= r.principal and r.fee_due <= r.fee
        if r.state != "charged_off":
            assert per_loan.get(r.loan_id, 0) == r.principal_due + r.fee_due, r.loan_id
        if r.state in ("disbursed", "repaying", "delinquent"):
            owed += r.principal_due + r.fee_due
        elif r.state == "charged_off":  # still owed by the merchant until recovered
            assert 0 <= unrecovered.get(r.loan_id, 0) <= r.principal + r.fee
            owed += unrecovered.get(r.loan_id, 0)
    instructions = bus.of_type("collection.instruction")
    if instructions:
        assert instructions[-1]["data"]["owed"]["amount"] == owed
    assert raw.get(("charge_off_loss", "USD"), 0) == 0  # nothing was ever lent in USD


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(step, min_size=1, max_size=25))
def test_any_event_stream_keeps_the_money_invariants(tmp_path_factory: Any, steps: list[tuple[Any, ...]]) -> None:
    path = tmp_path_factory.mktemp("money")
    env = service_env(DisbursementSettings(recovery_after_seconds=0), db_url=f"sqlite:///{path}/d.db",
                      webhook_url=None)
    svc, bus, clock = env["svc"], env["bus"], env["clock"]
    now = T0
    offers: list[str] = []
    sent: list[dict[str, Any]] = []
    for i, s in enumerate(steps):
        now += timedelta(hours=1)
        clock.now = now
        kind = s[0]
        if kind == "offer":
            _, amount, fee, orders, due_days = s
            svc.handle(limit("m1", 200_000, at=now, lim=200_000))
            svc.handle(offer("m1", f"of{i}", amount, fee, at=now, order_ids=tuple(orders), due_days=due_days))
            offers.append(f"of{i}")
        elif kind == "accept" and offers:
            svc.accept(AcceptOffer(offers[-1], "m1", f"k{i}", now))
        elif kind == "settle":
            _, withheld, orders, resend, cur = s
            if resend and sent:
                svc.handle({**sent[-1], "id": f"resent-{i}"})
            else:
                e = settlement("m1", f"st{i}", withheld, now, orders=tuple((o, 5_000) for o in orders),
                               gross=withheld + 10_000)
                if cur != "BRL":
                    for key in ("gross", "fees", "withheld", "net"):
                        e["data"][key]["currency"] = cur
                    for o in e["data"]["orders"]:
                        o["amount"]["currency"] = cur
                sent.append(e)
                svc.handle(e)
        elif kind == "refund":
            svc.handle(ev("order.refunded", "m1", {"order_id": s[1], "refund_id": s[3], "amount": m(s[2])}, now))
        elif kind == "chargeback":
            svc.handle(ev("order.chargeback", "m1", {"order_id": s[1], "chargeback_id": f"c{i}", "amount": m(s[2])},
                          now))
        elif kind == "cancel":
            svc.handle(ev("order.cancelled", "m1", {"order_id": s[1]}, now))
        elif kind == "days":
            now += timedelta(days=s[1])
            clock.now = now
            svc.age(now)
        elif kind == "recover":
            svc.recover(now)
        check(svc, bus)
