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
    from services.disbursement.adapters.orm import offers, processed_events

    with result.engine.disbursement.engine.connect() as conn:
        rows = conn.execute(processed_events.select()).all()
        offered = {o for r in conn.execute(offers.select()).all() for o in r.order_ids}
    handled = {r.event_type for r in rows}
    assert "credit_limit.updated" in handled and "merchant.onboarded" in handled
    # Payouts of merchants who never borrowed are not disbursement's work, except those paying an order of an
    # offer still open (acceptance refuses an offer whose orders were paid out since: receivables_changed).
    payouts = {e["id"]: e for e in events if e["type"] == "settlement.paid"}
    forwarded = [payouts[r.event_id] for r in rows if r.event_id in payouts]
    assert len(forwarded) < len(payouts)
    assert all(offered & {o["order_id"] for o in e["data"]["orders"]} for e in forwarded)


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


@pytest.mark.parametrize("change", ["settlement.paid", "order.refunded", "order.cancelled", "order.chargeback"])
def test_a_first_offer_whose_order_changed_before_acceptance_is_refused_in_the_embedded_engine(
        tmp_path: Path, change: str) -> None:
    import sqlalchemy as sa

    from schemas.codec import new_event
    from services.disbursement.adapters.orm import offers
    from tests.scenario import SOURCE

    history = healthy_merchant("m-first", END, days=45, seed=3)
    engine = EmbeddedEngine(EngineOptions(db_path=tmp_path / "d.sqlite", accept="none"))
    engine.feed(list(enumerate(history.events, 1)))
    engine._advance(END + timedelta(hours=2, minutes=30))
    with engine.disbursement.engine.connect() as conn:
        offer = conn.execute(sa.select(offers).where(offers.c.merchant_id == "m-first",
                                                     offers.c.state == "open")).one()
    assert "m-first" not in engine.borrowers, "a first loan: the merchant never tried to borrow"
    order_id = offer.order_ids[0]
    amount = {"amount": dict(history.open_orders)[order_id], "currency": "BRL"}
    at = engine.now + timedelta(minutes=1)
    data: dict[str, Any] = {"order_id": order_id}
    if change == "order.refunded":
        data.update(refund_id="r-1", amount=amount)
    elif change == "order.chargeback":
        data.update(chargeback_id="cb-1", amount=amount)
    event = settlement("m-first", at, [(order_id, amount["amount"])], "st-early") if change == "settlement.paid" \
        else new_event(change, "m-first", data, at, SOURCE, id=f"{change}-early")
    engine.feed([(1, event)])  # before the next hourly tick: the offer is still open, not yet accepted

    status, code = engine._accept(engine.fleet.merchants["m-first"], offer.offer_id, "accept-first")
    assert (status, code) == (409, "receivables_changed")
    assert engine.tally.accepted == 0


def test_replay_reader_parses_lines_as_ingest_does_duplicate_keys_bom_and_long_integers(tmp_path: Path) -> None:
    from floatbridge.embedded.engine import numbered
    from services.ingest.domain.model import Malformed

    lines = [
        '\ufeff{"id": "e1", "n": 1}',  # a byte order mark before the first line is ignored
        "",
        '{"id": "e2", "id": "e2-shadow"}',  # the same key twice: rejected, not the last one kept
        '{"id": "e3", "big": 123456789012345678901234567890}',  # 30 digits: kept exact
        '{"id": "e4", "huge": 1e400}',  # no 64-bit float holds it: rejected
        "{not json",
        '{"id": "e7"}',
    ]
    items = dict(numbered(lines, chunk=2))
    assert set(items) == {1, 3, 4, 5, 6, 7}  # blank lines skipped, numbers are file lines
    assert items[1] == {"id": "e1", "n": 1}
    assert items[4]["big"] == 123456789012345678901234567890 and isinstance(items[4]["big"], int)
    assert items[7] == {"id": "e7"}
    for n in (3, 5, 6):
        assert isinstance(items[n], Malformed) and items[n].error.startswith(f"line {n}: "), items[n]
    assert "duplicate key 'id'" in items[3].error and items[3].pointer == ""
    assert "out of range" in items[5].error
    # Bytes lines (a file read in binary) parse the same way.
    assert dict(numbered([line.encode() for line in lines])) == items


@pytest.mark.parametrize("name", ["events.ndjson", "events.ndjson.gz"])
def test_replay_reports_a_line_that_is_not_valid_utf8_by_its_number_and_skips_it(tmp_path: Path, name: str) -> None:
    import gzip

    events = healthy_merchant("m-utf8", END, days=30).events
    lines = [json.dumps(e, ensure_ascii=False).encode() for e in events]
    # An order whose buyer id holds a byte no UTF-8 text has: ingest rejects such a record; a replay that read
    # it with a replacement character would have accepted a buyer id nobody sent.
    placed = next(i for i, e in enumerate(events) if e["type"] == "order.placed")
    bad_order = dict(events[placed], id="bad-utf8", data={**events[placed]["data"], "buyer_id": "buyer-XX"})
    lines.insert(placed + 1, json.dumps(bad_order).encode().replace(b"buyer-XX", b"buyer-\xff\xfe"))
    raw = b"\n".join(lines) + b"\n"
    src = tmp_path / name
    src.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)

    result = replay_file(src, tmp_path / "out", accept="none", progress=False)

    bad = {line: errs for line, _, errs in result.engine.line_errors}
    assert set(bad) == {placed + 2}, bad
    assert any("UTF-8" in e["message"] for e in bad[placed + 2]), bad
    assert result.events == len(lines)
    emitted = [json.loads(x) for x in (tmp_path / "out" / "emitted.ndjson").read_text().splitlines()]
    assert any(e["type"] == "credit_limit.updated" and e["subject"] == "m-utf8" for e in emitted)
    assert not any("\ufffd" in json.dumps(e, ensure_ascii=False) for e in emitted)


def test_replay_rejects_a_line_with_a_duplicate_key_by_its_number_and_accepts_a_bom_first_line(
        tmp_path: Path) -> None:
    events = healthy_merchant("m-dup", END, days=30).events
    lines = [json.dumps(e) for e in events]
    lines[0] = "\ufeff" + lines[0]  # the onboarding, behind a byte order mark
    # An order whose amount names its "amount" key twice: the stdlib parser kept the last, silently.
    placed = next(i for i, e in enumerate(events) if e["type"] == "order.placed")
    dup = dict(events[placed], id="dup-keys")
    lines.insert(placed + 1, json.dumps(dup)[:-1] + ', "id": "dup-keys-2"}')
    src = tmp_path / "events.ndjson"
    _write_ndjson(src, lines)

    result = replay_file(src, tmp_path / "out", accept="none", progress=False)

    bad = {line: errs for line, _, errs in result.engine.line_errors}
    assert set(bad) == {placed + 2}, bad
    assert any("duplicate key 'id'" in e["message"] for e in bad[placed + 2]), bad
    emitted = [json.loads(x) for x in (tmp_path / "out" / "emitted.ndjson").read_text().splitlines()]
    assert any(e["type"] == "credit_limit.updated" and e["subject"] == "m-dup" for e in emitted)  # onboarded
