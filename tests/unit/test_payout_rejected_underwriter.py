"""loan.cancelled (the rail refused the payout for good) releases what the accepted offer reserved, once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import codec
from services.underwriter.bootstrap import bootstrap
from services.underwriter.domain.policy import PolicySettings, accepted_pending
from services.underwriter.domain.scoring import FixedScorer
from services.underwriter.settings import load
from services.underwriter.synthetic import Profile, history

START = datetime(2025, 1, 1, tzinfo=UTC)


def _run(**policy: Any) -> tuple[Any, dict[str, Any], datetime]:
    u = bootstrap(settings=load(debounce_seconds=30), scorer=FixedScorer(0.01), policy=PolicySettings(**policy))
    out: list[dict[str, Any]] = []
    for e in history("m1", START, 60, Profile(category="electronics")):
        out += u.handle(e)
    offer = [o for o in out if o["type"] == "loan_offer.created"][-1]["data"]
    assert u.state("m1").offer[0] == offer["offer_id"]
    assert u.portfolio.counters["cat:electronics:BRL"] == offer["amount"]["amount"]
    return u, offer, START + timedelta(days=60, hours=1)


def _ev(etype: str, data: dict[str, Any], when: datetime, eid: str) -> dict[str, Any]:
    return codec.new_event(etype, "m1", data, when, "test", id=eid)


def _cancelled(offer: dict[str, Any], when: datetime, eid: str) -> dict[str, Any]:
    return _ev("loan.cancelled", {"loan_id": "L1", "offer_id": offer["offer_id"], "reason": "payout_rejected"},
               when, eid)


def test_a_cancelled_loan_releases_exactly_what_its_accepted_offer_reserved_once() -> None:
    u, offer, t = _run()
    u.policy = PolicySettings(kill_switch=True)  # no new offer muddles the counters
    cats = u.portfolio.counters
    day_keys = {k: v for k, v in cats.items() if k.startswith("day:")}
    outstanding_before = u.state("m1").outstanding(int(t.timestamp()) + 3600)
    u.handle(_ev("loan_offer.accepted", {"offer_id": offer["offer_id"], "loan_id": "L1",
                                         "accepted_at": t.strftime("%Y-%m-%dT%H:%M:%SZ")}, t, "acc-1"))
    assert cats["cat:electronics:BRL"] == offer["amount"]["amount"]
    assert accepted_pending(u.state("m1")) == offer["amount"]["amount"]
    u.handle(_cancelled(offer, t + timedelta(minutes=1), "can-1"))
    state = u.state("m1")
    assert cats["cat:electronics:BRL"] == 0
    assert state.accepted == [] and accepted_pending(state) == 0
    assert "L1" not in state.loans and state.outstanding(int(t.timestamp()) + 3600) == outstanding_before
    # Re-sent under a new event id: nothing more is released (the counter never goes below zero).
    u.handle(_cancelled(offer, t + timedelta(minutes=2), "can-2"))
    assert cats["cat:electronics:BRL"] == 0
    # The daily origination budget is treated as for a withdrawn offer: left as it was.
    assert {k: v for k, v in cats.items() if k.startswith("day:")} == day_keys


def test_a_cancellation_before_its_acceptance_releases_the_open_offer_and_the_late_acceptance_holds_nothing() -> None:
    u, offer, t = _run(kill_switch=False)
    u.policy = PolicySettings(kill_switch=True)
    cats = u.portfolio.counters
    u.handle(_cancelled(offer, t, "can-1"))
    assert cats["cat:electronics:BRL"] == 0 and u.state("m1").offer == []
    u.handle(_ev("loan_offer.accepted", {"offer_id": offer["offer_id"], "loan_id": "L1",
                                         "accepted_at": t.strftime("%Y-%m-%dT%H:%M:%SZ")},
                 t + timedelta(minutes=1), "acc-1"))
    assert u.state("m1").accepted == [] and cats["cat:electronics:BRL"] == 0


def test_a_cancellation_of_an_offer_the_state_never_held_changes_nothing() -> None:
    u, offer, t = _run()
    cats = dict(u.portfolio.counters)
    u.handle(_ev("loan.cancelled", {"loan_id": "Lx", "offer_id": "never-offered", "reason": "payout_rejected"},
                 t, "can-x"))
    assert u.portfolio.counters["cat:electronics:BRL"] == cats["cat:electronics:BRL"]
    assert u.state("m1").offer[0] == offer["offer_id"]
