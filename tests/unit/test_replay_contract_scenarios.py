"""Scenarios the contract checks and generated streams found across the whole engine (floatbridge replay)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from floatbridge.embedded import contract
from floatbridge.embedded.runner import replay_file
from tests.scenario import _ev, healthy_merchant, settlement

pytestmark = pytest.mark.unit

END = datetime(2025, 3, 1, tzinfo=UTC)


def _replay(tmp_path: Path, events: list[dict[str, Any]], accept: str = "all", name: str = "run") -> tuple[Any, list[dict[str, Any]]]:
    src = tmp_path / f"{name}.ndjson"
    src.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    result = replay_file(src, tmp_path / name, accept=accept, progress=False)
    emitted = [json.loads(x) for x in (tmp_path / name / "emitted.ndjson").read_text().splitlines()]
    return result, emitted


def test_an_order_in_another_currency_than_the_merchants_is_reported_by_line_and_the_replay_goes_on(
        tmp_path: Path) -> None:
    # Ingest cannot know a merchant's currency (one currency per event is all it checks); the underwriter can, and
    # refuses the order. The Kafka worker dead-letters such a record and goes on; a replay must not abort on it.
    h = healthy_merchant("m-cur", END, days=40)
    events = list(h.events)
    stray = _ev("order.placed", "m-cur", END - timedelta(days=2), {
        "order_id": "m-cur-usd", "buyer_id": "b-x", "amount": {"amount": 5_000, "currency": "USD"}}, "m-cur-usd-pl")
    at = next(i for i, e in enumerate(events) if e["time"] > stray["time"])
    events.insert(at, stray)
    events.append(settlement("m-cur", END + timedelta(days=3), h.open_orders, "m-cur-final"))

    result, emitted = _replay(tmp_path, events)

    bad = {line: (eid, errs) for line, eid, errs in result.engine.line_errors}
    assert set(bad) == {at + 1}
    assert bad[at + 1][0] == "m-cur-usd-pl"
    assert any("USD" in e["message"] for e in bad[at + 1][1])
    assert result.events == len(events)
    assert any(e["type"] == "loan.disbursed" for e in emitted), "the rest of the stream still lends"
    assert contract.check(events, emitted) == []
    assert result.engine.ledger_balanced()


def test_a_settlement_in_another_currency_for_a_borrower_is_reported_by_line_and_the_replay_goes_on(
        tmp_path: Path) -> None:
    h = healthy_merchant("m-cur2", END, days=40)
    events = list(h.events)
    later = END + timedelta(days=3)
    stray = settlement("m-cur2", later, h.open_orders[:1], "m-cur2-usd", currency="USD")
    events += [stray, settlement("m-cur2", later + timedelta(hours=1), h.open_orders[1:], "m-cur2-final")]

    result, emitted = _replay(tmp_path, events)

    assert [(line, eid) for line, eid, _errs in result.engine.line_errors] == [(len(events) - 1, "m-cur2-usd")]
    assert result.engine.tally.rejected == 1
    assert any(e["type"] == "loan.repayment_applied" for e in emitted)
    assert contract.check(events, emitted) == []
    assert result.engine.ledger_balanced()


def test_orders_whose_events_arrive_weeks_after_their_settlement_are_never_financed(tmp_path: Path) -> None:
    # A backfill: the marketplace re-sends the placement, payment and shipping of orders it paid out weeks ago.
    # The underwriter remembers only so many closed orders; such an order must not come back as a receivable.
    h = healthy_merchant("m-late", END, days=60, seed=3)
    settled = [o["order_id"] for e in h.events if e["type"] == "settlement.paid" for o in e["data"]["orders"]]
    early = set(settled[:40])
    kinds = ("placed", "paid", "shipped", "delivered")
    late = [e for e in h.events if e["id"].rsplit("-", 1)[0] in early and e["id"].rsplit("-", 1)[1] in kinds]
    events = [e for e in h.events if e not in late] + late

    result, emitted = _replay(tmp_path, events)

    financed = {o for e in emitted if e["type"] == "loan_offer.created" for o in e["data"]["order_ids"]}
    assert any(e["type"] == "loan_offer.created" for e in emitted)
    assert not financed & early, sorted(financed & early)
    assert contract.check(events, emitted) == []


def test_a_payout_re_sent_exactly_later_is_a_duplicate_not_a_conflict_though_the_engine_filled_its_withheld(
        tmp_path: Path) -> None:
    # Marketplace files carry withheld 0 and the engine's settlement system fills it from collections.v1. The same
    # payout re-sent later (same id, same bytes) met a different instruction, got a different withheld, and ingest
    # refused it as "event id already used with different content".
    h = healthy_merchant("m-dup", END, days=45)
    later = END + timedelta(days=4)
    first = settlement("m-dup", later, h.open_orders[:3], "m-dup-pay1")
    events = [*h.events, first, settlement("m-dup", later + timedelta(days=1), h.open_orders[3:], "m-dup-pay2")]

    base, emitted = _replay(tmp_path, events, name="base")
    again, emitted_again = _replay(tmp_path, [*events, first], name="again")

    assert any(e["type"] == "loan.repayment_applied" and e["data"]["settlement_id"] == "m-dup-pay1" for e in emitted)
    assert again.engine.line_errors == base.engine.line_errors == []
    assert emitted_again == emitted


@pytest.mark.parametrize("switch", ["FLOATBRIDGE_UNDERWRITER_KILL_SWITCH", "FLOATBRIDGE_DISBURSEMENT_KILL_SWITCH"])
def test_with_a_kill_switch_on_a_replay_lends_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      switch: str) -> None:
    # The underwriter's switch pauses new offers; disbursement's refuses every acceptance.
    monkeypatch.setenv(switch, "true")
    h = healthy_merchant("m-ks", END, days=40)

    result, emitted = _replay(tmp_path, h.events)

    types = {e["type"] for e in emitted}
    assert "credit_limit.updated" in types and "loan.disbursed" not in types
    terms = contract.Terms.from_settings()
    if switch.startswith("FLOATBRIDGE_UNDERWRITER"):
        assert terms.kill_switch and "loan_offer.created" not in types
    else:
        assert result.engine.tally.refused_accepts["kill_switch"] > 0
    assert contract.check(h.events, emitted, terms) == []
