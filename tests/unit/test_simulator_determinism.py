"""Marketplace simulator: determinism, valid canonical events, time order, and business-driven collapse."""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from datetime import UTC, datetime

import pytest

from floatbridge.cli import main
from floatbridge.simulator import SimConfig, SimConfigError, Simulation, simulate, truth
from floatbridge.simulator.output import read_ndjson, write_ndjson_gz
from schemas.codec import validate

pytestmark = pytest.mark.unit

SMALL = SimConfig(merchants=25, days=60, seed=3)


@pytest.fixture(scope="module")
def events() -> list[dict]:
    return list(simulate(SMALL))


def test_same_seed_writes_byte_identical_files_and_another_seed_differs(tmp_path):
    a, b, c = tmp_path / "a.ndjson.gz", tmp_path / "b.ndjson.gz", tmp_path / "c.ndjson.gz"
    write_ndjson_gz(simulate(SMALL), str(a))
    write_ndjson_gz(simulate(SMALL), str(b))
    write_ndjson_gz(simulate(SimConfig(merchants=25, days=60, seed=4)), str(c))
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert list(read_ndjson(str(a)))[:50] == list(simulate(SMALL))[:50]


def test_every_sampled_event_is_a_valid_canonical_cloudevent(events):
    sample = events[::5] + [e for e in events if e["type"] in ("settlement.paid", "order.chargeback", "merchant.updated")]
    assert {e["type"] for e in sample} >= {"order.placed", "order.paid", "order.shipped", "order.delivered",
                                          "settlement.paid", "order.refunded", "order.cancelled"}
    bad = [(e["type"], validate(e)) for e in sample if validate(e)]
    assert bad == []
    assert len({e["id"] for e in events}) == len(events)


def test_events_are_in_event_time_order_and_money_is_integer_centavos(events):
    times = [e["time"] for e in events]
    assert times == sorted(times)
    for e in events:
        if e["type"] == "settlement.paid":
            d = e["data"]
            assert d["withheld"]["amount"] == 0
            assert d["net"]["amount"] == d["gross"]["amount"] - d["fees"]["amount"]
            assert d["gross"]["amount"] == sum(o["amount"]["amount"] for o in d["orders"])
            assert d["gross"]["currency"] == "BRL"


def test_order_lifecycle_runs_placed_paid_shipped_delivered_then_settles(events):
    seen: dict[str, list[str]] = defaultdict(list)
    for e in events:
        if e["type"].startswith("order."):
            seen[e["data"]["order_id"]].append(e["type"])
        elif e["type"] == "settlement.paid":
            for o in e["data"]["orders"]:
                seen[o["order_id"]].append("settled")
    settled = [steps for steps in seen.values() if "settled" in steps]
    assert settled
    for steps in settled:
        core = [s for s in steps if s in ("order.placed", "order.paid", "order.shipped", "order.delivered", "settled")]
        assert core == ["order.placed", "order.paid", "order.shipped", "order.delivered", "settled"]


def test_a_collapsed_merchant_places_no_orders_after_its_collapse_day():
    cfg = SimConfig(merchants=30, days=120, seed=11, mix={"declining": 1.0, "bust_out": 1.0})
    sim = Simulation(cfg)
    events = list(sim.events())
    t = sim.truth()
    collapsed = {m: r["collapse_day"] for m, r in t["merchants"].items() if r["collapse_day"] is not None}
    assert collapsed and all(t["merchants"][m]["would_default"] for m in collapsed)
    start = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    for e in events:
        if e["type"] == "order.placed" and e["subject"] in collapsed:
            day = (datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp() - start) // 86_400
            assert day < collapsed[e["subject"]]


def test_truth_is_separate_and_describes_every_merchant():
    t = truth(SMALL)
    assert len(t["merchants"]) == SMALL.merchants
    rec = next(iter(t["merchants"].values()))
    assert {"archetype", "health_weekly", "would_default", "collapse_day"} <= set(rec)
    assert len(rec["health_weekly"]) == (SMALL.days + 6) // 7


def test_bad_settings_are_refused_with_a_specific_message():
    with pytest.raises(SimConfigError, match="merchants"):
        Simulation(SimConfig(merchants=0))
    with pytest.raises(SimConfigError, match="unknown archetypes"):
        Simulation(SimConfig(mix={"ponzi": 1.0}))


def test_simulate_command_writes_events_and_truth(tmp_path, capsys):
    out, tr = tmp_path / "e.ndjson.gz", tmp_path / "t.json"
    assert main(["simulate", "--merchants", "5", "--days", "20", "--seed", "1", "--out", str(out), "--truth", str(tr)]) == 0
    with gzip.open(out, "rb") as fh:
        first = json.loads(fh.readline())
    assert first["specversion"] == "1.0"
    assert len(json.loads(tr.read_text())["merchants"]) == 5
    assert "events/min" in capsys.readouterr().out
    assert main(["simulate", "--merchants", "5"]) == 2  # no destination
