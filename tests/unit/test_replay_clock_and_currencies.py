"""Replays of files: a mistyped future date cannot move the replay clock; a mixed-currency run never adds
amounts in different currencies together."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from floatbridge.embedded.runner import replay_file, summary
from tests.scenario import healthy_merchant, settlement

pytestmark = pytest.mark.unit

END = datetime(2025, 3, 1, tzinfo=UTC)


def _write(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return path


def _history() -> list[dict[str, Any]]:
    h = healthy_merchant("m-clock", END, days=45)
    return [*h.events, settlement("m-clock", END + timedelta(days=3), h.open_orders, "m-clock-final")]


def test_one_event_dated_ten_years_ahead_is_rejected_and_changes_nothing_the_engine_emits(tmp_path: Path) -> None:
    events = _history()
    base = replay_file(_write(tmp_path / "base.ndjson", events), tmp_path / "base", progress=False)
    typo = json.loads(json.dumps(events[len(events) // 2]))
    typo["id"] = "m-clock-typo"
    typo["time"] = typo["time"].replace(typo["time"][:4], str(int(typo["time"][:4]) + 10), 1)
    at = len(events) // 2 + 1
    spoiled = [*events[:at], typo, *events[at:]]

    run = replay_file(_write(tmp_path / "typo.ndjson", spoiled), tmp_path / "typo", progress=False)

    assert [(line, eid) for line, eid, _ in run.engine.line_errors] == [(at + 1, "m-clock-typo")]
    assert any("future" in e["message"] for e in run.engine.line_errors[0][2])
    assert (tmp_path / "typo" / "emitted.ndjson").read_bytes() == (tmp_path / "base" / "emitted.ndjson").read_bytes()
    assert base.engine.tally.accepted > 0 and run.engine.tally.charged_off == 0


def test_as_of_pins_the_future_check_so_events_after_it_are_rejected(tmp_path: Path) -> None:
    events = _history()
    cut = END - timedelta(days=10)
    run = replay_file(_write(tmp_path / "e.ndjson", events), tmp_path / "out", progress=False, as_of=cut)

    late = {e["id"] for e in events if datetime.fromisoformat(e["time"]) > cut + timedelta(minutes=5)}
    assert late and {eid for _, eid, _ in run.engine.line_errors} == late
    assert run.engine.now <= cut + timedelta(minutes=5)


def test_a_mixed_currency_replay_reports_each_currency_on_its_own(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    for mid, cur, ticket in (("m-brl", "BRL", 12_000), ("m-jpy", "JPY", 9_000), ("m-kwd", "KWD", 40_000)):
        h = healthy_merchant(mid, END, days=45, ticket=ticket, currency=cur)
        events += [*h.events, settlement(mid, END + timedelta(days=3), h.open_orders, f"{mid}-final", currency=cur)]
    events.sort(key=lambda e: e["time"])

    run = replay_file(_write(tmp_path / "e.ndjson", events), tmp_path / "out", progress=False)

    emitted = [json.loads(x) for x in (tmp_path / "out" / "emitted.ndjson").read_text().splitlines()]
    lent: dict[str, int] = {}
    for e in emitted:
        if e["type"] == "loan.disbursed":
            p = e["data"]["principal"]
            lent[p["currency"]] = lent.get(p["currency"], 0) + p["amount"]
    assert set(lent) == {"BRL", "JPY", "KWD"}, "every merchant borrowed in its own currency"
    assert {c: t["disbursed"] for c, t in run.engine.tally.money.items()} == lent
    row = dict(summary(run))["disbursed principal"]
    assert f"{lent['JPY']:,} JPY" in row
    assert f"{lent['KWD'] // 1000:,}.{lent['KWD'] % 1000:03d} KWD" in row
    assert f"{lent['BRL'] // 100:,}.{lent['BRL'] % 100:02d} BRL" in row
