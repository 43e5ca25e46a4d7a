"""The published event contract: one JSON Schema per type, valid and invalid examples that prove it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema
import pytest

from schemas import codec
from schemas.codec import EVENT_TYPES, MARKETPLACE_TYPES, SCHEMA_BASE, new_event, validate

pytestmark = pytest.mark.unit

ROOT = Path(codec.__file__).resolve().parent
DATA_DIR = ROOT / "json" / "data"
EXAMPLES = ROOT / "examples"


def _load(path: Path) -> Any:
    return json.loads(path.read_text("utf-8"))


def _examples(kind: str) -> list[Path]:
    return sorted(EXAMPLES.glob(f"*/{kind}/*.json"))


def _ids(paths: list[Path]) -> list[str]:
    return [f"{p.parts[-3]}/{p.stem}" for p in paths]


VALID = _examples("valid")
INVALID = _examples("invalid")


@pytest.mark.parametrize("etype", EVENT_TYPES)
def test_every_event_type_has_a_draft_2020_12_schema_with_its_id(etype: str) -> None:
    schema = _load(DATA_DIR / f"{etype}.schema.json")
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"{SCHEMA_BASE}{etype}.schema.json"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert new_event(etype, "m-1", {}, "2024-01-01T00:00:00Z", "urn:x")["dataschema"] == schema["$id"]


def test_no_schema_exists_for_a_type_outside_the_catalog() -> None:
    names = {p.name.removesuffix(".schema.json") for p in DATA_DIR.glob("*.schema.json")}
    assert names == set(EVENT_TYPES)


def test_envelope_type_enum_is_exactly_the_catalog() -> None:
    envelope = _load(ROOT / "json" / "cloudevent.schema.json")
    jsonschema.Draft202012Validator.check_schema(envelope)
    assert tuple(envelope["properties"]["type"]["enum"]) == EVENT_TYPES


def _refs_with_siblings(node: Any, where: str = "") -> list[str]:
    found = []
    if isinstance(node, dict):
        if "$ref" in node and set(node) - {"$ref", "description"}:
            found.append(where)
        for key, value in node.items():
            found += _refs_with_siblings(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _refs_with_siblings(value, f"{where}/{i}")
    return found


@pytest.mark.parametrize("etype", EVENT_TYPES)
def test_no_ref_has_sibling_keywords_the_fast_validator_would_ignore(etype: str) -> None:
    assert _refs_with_siblings(_load(DATA_DIR / f"{etype}.schema.json")) == []


def test_money_has_one_definition_everywhere() -> None:
    moneys = {json.dumps(s["$defs"]["Money"], sort_keys=True)
              for p in DATA_DIR.glob("*.json") if "Money" in (s := _load(p)).get("$defs", {})}
    assert len(moneys) == 1
    money = json.loads(moneys.pop())
    assert money["required"] == ["amount", "currency"]
    assert money["additionalProperties"] is False
    assert money["properties"]["amount"] == {"type": "integer", "minimum": 0, "maximum": 10**15}


@pytest.mark.parametrize("etype", EVENT_TYPES)
def test_every_type_has_valid_and_invalid_examples(etype: str) -> None:
    assert list((EXAMPLES / etype / "valid").glob("*.json"))
    assert list((EXAMPLES / etype / "invalid").glob("*.json"))


def test_examples_cover_two_three_and_zero_decimal_currencies() -> None:
    currencies = set()
    for path in VALID:
        text = path.read_text("utf-8")
        currencies |= {c for c in ("BRL", "JPY", "KWD") if f'"{c}"' in text}
    assert currencies == {"BRL", "JPY", "KWD"}


@pytest.mark.parametrize("path", VALID, ids=_ids(VALID))
def test_valid_example_has_no_errors(path: Path) -> None:
    event = _load(path)
    assert event["type"] == path.parts[-3]
    assert validate(event) == []


@pytest.mark.parametrize("path", INVALID, ids=_ids(INVALID))
def test_invalid_example_reports_the_expected_pointers(path: Path) -> None:
    case = _load(path)
    errors = validate(case["event"])
    assert errors, "an invalid example validated cleanly"
    assert set(case["expect_pointers"]) <= {e.pointer for e in errors}, errors
    assert all(e.message and len(e.message) <= 300 for e in errors)


def _event(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = _load(path)
    return doc.get("event", doc)


WITH_DATA = [p for p in VALID + INVALID
             if _event(p).get("type") in EVENT_TYPES and isinstance(_event(p).get("data"), dict)]


@pytest.mark.parametrize("path", WITH_DATA, ids=_ids(WITH_DATA))
def test_fast_and_full_validators_agree_on_every_example(path: Path) -> None:
    event = _event(path)
    etype = event["type"]
    schema = codec.data_schema(etype)
    fast_ok = True
    try:
        codec._fast(etype)(event["data"])
    except fastjsonschema.JsonSchemaValueException:
        fast_ok = False
    full_ok = not list(codec._full(etype).iter_errors(event["data"]))
    assert fast_ok == full_ok, schema["$id"]


@pytest.mark.parametrize("etype", MARKETPLACE_TYPES)
def test_marketplace_data_may_carry_unknown_optional_fields(etype: str) -> None:
    event = _load(sorted((EXAMPLES / etype / "valid").glob("*.json"))[0])
    event["data"]["campaign"] = {"name": "black-friday", "week": 47}
    assert validate(event) == []


def test_unbounded_extra_fields_are_refused() -> None:
    event = _load(EXAMPLES / "order.placed" / "valid" / "brl.json")
    event["data"].update({f"x{i}": i for i in range(100)})
    assert "/data" in {e.pointer for e in validate(event)}
