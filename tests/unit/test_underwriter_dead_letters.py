"""Records the worker cannot apply become dead letters on ingest.rejected.v1; the batch goes on without them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from schemas import codec, dead_letter
from services.underwriter.adapters.faust_app import process_batch
from services.underwriter.adapters.metrics import UnderwriterMetrics
from services.underwriter.bootstrap import bootstrap
from services.underwriter.settings import load
from services.underwriter.synthetic import Profile, history

TOPIC = "marketplace.events.v1"
RAW_BUYER = "maria.silva@example.com"


@dataclass
class _Message:
    topic: str
    partition: int
    offset: int


@dataclass
class _Record:
    message: _Message
    value: bytes


def _records(values: list[bytes], start: int = 0) -> list[_Record]:
    return [_Record(_Message(TOPIC, 0, start + i), v) for i, v in enumerate(values)]


def _poison() -> list[bytes]:
    float_money = codec.new_event("order.placed", "m-dl", {
        "order_id": "o-float", "buyer_id": RAW_BUYER, "amount": {"amount": 12.5, "currency": "BRL"}},
        "2025-01-02T00:00:00Z", "marketplace", id="ev-float")
    forged = codec.new_event("loan.repaid", "m-dl", {"loan_id": "l-1", "repaid_at": "2025-01-02T00:00:00Z"},
                             "2025-01-02T00:00:00Z", "marketplace", id="ev-forged")
    return [b"[1, 2, 3]", b"{not json", codec.encode(forged), codec.encode(float_money), b"null"]


def _underwriter() -> Any:
    return bootstrap(settings=load(debounce_seconds=0), metrics=UnderwriterMetrics(CollectorRegistry()))


def test_poison_records_between_good_ones_become_dead_letters_and_the_good_ones_are_still_decided() -> None:
    uw = _underwriter()
    good = [codec.encode(e) for e in history("m-dl", datetime(2025, 1, 1, tzinfo=UTC), 3, Profile(orders_per_day=3))]
    values = good[:5] + _poison() + good[5:]
    out = process_batch(uw, None, _records(values), {"event": 0.0, "wall": 0.0})

    dead = [e for e in out if e["type"] == dead_letter.REJECTED_TYPE]
    decisions = [e for e in out if e["type"] != dead_letter.REJECTED_TYPE]
    assert len(dead) == 5
    assert decisions and all(e["subject"] == "m-dl" for e in decisions)
    for ev in dead:
        assert codec.validate(ev) == [], ev
        assert RAW_BUYER not in codec.encode(ev).decode()
        assert ev["data"]["source"] == f"kafka:{TOPIC}" and ev["data"]["consumer"] == "underwriter"
    by_offset = {ev["data"]["offset"]: ev for ev in dead}
    assert sorted(by_offset) == [5, 6, 7, 8, 9]
    assert "not a CloudEvent" in by_offset[5]["data"]["errors"][0]["message"]
    assert "malformed JSON" in by_offset[6]["data"]["errors"][0]["message"]
    assert "does not belong on" in by_offset[7]["data"]["errors"][0]["message"]
    assert by_offset[8]["data"]["errors"] == [{"pointer": "/data/amount/amount",
                                               "message": "must be of type integer, got number"}]
    assert by_offset[8]["data"]["event_id"] == "ev-float" and by_offset[8]["subject"] == "m-dl"
    assert uw.metrics.registry.get_sample_value(
        "floatbridge_underwriter_records_rejected_total", {"stage": "decode"}) == 3
    assert uw.metrics.registry.get_sample_value(
        "floatbridge_underwriter_records_rejected_total", {"stage": "contract"}) == 1


def test_a_poison_record_read_again_after_a_restart_gives_the_same_dead_letter_id() -> None:
    first = process_batch(_underwriter(), None, _records(_poison(), 40), {"event": 0.0, "wall": 0.0})
    again = process_batch(_underwriter(), None, _records(_poison(), 40), {"event": 0.0, "wall": 0.0})
    assert [e["id"] for e in first] == [e["id"] for e in again]
    assert len({e["id"] for e in first}) == len(first) == 5


def test_an_event_dated_years_ahead_is_dead_lettered_before_it_can_roll_a_history_out() -> None:
    uw = _underwriter()
    past = history("m-far", datetime(2025, 1, 1, tzinfo=UTC), 20, Profile(orders_per_day=3))
    process_batch(uw, None, _records([codec.encode(e) for e in past]), {"event": 0.0, "wall": 0.0})
    before = uw.state("m-far").to_dict()
    far = codec.new_event("order.placed", "m-far", {"order_id": "o-far", "buyer_id": "b",
                          "amount": {"amount": 100, "currency": "BRL"}}, "2099-01-01T00:00:00Z", "mp", id="ev-far")
    clock = {"event": 0.0, "wall": 0.0}
    out = process_batch(uw, None, _records([codec.encode(far)], 500), clock)
    assert [e["type"] for e in out] == [dead_letter.REJECTED_TYPE]
    assert "ahead of the clock" in out[0]["data"]["errors"][0]["message"]
    assert uw.state("m-far").to_dict() == before and clock["event"] == 0.0


def test_a_refused_event_with_a_far_future_time_does_not_move_the_flush_clock() -> None:
    uw = _underwriter()
    onboard = history("m-clock", datetime(2025, 1, 1, tzinfo=UTC), 1, Profile(orders_per_day=1))[:1]
    future = codec.new_event("order.placed", "m-clock", {"order_id": "o", "buyer_id": "b",
                             "amount": {"amount": 1.5, "currency": "BRL"}}, "9999-01-01T00:00:00Z", "mp", id="ev-9999")
    clock = {"event": 0.0, "wall": 0.0}
    process_batch(uw, None, _records([codec.encode(onboard[0]), codec.encode(future)]), clock)
    assert clock["event"] == datetime.fromisoformat(onboard[0]["time"].replace("Z", "+00:00")).timestamp()


def test_buyer_members_are_blanked_in_a_kept_payload_that_is_not_json() -> None:
    text = dead_letter.redact(b'{"type": "order.placed", "data": {"buyer_id": "ana@x.com", "Buyer_Name": "Ana"')
    assert "ana@x.com" not in text and '"Ana"' not in text and dead_letter.REDACTED in text
