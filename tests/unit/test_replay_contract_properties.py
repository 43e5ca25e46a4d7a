"""Generated marketplace streams through the whole engine (`floatbridge replay`): whatever the merchants do, and in
whatever order and repetition their events arrive, what the engine emits keeps the contract (DESIGN.md), and the
ledger balances. Bounded to a few seconds an example; derandomized so that a run is repeatable. CI runs a few dozen
examples; `FLOATBRIDGE_CONTRACT_EXAMPLES=2000` (and `FLOATBRIDGE_CONTRACT_SEED` for another derandomized sequence)
runs many more locally."""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from floatbridge.embedded import contract
from floatbridge.embedded.runner import replay_file
from floatbridge.embedded.streams import MerchantShape, marketplace_stream

pytestmark = pytest.mark.unit

shapes = st.builds(
    MerchantShape,
    currency=st.sampled_from(["BRL", "JPY", "KWD", "USD"]),
    days=st.integers(20, 70),
    orders_per_day=st.sampled_from([1.5, 3.0, 5.0]),
    buyers=st.sampled_from([3, 15, 300]),  # few buyers: concentration and repeat-buyer guards
    cancel_rate=st.sampled_from([0.0, 0.03, 0.2]),
    refund_rate=st.sampled_from([0.0, 0.05, 0.2]),
    chargeback_rate=st.sampled_from([0.0, 0.01, 0.05]),
    undelivered_rate=st.sampled_from([0.0, 0.05, 0.3]),
    payout_every_days=st.sampled_from([3, 7, 14]),
    withhold_own=st.sampled_from([0.0, 0.3]),  # payouts whose withheld the marketplace wrote itself
    status_change=st.sampled_from(["", "suspended", "closed", "suspended_then_active"]),
    silent_from_day=st.sampled_from([None, 25, 40]),  # stops trading: loans fall due unpaid
    silent_days=st.sampled_from([0, 20, 100]),  # 100: a silence longer than every feature window, then back
    odd_rate=st.sampled_from([0.0, 0.05, 0.3]),
    # unplaced/unshipped orders, partial chargebacks, re-sent refunds, payouts in parts or twice or of unknown orders,
    # re-categorisation, re-onboarding, midnight and 60/90-day events
    messy_rate=st.sampled_from([0.0, 0.1, 0.4]),
    burst=st.sampled_from([0, 5]),  # several orders at one timestamp
)

streams = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1),
    "shapes": st.lists(shapes, min_size=1, max_size=3),
    "tail_days": st.sampled_from([0, 30, 100]),  # the clock runs on: delinquency, charge-off
    "swaps": st.sampled_from([0, 10, 40]),
    "late": st.sampled_from([0, 5]),
    "duplicates": st.sampled_from([0, 10]),
    "backfill": st.sampled_from([0, 25]),
    "accept": st.sampled_from(["all", "one"]),
})


def replay_stream(params: dict[str, Any], tmp: Path) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    rng = random.Random(params["seed"])
    events = marketplace_stream(rng, params["shapes"], tail_days=params["tail_days"], swaps=params["swaps"],
                                late=params["late"], duplicates=params["duplicates"], backfill=params["backfill"])
    src = tmp / "in.ndjson"
    src.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    result = replay_file(src, tmp / "out", accept=params["accept"], progress=False)
    emitted = [json.loads(x) for x in (tmp / "out" / "emitted.ndjson").read_text().splitlines()]
    return result, events, emitted


EXAMPLES = int(os.environ.get("FLOATBRIDGE_CONTRACT_EXAMPLES", "30"))
SEED = os.environ.get("FLOATBRIDGE_CONTRACT_SEED")


def _seeded(test: Any) -> Any:
    return seed(int(SEED))(test) if SEED else test


@_seeded
@settings(max_examples=EXAMPLES, deadline=None, derandomize=SEED is None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], database=None)
@given(streams)
def test_whatever_a_marketplace_streams_the_engine_keeps_the_contract_and_balances_its_ledger(
        params: dict[str, Any]) -> None:
    with TemporaryDirectory() as tmp:
        result, events, emitted = replay_stream(params, Path(tmp))
    # Every generated event is valid and exact duplicates are dropped, not refused: no line is reported.
    assert result.engine.line_errors == []
    violations = contract.check(events, emitted)
    assert not violations, "\n".join(map(str, violations[:20]))
    assert result.engine.ledger_balanced()
    assert result.events == len(events)


