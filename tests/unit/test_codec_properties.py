"""Codec robustness: encode/decode round trips, and validate reports (never raises) for any JSON value."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import (
    EVENT_TYPES,
    EventInvalid,
    FieldError,
    check,
    decode,
    deterministic_id,
    encode,
    new_event,
    validate,
)

pytestmark = pytest.mark.unit

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)
KEYS = st.sampled_from(["specversion", "id", "source", "type", "time", "subject", "data", "dataschema",
                        "amount", "currency", "order_id", "gross", "net", "orders"])


def _order_placed(**data: Any) -> dict[str, Any]:
    body = {"order_id": "o-1", "buyer_id": "b-1", "amount": {"amount": 125000, "currency": "BRL"}, **data}
    return new_event("order.placed", "m-1", body, "2024-05-14T13:05:27Z", "https://shop.example/events", id="e-1")


@st.composite
def event_like(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly-plausible envelopes with arbitrary values spliced in, so every rule gets exercised."""
    event = _order_placed()
    event["type"] = draw(st.sampled_from(EVENT_TYPES) | st.text(max_size=20))
    targets = [event, event["data"], event["data"]["amount"]]  # kept even if a key is overwritten
    for _ in range(draw(st.integers(0, 4))):
        draw(st.sampled_from(targets))[draw(KEYS)] = draw(JSON)
    return event


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON)
def test_encode_then_decode_returns_the_same_value(value: Any) -> None:
    assert decode(encode({"v": value})) == {"v": value}


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_validate_never_raises_for_any_json_value(value: Any) -> None:
    errors = validate(value)
    assert isinstance(errors, list)
    assert errors, "an arbitrary value is never a valid event"
    assert all(isinstance(e, FieldError) and e.message for e in errors)


@settings(max_examples=400, deadline=None)
@given(event_like())
def test_validate_never_raises_for_mangled_events(event: dict[str, Any]) -> None:
    errors = validate(event)
    assert all(e.pointer == "" or e.pointer.startswith("/") for e in errors)
    assert all(len(e.message) <= 300 for e in errors)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=10**15), st.text(max_size=50))
def test_valid_order_round_trips_and_stays_valid(amount: int, reason: str) -> None:
    event = _order_placed(note=reason)
    event["data"]["amount"]["amount"] = amount
    assert validate(decode(encode(event))) == []


def test_huge_integers_are_reported_not_raised() -> None:
    event = _order_placed()
    event["data"]["amount"]["amount"] = 10**400
    assert [e.pointer for e in validate(event)] == ["/data/amount/amount"]


def test_deeply_nested_data_is_reported_not_raised() -> None:
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    event = _order_placed()
    event["data"]["extra"] = deep
    assert validate(event) == []  # unknown marketplace fields are not walked
    event["data"] = deep
    assert validate(event)


def test_unicode_in_free_text_is_fine_but_not_in_ids() -> None:
    ok = _order_placed(note="café ☕ 注文")
    assert validate(ok) == []
    bad = _order_placed(order_id="注文-1")
    assert [e.pointer for e in validate(bad)] == ["/data/order_id"]


def test_lone_surrogate_is_encoded_as_an_escape_and_round_trips() -> None:
    event = _order_placed(note="\ud800")
    raw = encode(event)
    raw.decode("utf-8")  # valid UTF-8
    assert decode(raw) == event


def test_decode_rejects_malformed_json_and_nan_with_a_root_pointer() -> None:
    for raw in (b'{"a": ', b'{"a": NaN}', b"\xff\xfe", "[" * 100_000):
        with pytest.raises(EventInvalid) as info:
            decode(raw)
        assert info.value.errors[0].pointer == ""


def test_encode_refuses_nan() -> None:
    with pytest.raises(ValueError):
        encode({"pd": float("nan")})


def test_non_object_event_is_one_root_error() -> None:
    assert validate([1]) == [FieldError("", "event must be a JSON object, got array")]


def test_check_returns_the_event_or_raises_with_every_error() -> None:
    event = _order_placed()
    assert check(event) is event
    event["data"]["amount"] = {"amount": -1, "currency": "XYZ"}
    del event["subject"]
    with pytest.raises(EventInvalid) as info:
        check(event)
    assert {e.pointer for e in info.value.errors} == {"", "/data/amount/amount", "/data/amount/currency"}
    assert json.dumps([e.to_json() for e in info.value.errors])


def test_deterministic_id_is_stable_and_sensitive_to_every_part() -> None:
    assert deterministic_id("offer", "m-1", "e-9") == deterministic_id("offer", "m-1", "e-9")
    assert deterministic_id("offer", "m-1", "e-9") != deterministic_id("offer", "m-1", "e-8")
    assert validate(_order_placed() | {"id": deterministic_id("x")}) == []


def test_offset_times_are_accepted_and_new_event_formats_datetimes_in_utc() -> None:
    from datetime import datetime, timedelta, timezone

    when = datetime(2024, 5, 14, 10, 0, tzinfo=timezone(timedelta(hours=-3)))
    event = new_event("order.delivered", "m-1", {"order_id": "o-1"}, when, "urn:x", id="e-2")
    assert event["time"] == "2024-05-14T13:00:00Z"
    assert validate(event) == []


def test_python_objects_that_are_not_json_are_reported_not_raised() -> None:
    from datetime import date

    event = new_event("merchant.updated", "m-1", {"status": {"since": date(2024, 1, 1)}}, "2024-01-01T00:00:00Z",
                      "urn:x", id="e-3")
    assert [e.pointer for e in validate(event)] == ["/data/status"]


def test_extension_attributes_are_allowed_and_only_unknown_shapes_are_named() -> None:
    event = _order_placed()
    event["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert validate(event) == []
    event["Not_An_Attribute"] = 1
    assert validate(event) == [FieldError("", "unexpected properties: 'Not_An_Attribute'")]


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)


@given(_json_values, st.booleans())
def test_decode_gives_the_stdlib_parsers_values_for_any_document_big_integers_included(value: object,
                                                                                         as_text: bool) -> None:
    import json

    text = json.dumps(value, ensure_ascii=False)
    raw: str | bytes = text if as_text else text.encode("utf-8", "surrogatepass")
    expected = json.loads(raw)
    got = decode(raw)
    assert repr(got) == repr(expected)  # repr: an int read as a float (1e+30 for 10**30) must fail here
