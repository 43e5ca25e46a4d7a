"""The embedded engine runs every service's real core in one process (SQLite, in-process bus)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from floatbridge.embedded.engine import EmbeddedEngine, EngineOptions
from floatbridge.embedded.olist import DEFAULT_DIR, OlistOptions, olist_events
from floatbridge.embedded.runner import replay_file, summary
from schemas.codec import validate
from tests.scenario import healthy_merchant, settlement

pytestmark = pytest.mark.unit

END = datetime(2025, 3, 1, tzinfo=UTC)


def _write_ndjson(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_replay_reports_invalid_lines_with_their_numbers_and_processes_the_rest(tmp_path: Path) -> None:
    events = healthy_merchant("m-replay", END, days=30).events
    lines = [json.dumps(e) for e in events]
    float_money = dict(events[1], id="bad-float", data={**events[1]["data"], "amount": {"amount": 12.5,
                                                                                        "currency": "BRL"}})
    lines.insert(5, "{not json")
    lines.insert(9, json.dumps(float_money))
    src = tmp_path / "events.ndjson"
    _write_ndjson(src, lines)

    result = replay_file(src, tmp_path / "out", accept="none", progress=False)

    bad = {line: errs for line, _, errs in result.engine.line_errors}
    assert set(bad) == {6, 10}
    assert any("/data/amount" in e["pointer"] for e in bad[10])
    assert result.events == len(lines)
    emitted = [json.loads(x) for x in (tmp_path / "out" / "emitted.ndjson").read_text().splitlines()]
    assert any(e["type"] == "credit_limit.updated" for e in emitted)
    assert all(not validate({k: v for k, v in e.items() if k != "topic"}) for e in emitted)
    assert result.engine.tally.accepted == 0, "--accept none: nobody borrows"
    from services.disbursement.adapters.orm import processed_events

    with result.engine.disbursement.engine.connect() as conn:
        handled = {r.event_type for r in conn.execute(processed_events.select()).all()}
    assert "credit_limit.updated" in handled and "merchant.onboarded" in handled
    assert "settlement.paid" not in handled, "payouts of merchants who never borrowed are not disbursement's work"


@pytest.mark.parametrize("over_http", [False, True], ids=["service", "http"])
def test_embedded_engine_lends_against_receivables_and_collects_from_the_next_payout(
        tmp_path: Path, over_http: bool) -> None:
    histories = [healthy_merchant(f"m{i}", END, days=45, seed=i) for i in range(3)]
    engine = EmbeddedEngine(EngineOptions(db_path=tmp_path / "d.sqlite", accept_over_http=over_http))
    assert (engine.api is not None) == over_http
    events = sorted((e for h in histories for e in h.events), key=lambda e: e["time"])
    engine.feed(list(enumerate(events, 1)))
    engine._advance(END + timedelta(hours=3))
    tally = engine.tally
    assert tally.accepted >= 1, dict(tally.refused_accepts)
    assert engine.fleet.verified > 0 and engine.fleet.refused == 0

    later = END + timedelta(days=4)
    # The marketplace withholds what collections.v1 asked for from each merchant's next payout.
    payouts = [(i, settlement(h.merchant_id, later, h.open_orders, f"{h.merchant_id}-final"))
               for i, h in enumerate(histories)]
    engine.feed(payouts)
    engine._advance(later + timedelta(hours=3))
    engine.finish()
    assert tally.repaid >= 1
    assert tally.repaid_amount > 0
    assert engine.ledger_balanced()
    rows = dict(summary(type("R", (), {"engine": engine, "seconds": 1.0, "events": len(events),
                                       "events_per_second": 1.0, "truth": None, "title": "", "notes": []})()))
    assert rows["ledger balanced"] == "yes"


def _olist_available() -> bool:
    if (DEFAULT_DIR / "olist_orders_dataset.csv.gz").exists():
        return True
    if os.environ.get("CI"):
        pytest.fail(f"Olist data missing at {DEFAULT_DIR} under CI")
    return False


def test_olist_slice_becomes_valid_time_ordered_events_with_weekly_payouts() -> None:
    if not _olist_available():
        pytest.skip(f"Olist data not found at {DEFAULT_DIR}")
    events = olist_events(DEFAULT_DIR, OlistOptions(limit_orders=800))
    assert events, "a slice of real orders gives events"
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)
    assert not [e["id"] for e in events if validate(e)]
    payouts = [e for e in events if e["type"] == "settlement.paid"]
    assert payouts and all(datetime.fromisoformat(e["time"].replace("Z", "+00:00")).weekday() == 2 for e in payouts)
    onboarded = {e["subject"] for e in events if e["type"] == "merchant.onboarded"}
    assert {e["subject"] for e in events} == onboarded, "every seller is onboarded before it sells"


def test_two_replays_of_one_file_pseudonymise_buyers_alike_and_emit_the_same_bytes(tmp_path: Path) -> None:
    # The underwriter keeps short hashes of the keyed buyer hashes: a key drawn per run would let two runs of
    # one file disagree wherever a hash collides under one key and not the other.
    events = sorted((e for i in range(2) for e in healthy_merchant(f"m-det{i}", END, days=30, seed=i).events),
                    key=lambda e: e["time"])
    src = tmp_path / "events.ndjson"
    _write_ndjson(src, [json.dumps(e) for e in events])
    first = replay_file(src, tmp_path / "a", accept="all", progress=False)
    second = replay_file(src, tmp_path / "b", accept="all", progress=False)
    assert first.engine.ingest.settings.buyer_hash_key == second.engine.ingest.settings.buyer_hash_key
    a, b = (tmp_path / "a" / "emitted.ndjson").read_bytes(), (tmp_path / "b" / "emitted.ndjson").read_bytes()
    assert a and a == b


def test_a_fed_batch_is_cut_at_each_hourly_tick_so_every_tick_sees_exactly_the_events_before_it(
        tmp_path: Path) -> None:
    events = sorted((e for i in range(2) for e in healthy_merchant(f"m-tick{i}", END, days=20, seed=i).events),
                    key=lambda e: e["time"])
    engine = EmbeddedEngine(EngineOptions(db_path=tmp_path / "d.sqlite", accept="none"))
    log: list[tuple[str, Any]] = []
    tick, submit = engine.tick, engine.ingest.submit

    def logged_tick() -> None:
        log.append(("tick", engine.now))
        tick()

    def logged_submit(raws: list[Any], **kw: Any) -> Any:
        log.append(("submit", [datetime.fromisoformat(r["time"].replace("Z", "+00:00")) for r in raws]))
        return submit(raws, **kw)

    engine.tick, engine.ingest.submit = logged_tick, logged_submit  # type: ignore[method-assign,assignment]
    engine.feed(list(enumerate(events, 1)))  # one batch spanning many hours of event time

    ticks = [at for kind, at in log if kind == "tick"]
    assert len(ticks) > 24, "the batch spans days of hourly ticks"
    submitted = [t for kind, times in log if kind == "submit" for t in times]
    assert len(submitted) == len(events), "every event submitted once"
    last_tick = None
    for kind, value in log:
        if kind == "tick":
            last_tick = value
            continue
        later = [at for at in ticks if last_tick is None or at > last_tick]
        next_tick = later[0] if later else None
        assert last_tick is None or min(value) >= last_tick, "no event is submitted after a later tick ran"
        assert next_tick is None or max(value) < next_tick, "a tick runs only after the events before it"
