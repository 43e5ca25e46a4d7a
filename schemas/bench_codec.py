"""Measure codec throughput: `python -m schemas.bench_codec [seconds]` (a benchmark, not a test)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from schemas.codec import decode, encode, new_event, validate


def _order_placed() -> dict[str, Any]:
    data = {"order_id": "e481f51cbdc54678b7cc49136f2d6af7", "buyer_id": "9ef432eb6251297304e76186b10a928d",
            "amount": {"amount": 125000, "currency": "BRL"}}
    return new_event("order.placed", "m-4f1c2a", data, "2024-05-14T13:05:27Z", "https://marketplace.example.com/events",
                     id="evt-000001")


def _settlement(orders: int) -> dict[str, Any]:
    money = {"amount": 1000, "currency": "BRL"}
    gross = {"amount": 1000 * orders, "currency": "BRL"}
    data = {"settlement_id": "st-1", "gross": gross, "fees": {"amount": 0, "currency": "BRL"},
            "withheld": {"amount": 0, "currency": "BRL"}, "net": gross,
            "orders": [{"order_id": f"o-{i}", "amount": money} for i in range(orders)]}
    return new_event("settlement.paid", "m-4f1c2a", data, "2024-05-29T12:00:00Z", "urn:bench", id="evt-000002")


def rate(fn: Callable[[], Any], seconds: float) -> float:
    """Calls per CPU-second of `fn`, measured for about `seconds` of CPU time.

    CPU time rather than wall time, so other processes on a busy machine do not skew it.
    """
    fn()  # compile and cache the validators outside the measurement
    calls, start = 0, time.process_time()
    while (elapsed := time.process_time() - start) < seconds:
        for _ in range(1000):
            fn()
        calls += 1000
    return calls / elapsed


def main(argv: list[str]) -> int:
    seconds = float(argv[0]) if argv else 2.0
    placed = _order_placed()
    invalid = _order_placed()
    invalid["data"]["amount"] = {"amount": -1, "currency": "XYZ"}
    raw = encode(placed)
    settlement = _settlement(100)
    assert validate(placed) == [] and validate(settlement) == [] and validate(invalid)
    rows = [
        ("validate order.placed (valid, fast path)", lambda: validate(placed)),
        ("decode + validate order.placed", lambda: validate(decode(raw))),
        ("validate settlement.paid with 100 orders", lambda: validate(settlement)),
        ("validate order.placed (invalid, full error walk)", lambda: validate(invalid)),
    ]
    for label, fn in rows:
        print(f"{label:50s} {rate(fn, seconds / len(rows)):>10,.0f} /s (per CPU-second)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