def test_the_generated_streams_do_reach_lending_delinquency_and_charge_off(tmp_path: Path) -> None:
    """The property above means something only if streams like these lend, collect and default."""
    shape = MerchantShape(days=60, orders_per_day=5, silent_from_day=45)
    _result, _events, emitted = replay_stream({"seed": 7, "shapes": [shape, MerchantShape(currency="JPY", days=60)],
                                               "tail_days": 100, "swaps": 10, "late": 5, "duplicates": 10,
                                               "backfill": 25, "accept": "all"}, tmp_path)
    seen = Counter(e["type"] for e in emitted)
    for etype in ("loan_offer.created", "loan.disbursed", "loan.repayment_applied", "loan.repaid", "loan.delinquent",
                  "loan.charged_off", "collection.instruction"):
        assert seen[etype] > 0, (etype, dict(seen))


def test_messy_streams_carry_every_messy_behaviour_the_engine_must_survive() -> None:
    """The messy shape is not a no-op: its streams hold each behaviour it promises (so the property above meets
    them)."""
    events = marketplace_stream(random.Random(11), [MerchantShape(days=70, orders_per_day=6, messy_rate=0.5, burst=5)])
    by_order: dict[str, set[str]] = {}
    for e in events:
        if e["type"].startswith("order."):
            by_order.setdefault(e["data"]["order_id"], set()).add(e["type"])
    settled = Counter(o["order_id"] for e in events if e["type"] == "settlement.paid" for o in e["data"]["orders"])
    refund_ids = Counter(e["data"]["refund_id"] for e in events if e["type"] == "order.refunded")
    amounts = {e["data"]["order_id"]: e["data"]["amount"]["amount"] for e in events if e["type"] == "order.paid"}
    times = Counter(e["time"] for e in events if e["type"] == "order.placed")
    assert any("order.paid" in t and "order.placed" not in t for t in by_order.values()), "paid without placement"
    assert any("order.delivered" in t and "order.shipped" not in t for t in by_order.values()), "delivered, unshipped"
    assert any(e["type"] == "order.chargeback" and e["data"]["amount"]["amount"] < amounts[e["data"]["order_id"]]
               for e in events), "partial chargeback"
    assert max(refund_ids.values()) >= 2, "a refund re-sent under its id"
    assert max(settled.values()) >= 2, "an order paid out in parts or twice"
    assert any(o not in by_order for o in settled), "a payout naming an order nobody sent"
    assert sum(e["type"] == "merchant.onboarded" for e in events) == 2, "re-onboarding"
    assert any(e["type"] == "merchant.updated" and "category" in e["data"] for e in events), "category change"
    assert any(t.endswith("T00:00:00Z") for t in times), "an order at midnight UTC"
    assert max(times.values()) >= 3, "a burst of orders at one timestamp"
    onboarded = datetime.fromisoformat(events[0]["time"].replace("Z", "+00:00"))
    for mark in (60, 90):
        assert (onboarded + timedelta(days=mark)).strftime("%Y-%m-%dT%H:%M:%SZ") in times, f"day {mark}"


def test_a_messy_merchant_lending_on_every_offer_then_closed_with_loans_open_keeps_the_contract(
        tmp_path: Path) -> None:
    """Many small loans (accept=all), a merchant closed while they are open and silent for over 90 days, another
    suspended: the clock runs on through delinquency and charge-off."""
    shapes = [MerchantShape(days=70, orders_per_day=8, messy_rate=0.3, burst=5, status_change="closed",
                            silent_from_day=45),
              MerchantShape(currency="KWD", days=60, messy_rate=0.4, status_change="suspended_then_active",
                            silent_from_day=20, silent_days=100)]
    result, events, emitted = replay_stream({"seed": 3, "shapes": shapes, "tail_days": 100, "swaps": 10, "late": 5,
                                             "duplicates": 10, "backfill": 0, "accept": "all"}, tmp_path)
    seen = Counter(e["type"] for e in emitted)
    assert seen["loan.disbursed"] >= 5 and seen["loan.charged_off"] > 0, dict(seen)
    assert result.engine.line_errors == []
    violations = contract.check(events, emitted)
    assert not violations, "\n".join(map(str, violations[:20]))
    assert result.engine.ledger_balanced()
