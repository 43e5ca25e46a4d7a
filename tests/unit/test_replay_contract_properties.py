"""Generated marketplace streams through the whole engine (`floatbridge replay`): whatever the merchants do, and in
whatever order and repetition their events arrive, what the engine emits keeps the contract (DESIGN.md), and the
ledger balances. Bounded to a few seconds an example; derandomized so that a run is repeatable."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
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
    silent_days=st.sampled_from([0, 20]),
    odd_rate=st.sampled_from([0.0, 0.05, 0.3]),
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


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
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
