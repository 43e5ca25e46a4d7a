"""Normalisation and the exactly-once intake protocol, on in-memory adapters."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from schemas.codec import validate
from services.ingest.domain import ClaimRequest, Malformed, NormalisedEvent, Reason, Status, normalise
from tests.unit.ingest_helpers import NOW, placed, runtime, settlement

pytestmark = pytest.mark.unit


def _one(rt: Any, event: Any) -> Any:
    [res] = rt.service.submit([event], NOW)
    return res


def _pointers(res: Any) -> list[str]:
    return [e.pointer for e in res.errors]


def test_valid_order_is_accepted_and_produced_keyed_by_merchant_with_id_header() -> None:
    rt = runtime()
    res = _one(rt, placed("evt-1"))
    assert res.status is Status.ACCEPTED and res.event_id == "evt-1"
    [rec] = rt.sink.events()
    assert rec.key == "m-1"
    assert dict(rec.headers)["ce_id"] == b"evt-1"
    produced = json.loads(rec.payload)
    assert produced["data"]["amount"] == {"amount": 12345, "currency": "BRL"}
    assert validate(produced) == []


def test_buyer_id_is_replaced_by_keyed_hash_and_never_leaves_ingest() -> None:
    rt = runtime()
    _one(rt, placed("evt-1", buyer="maria@example.com"))
    bad = placed("evt-2", buyer="maria@example.com", amount={"amount": 1.5, "currency": "BRL"})
    assert _one(rt, bad).status is Status.REJECTED
    for rec in rt.sink.records:
        assert b"maria@example.com" not in rec.payload
    produced = json.loads(rt.sink.events()[0].payload)
    assert produced["data"]["buyer_id"].startswith("bh_") and len(produced["data"]["buyer_id"]) == 67
    other_key = runtime(buyer_hash_key="another-secret")
    _one(other_key, placed("evt-1", buyer="maria@example.com"))
    assert json.loads(other_key.sink.events()[0].payload)["data"]["buyer_id"] != produced["data"]["buyer_id"]


def test_unterminated_ndjson_line_with_buyer_id_is_redacted_in_dead_letter() -> None:
    rt = runtime()
    res = _one(rt, Malformed('{"id": "x", "data": {"buyer_id": "maria@example.com", ', "unexpected end"))
    assert res.status is Status.REJECTED and res.reason is Reason.MALFORMED
    [rec] = rt.sink.rejected()
    assert b"maria@example.com" not in rec.payload


def test_decimal_string_value_is_converted_to_minor_units_per_currency_exponent() -> None:
    rt = runtime()
    cases = [("12.34", "BRL", 1234), ("1500", "JPY", 1500), ("1.234", "KWD", 1234), ("0.5", "BRL", 50)]
    for i, (value, cur, minor) in enumerate(cases):
        res = _one(rt, placed(f"e{i}", amount={"value": value, "currency": cur}))
        assert res.status is Status.ACCEPTED, res
        assert json.loads(rt.sink.events()[-1].payload)["data"]["amount"] == {"amount": minor, "currency": cur}


@pytest.mark.parametrize(("amount", "fragment"), [
    ({"amount": 12.5, "currency": "BRL"}, "fraction or exponent"),
    ({"amount": 100.0, "currency": "BRL"}, "fraction or exponent"),
    ({"amount": -1, "currency": "BRL"}, "negative"),
    ({"amount": 10**15 + 1, "currency": "BRL"}, "exceeds the maximum"),
    ({"amount": 10**30, "currency": "BRL"}, "exceeds the maximum"),
    ({"amount": 1e30, "currency": "BRL"}, "exceeds the maximum"),
    ({"amount": "12.34", "currency": "BRL"}, "integer number of minor units"),
    ({"amount": True, "currency": "BRL"}, "integer number of minor units"),
    ({"value": "12.345", "currency": "BRL"}, "more decimals"),
    ({"value": "1.5", "currency": "JPY"}, "more decimals"),
    ({"value": "1.2345", "currency": "KWD"}, "more decimals"),
    ({"value": "1e3", "currency": "BRL"}, "decimal string"),
    ({"value": 12.34, "currency": "BRL"}, "decimal string"),
    ({"value": "-1.00", "currency": "BRL"}, "negative"),
    ({"value": "1", "amount": 100, "currency": "BRL"}, "not both"),
])
def test_bad_money_is_rejected_with_pointer_and_reason_money(amount: dict[str, Any], fragment: str) -> None:
    res = _one(runtime(), placed("evt-1", amount=amount))
    assert res.status is Status.REJECTED and res.reason is Reason.MONEY
    assert any(e.pointer.startswith("/data/amount") and fragment in e.message for e in res.errors), res.errors


def test_unknown_currency_is_rejected_at_currency_pointer() -> None:
    res = _one(runtime(), placed("evt-1", amount={"amount": 1, "currency": "XXX"}))
    assert res.status is Status.REJECTED and "/data/amount/currency" in _pointers(res)


def test_mixed_currencies_in_settlement_are_rejected() -> None:
    event = settlement()
    event["data"]["fees"]["currency"] = "USD"
    res = _one(runtime(), event)
    assert res.status is Status.REJECTED
    assert any("mixed currencies" in e.message for e in res.errors)


def test_every_error_is_listed_not_just_the_first() -> None:
    event = placed("evt-1", amount={"amount": 1.5, "currency": "BRL"}, time="2024-05-01T11:00:00")
    del event["source"]
    res = _one(runtime(), event)
    assert {"/data/amount/amount", "/time", ""} <= set(_pointers(res)), res.errors


def test_timestamps_with_offset_become_utc() -> None:
    rt = runtime()
    _one(rt, placed("evt-1", time="2024-05-01T08:00:00-03:00"))
    assert json.loads(rt.sink.events()[0].payload)["time"] == "2024-05-01T11:00:00Z"


def test_naive_timestamp_rejected_unless_marketplace_zone_configured() -> None:
    res = _one(runtime(), placed("evt-1", time="2024-05-01T08:00:00"))
    assert res.reason is Reason.TIME and "NAIVE_TIMEZONE" in res.errors[0].message
    rt = runtime(naive_timezone="America/Sao_Paulo")
    assert _one(rt, placed("evt-1", time="2024-05-01T08:00:00")).status is Status.ACCEPTED
    assert json.loads(rt.sink.events()[0].payload)["time"] == "2024-05-01T11:00:00Z"


def test_time_too_far_in_future_or_too_old_is_rejected() -> None:
    rt = runtime()
    future = (NOW + timedelta(seconds=301)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "future" in _one(rt, placed("evt-1", time=future)).errors[0].message
    within = (NOW + timedelta(seconds=299)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert _one(rt, placed("evt-2", time=within)).status is Status.ACCEPTED
    assert "before 2000" in _one(rt, placed("evt-3", time="1999-12-31T23:59:59Z")).errors[0].message


def test_future_check_can_be_disabled_for_replays() -> None:
    rt = runtime(max_future_skew_seconds=-1)
    assert _one(rt, placed("evt-1", time="2030-01-01T00:00:00Z")).status is Status.ACCEPTED


def test_same_id_in_one_batch_is_produced_once() -> None:
    rt = runtime()
    results = rt.service.submit([placed("a"), placed("a"), placed("b")], NOW)
    assert [r.status for r in results] == [Status.ACCEPTED, Status.DUPLICATE, Status.ACCEPTED]
    assert [r.event_id for r in rt.sink.events()] == ["a", "b"]


def test_same_id_in_later_batch_is_duplicate_and_not_produced_again() -> None:
    rt = runtime()
    rt.service.submit([placed("a")], NOW)
    [res] = rt.service.submit([placed("a", time="2024-05-01T08:00:00-03:00")], NOW)  # same instant
    assert res.status is Status.DUPLICATE
    assert len(rt.sink.events()) == 1


def test_same_id_with_different_content_is_a_conflict_and_never_overwrites() -> None:
    rt = runtime()
    rt.service.submit([placed("a")], NOW)
    changed = placed("a", amount={"amount": 999, "currency": "BRL"})
    results = rt.service.submit([changed, placed("b"), placed("b", amount={"amount": 1, "currency": "BRL"})], NOW)
    assert [(r.status, r.reason) for r in results] == [
        (Status.REJECTED, Reason.CONFLICT), (Status.ACCEPTED, None), (Status.REJECTED, Reason.CONFLICT)]
    assert [json.loads(r.payload)["data"]["amount"]["amount"] for r in rt.sink.events()] == [12345, 12345]
    assert len(rt.sink.rejected()) == 2


def test_one_bad_event_does_not_fail_the_rest_of_the_batch() -> None:
    rt = runtime()
    results = rt.service.submit([placed("a"), {"nope": 1}, "text", None, placed("b")], NOW)
    assert [r.status for r in results] == [Status.ACCEPTED, Status.REJECTED, Status.REJECTED,
                                           Status.REJECTED, Status.ACCEPTED]
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    assert len(rt.sink.rejected()) == 3


def test_rejected_record_is_valid_ingest_rejected_event_with_errors_and_source() -> None:
    rt = runtime()
    _one(rt, placed("evt-1", amount={"amount": 1.5, "currency": "BRL"}))
    [rec] = rt.sink.rejected()
    event = json.loads(rec.payload)
    assert validate(event) == []
    assert event["type"] == "ingest.rejected" and rec.key == "m-1"
    assert event["data"]["source"] == "http" and event["data"]["received_at"] == "2024-05-01T12:00:00Z"
    assert event["data"]["errors"][0]["pointer"] == "/data/amount/amount"
    assert json.loads(event["data"]["raw"])["id"] == "evt-1" and event["data"]["raw_truncated"] is False


def test_oversize_event_is_rejected_and_raw_payload_is_truncated_with_flag() -> None:
    rt = runtime(max_event_bytes=100_000, raw_cap_bytes=1024)
    big = placed("evt-1")
    big["data"]["note"] = "é" * 60_000
    res = _one(rt, big)
    assert res.reason is Reason.SIZE and res.errors[0].pointer == "" and "limit" in res.errors[0].message
    event = json.loads(rt.sink.rejected()[0].payload)
    assert event["data"]["raw_truncated"] is True and len(event["data"]["raw"].encode()) <= 1024


@pytest.mark.parametrize("bad_id", ["evt\u0000one", "évènement", "evt 1", "evt\n1", "", "x" * 129])
def test_unicode_and_control_characters_in_ids_are_rejected_at_id_pointer(bad_id: str) -> None:
    rt = runtime()
    res = _one(rt, placed(bad_id))
    assert res.status is Status.REJECTED and "/id" in _pointers(res)
    assert json.loads(rt.sink.rejected()[0].payload)["subject"] == "m-1"


def test_broker_down_answers_retry_and_releases_claims_so_a_retry_succeeds() -> None:
    rt = runtime()
    rt.sink.fail = True
    results = rt.service.submit([placed("a"), {"bad": True}], NOW)
    assert [r.status for r in results] == [Status.RETRY, Status.RETRY]
    assert rt.dedupe.state("a") is None
    rt.sink.fail = False
    results = rt.service.submit([placed("a"), {"bad": True}], NOW)
    assert [r.status for r in results] == [Status.ACCEPTED, Status.REJECTED]
    assert rt.dedupe.state("a") == "done"


def test_pending_claim_within_lease_answers_retry_and_after_lease_is_reproduced() -> None:
    rt = runtime()
    event = placed("a")
    norm = normalise(event, rt.service.ctx, NOW)
    assert isinstance(norm, NormalisedEvent)
    rt.dedupe.claim([ClaimRequest("a", norm.content_hash)], "crashed-replica", NOW)
    [res] = rt.service.submit([event], NOW + timedelta(seconds=5))
    assert res.status is Status.RETRY and "another request" in (res.detail or "")
    [res] = rt.service.submit([event], NOW + timedelta(seconds=31))
    assert res.status is Status.ACCEPTED and len(rt.sink.events()) == 1


def test_dedupe_store_down_answers_retry_for_whole_batch() -> None:
    from services.ingest.domain.ports import DedupeUnavailable

    rt = runtime()

    def down(*_: Any) -> Any:
        raise DedupeUnavailable("connection refused")

    rt.dedupe.claim = down  # type: ignore[method-assign]
    results = rt.service.submit([placed("a"), placed("b")], NOW)
    assert {r.status for r in results} == {Status.RETRY} and rt.sink.records == []


def test_value_objects_built_by_the_quick_init_stay_frozen_and_keep_their_defaults() -> None:
    import dataclasses

    from services.ingest.domain.model import EventResult, Outgoing

    res = EventResult(3, Status.ACCEPTED, "a", event_type="order.placed")
    assert (res.reason, res.errors, res.detail) == (None, (), None)
    assert res == EventResult(3, Status.ACCEPTED, "a", "order.placed") and hash(res) == hash(EventResult(3, Status.ACCEPTED, "a", "order.placed"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.index = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        EventResult(3)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ClaimRequest("a", "h", extra=1)  # type: ignore[call-arg]
    assert Outgoing("event", "m-1", "a", b"{}").headers == ()
