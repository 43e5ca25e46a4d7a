"""`floatbridge replay` as a user runs it (its own process, a gzipped file of generated merchants with disorder,
duplicates, a backfill, messy orders and payouts, a burst and two bad lines): the refused lines are named by number,
the ledger balances, and what it emitted keeps the contract."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from floatbridge.embedded import contract
from floatbridge.embedded.streams import MerchantShape, marketplace_stream

pytestmark = pytest.mark.e2e


def test_floatbridge_replay_of_a_disordered_gzipped_stream_keeps_the_contract(tmp_path: Path) -> None:
    rng = random.Random(2026)
    events = marketplace_stream(rng, [
        MerchantShape(days=60, orders_per_day=4, silent_from_day=45, odd_rate=0.05, messy_rate=0.2),
        MerchantShape(currency="JPY", days=60, orders_per_day=3, buyers=15, refund_rate=0.1, status_change="suspended"),
        MerchantShape(currency="KWD", days=60, orders_per_day=5, withhold_own=0.3, chargeback_rate=0.02, burst=5),
    ], tail_days=90, swaps=30, late=5, duplicates=20, backfill=25)
    lines: list[str] = [json.dumps(e) for e in events]
    lines.insert(100, "{not json")
    lines.insert(500, json.dumps({**events[3], "id": "bad-money", "data": {**events[3]["data"], "amount": {
        "amount": -5, "currency": "BRL"}}}))
    src = tmp_path / "stream.ndjson.gz"
    src.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode("utf-8")))
    out = tmp_path / "out"

    proc = subprocess.run([sys.executable, "-c", "from floatbridge.cli import main; main()", "replay", str(src),
                           "--out", str(out), "--accept", "all"], capture_output=True, text=True, timeout=240)

    assert proc.returncode == 0, proc.stderr[-2000:]
    rejected = [json.loads(x) for x in (out / "rejected_lines.ndjson").read_text().splitlines()]
    assert [r["line"] for r in rejected] == [101, 501]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ledger balanced"] == "yes"
    emitted = [json.loads(x) for x in (out / "emitted.ndjson").read_text().splitlines()]
    assert {"loan.disbursed", "loan.repaid", "loan.delinquent"} <= {e["type"] for e in emitted}
    fed = [json.loads(x) if i not in (100, 500) else None for i, x in enumerate(lines)]
    violations = contract.check(fed, emitted, skip={100, 500})
    assert not violations, "\n".join(map(str, violations[:20]))
