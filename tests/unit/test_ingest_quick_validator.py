"""The quick validator in front of schemas.codec.validate answers exactly as the codec: it may say "valid"
only for events the codec finds no error in, and every other event gets the codec's own errors."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import MARKETPLACE_TYPES, validate
from schemas.fastcheck import Unsupported, compile_data_check
from services.ingest.bootstrap import codec_validator

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"


def _codec(event: Any) -> list[tuple[str, ...]]:
    return [(e.pointer, e.message, e.kind) for e in validate(event)]


def _examples(kind: str) -> list[dict[str, Any]]:
    out = []
    for etype in MARKETPLACE_TYPES:
        for path in sorted((EXAMPLES / etype / kind).glob("*.json")):
            doc = json.loads(path.read_text())
            if isinstance(doc, dict):
                out.append(doc)
    return out


# Values that sit on the edges the schemas and the semantic rules draw.
EDGES: list[Any] = [
    None, True, False, 0, -1, 1, 1.0, 0.5, 10**15, 10**15 + 1, 2**63, -(10**15), float(10**15), "", " ", "a",
    "x" * 128, "x" * 129, "a b", "a\n", "é", "\u0000", "BRL", "brl", "XXX", "JPY", "KWD", "USD", "BR",
    "2024-05-01T11:00:00Z", "2024-02-30T11:00:00Z", "2024-05-01T11:00:00+01:00", "2024-05-01T11:00:00",
    "2024-05-01t11:00:00z", "0999-05-01T11:00:00Z", "2024-05-01T23:59:60Z", "2024-05-01T11:00:00.5Z",
    "２０２４-05-01T11:00:00Z", [], [1], {}, {"amount": 1, "currency": "BRL"}, {"amount": 1.0, "currency": "BRL"},
    {"amount": 1, "currency": "EUR"}, {"amount": 1, "currency": "QQQ"}, {"amount": -1, "currency": "BRL"},
    {"amount": 1, "currency": "BRL", "extra": 1}, {"value": "1.00", "currency": "BRL"}, {"amount": "1", "currency": "BRL"},
    "m-1", "merchant-1",
]
KEYS = ["order_id", "buyer_id", "amount", "currency", "reason", "refunded", "fee", "carrier", "shipped_at",
        "expected_delivery_at", "delivered_at", "cancelled_at", "merchant_id", "merchantId", "x" * 65, "", "extra",
        "time", "type", "id", "subject", "source", "specversion", "datacontenttype", "dataschema", "data"]


def _mutate(event: dict[str, Any], rnd: random.Random) -> dict[str, Any]:
    out = copy.deepcopy(event)
    for _ in range(rnd.randint(1, 3)):
        target = out if rnd.random() < 0.3 or not isinstance(out.get("data"), dict) else out["data"]
        if isinstance(target.get("amount"), dict) and rnd.random() < 0.3:
            target = target["amount"]
        key = rnd.choice(list(target) + KEYS)
        roll = rnd.random()
        if roll < 0.15 and key in target:
            del target[key]
        else:
            target[key] = copy.deepcopy(rnd.choice(EDGES))
    return out


def _assert_same(event: Any, quick: Any) -> None:
    assert list(quick(event)) == _codec(event), json.dumps(event, default=repr)[:500]


def test_every_schema_example_gets_the_codecs_answer_and_valid_ones_take_the_quick_path() -> None:
    quick = codec_validator()
    valid, invalid = _examples("valid"), _examples("invalid")
    assert valid and invalid
    for event in valid + invalid:
        _assert_same(event, quick)
    checks = quick.checks  # type: ignore[attr-defined]
    order_types = [t for t in MARKETPLACE_TYPES if t.startswith("order.")]
    assert set(order_types) <= set(checks)  # the bulk of the traffic has a quick check
    quick_yes = [e for e in valid if e.get("type") in checks and checks[e["type"]](e["data"])]
    assert {e["type"] for e in quick_yes} >= {"order.placed", "order.paid", "order.delivered"}
    # A timestamp with an offset is valid but not canonical: the full validator takes it.
    shipped = next(e for e in valid if "expected_delivery_at" in e.get("data", {}))
    assert shipped["data"]["expected_delivery_at"].endswith("-03:00") and not checks["order.shipped"](shipped["data"])


def test_thousands_of_edge_mutations_of_valid_events_get_exactly_the_codecs_errors() -> None:
    quick = codec_validator()
    rnd = random.Random(20261127)
    valid = [e for e in _examples("valid") if e.get("type") in MARKETPLACE_TYPES]
    quick_yes = 0
    for i in range(6000):
        event = _mutate(valid[i % len(valid)], rnd)
        _assert_same(event, quick)
        quick_yes += not _codec(event)
    assert quick_yes > 100  # the mutations also keep many events valid (both answers must then be "no error")


SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(10**17), max_value=10**17)
           | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([e for e in EDGES if isinstance(e, str)]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.integers(min_value=0, max_value=10_000), key=st.sampled_from(KEYS), value=SCALARS,
       nested=st.booleans())
def test_any_single_value_anywhere_gets_the_codecs_answer(base: int, key: str, value: Any, nested: bool) -> None:
    quick = codec_validator()
    valid = [e for e in _examples("valid") if e.get("type") in MARKETPLACE_TYPES]
    event = copy.deepcopy(valid[base % len(valid)])
    target = event["data"] if nested and isinstance(event.get("data"), dict) else event
    target[key] = value
    _assert_same(event, quick)


def test_a_schema_keyword_the_generator_does_not_know_leaves_the_type_to_the_full_validator() -> None:
    with pytest.raises(Unsupported):
        compile_data_check({"type": "object", "properties": {"a": {"type": "string", "format": "email",
                                                                    "contentEncoding": "base64"}}})
    with pytest.raises(Unsupported):
        compile_data_check({"type": "object", "anyOf": [{"required": ["a"]}, {"required": ["b"]}]})
    check = compile_data_check({"type": "object", "required": ["n"], "additionalProperties": False,
                                "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 5}}})
    assert check({"n": 5}) and not check({"n": 6}) and not check({"n": 5.0}) and not check({"n": True})
    assert not check({"n": 1, "m": 2}) and not check({})


def test_the_consumers_contract_check_gives_the_codecs_errors_with_the_quick_yes_in_front(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """schemas.contract_check (what the underwriter worker and the disbursement consumer run on every record of
    marketplace.events.v1) takes the same quick yes: its answers are those of the plain codec, on examples and
    mutations alike, and plainly valid events do not reach the full validator."""
    from schemas import contract_check

    rnd = random.Random(11)
    events: list[Any] = _examples("valid") + _examples("invalid")
    events += [_mutate(e, rnd) for e in _examples("valid") for _ in range(40)]
    quick_answers = [contract_check.marketplace_errors(e) for e in events]
    calls: list[Any] = []

    def counted(event: Any) -> Any:
        calls.append(event)
        return validate(event)

    monkeypatch.setattr(contract_check, "_quick", counted)  # the plain codec, every event
    assert [contract_check.marketplace_errors(e) for e in events] == quick_answers
    assert len(calls) == len(events)
    assert sum(not a for a in quick_answers) >= len(_examples("valid")) // 2
    # The quick path itself: a plainly valid order.placed never reaches the codec.
    monkeypatch.undo()
    monkeypatch.setattr(contract_check, "validate", lambda e: calls.append(e) or [])
    contract_check._quick = None
    plain = {**next(e for e in _examples("valid") if e["type"] == "order.placed"), "time": "2024-05-14T13:05:27Z"}
    before = len(calls)
    assert contract_check.marketplace_errors(plain) == []
    assert len(calls) == before
    contract_check._quick = None
