"""The underwriter's kill switch (FLOATBRIDGE_UNDERWRITER_KILL_SWITCH, a policy setting read at start: turning it
on is a restart of the workers with it set). An open offer must not wait for its merchant's next event to be
withdrawn: `withdraw_open_offers` withdraws every open offer at once, without scoring. Through the core
(bootstrap with fakes), a restart being a new core over the same state store and portfolio counters."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from schemas import codec
from services.underwriter.bootstrap import bootstrap
from services.underwriter.domain.decisions import kill_switch_withdrawal
from services.underwriter.domain.policy import PolicySettings
from services.underwriter.domain.scoring import FixedScorer
from services.underwriter.service import MemoryPortfolio, state_bytes
from services.underwriter.settings import load
from tests.unit.underwriter_helpers import END, ev, feed, steady

pytestmark = pytest.mark.unit


def core(store: Any, portfolio: MemoryPortfolio, kill_switch: bool) -> Any:
    return bootstrap(settings=load(debounce_seconds=30), scorer=FixedScorer(0.01), state_store=store,
                     portfolio=portfolio, policy=PolicySettings(kill_switch=kill_switch))


def merchants_with_open_offers(store: Any, portfolio: MemoryPortfolio) -> Any:
    before = core(store, portfolio, kill_switch=False)
    feed(before, steady(60))
    feed(before, [dict(e, subject="m2", id="m2-" + e["id"]) for e in steady(60)])
    assert before.state("m1").offer and before.state("m2").offer
    return before


@pytest.mark.parametrize("saved", [False, True], ids=["objects", "bytes"])
def test_with_the_kill_switch_on_every_open_offer_is_withdrawn_at_once_not_at_its_merchants_next_event(
        saved: bool) -> None:
    store: dict[str, Any] = {}
    portfolio = MemoryPortfolio()
    before = merchants_with_open_offers(store, portfolio)
    offers = {m: before.state(m).offer[0] for m in ("m1", "m2")}
    if saved:  # as the Faust table holds them
        store = {m: state_bytes(s) for m, s in store.items()}
    held = dict(portfolio.counters)
    assert any(v > 0 for k, v in held.items() if k.startswith("cat:"))
    after = core(store, portfolio, kill_switch=True)  # the workers restarted with the switch on
    out = after.withdraw_open_offers()
    assert sorted((e["subject"], e["data"]["offer_id"]) for e in out) == sorted(offers.items())
    for e in out:
        assert e["type"] == "loan_offer.withdrawn"
        assert codec.validate(e) == [], codec.validate(e)
        assert e["data"]["reasons"][0]["code"] == "KILL_SWITCH"
    assert not after.state("m1").offer and not after.state("m2").offer
    assert all(v == 0 for k, v in portfolio.counters.items() if k.startswith("cat:")), "the offers' exposure freed"
    assert after.withdraw_open_offers() == [], "a second sweep withdraws nothing twice"
    # The merchant's next decision withdraws nothing again and offers nothing.
    t = END + timedelta(hours=1)
    later = feed(after, [ev("settlement.paid", {
        "settlement_id": "s-late", "gross": {"amount": 100, "currency": "BRL"}, "fees": {"amount": 0, "currency": "BRL"},
        "withheld": {"amount": 0, "currency": "BRL"}, "net": {"amount": 100, "currency": "BRL"}, "orders": []},
        t, "s-late")])
    assert not [e for e in later if e["type"] in ("loan_offer.withdrawn", "loan_offer.created")]


def test_the_sweep_takes_only_the_merchants_the_worker_accepts() -> None:
    store: dict[str, Any] = {}
    portfolio = MemoryPortfolio()
    merchants_with_open_offers(store, portfolio)
    after = core(store, portfolio, kill_switch=True)
    out = after.withdraw_open_offers(accept=lambda s: s.merchant_id == "m1")
    assert [e["subject"] for e in out] == ["m1"]
    assert after.state("m2").offer, "a merchant of a partition another worker owns is left to that worker"


def test_with_the_kill_switch_off_the_sweep_withdraws_nothing() -> None:
    store: dict[str, Any] = {}
    portfolio = MemoryPortfolio()
    merchants_with_open_offers(store, portfolio)
    same = core(store, portfolio, kill_switch=False)
    assert same.withdraw_open_offers() == []
    assert same.state("m1").offer


def test_with_the_kill_switch_on_an_ordinary_order_event_withdraws_its_merchants_open_offer_too() -> None:
    store: dict[str, Any] = {}
    portfolio = MemoryPortfolio()
    before = merchants_with_open_offers(store, portfolio)
    offer_id = before.state("m1").offer[0]
    after = core(store, portfolio, kill_switch=True)
    t = END + timedelta(minutes=1)
    placed = ev("order.placed", {"order_id": "late-1", "buyer_id": "b-late", "amount": {"amount": 5_000, "currency": "BRL"}},
                t, "late-1-placed")
    out = feed(after, [placed]) + after.flush(t + timedelta(minutes=5))  # decided at once or debounced
    assert [(e["type"], e["data"]["offer_id"]) for e in out if e["type"] == "loan_offer.withdrawn"] == [
        ("loan_offer.withdrawn", offer_id)]


def test_an_offer_expired_by_its_merchants_latest_event_is_dropped_without_a_withdrawal() -> None:
    store: dict[str, Any] = {}
    portfolio = MemoryPortfolio()
    merchants_with_open_offers(store, portfolio)
    state = store["m1"]
    expires = int(state.offer[3])
    assert kill_switch_withdrawal(state, expires, PolicySettings(kill_switch=True), portfolio) == []
    assert not state.offer
