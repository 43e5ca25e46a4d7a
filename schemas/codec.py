"""The one codec every service uses for CloudEvents envelopes and their data.

Validation runs a compiled validator (fastjsonschema, generated Python code) on the
fast path; only when an event is invalid is the full jsonschema walk run, to list
*every* error with its JSON pointer. Semantic rules that JSON Schema cannot express
(known currency, one currency per event, settlement arithmetic, a parseable UTC
timestamp) are checked here too, so every consumer applies the same contract.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema
import jsonschema

from services.common.money import CURRENCY_EXPONENTS
from services.common.timeutil import TimeError, format_rfc3339, parse_rfc3339

SPECVERSION = "1.0"
SCHEMA_BASE = "https://schemas.floatbridge.dev/v1/"

MARKETPLACE_TYPES = (
    "merchant.onboarded", "merchant.updated",
    "order.placed", "order.paid", "order.shipped", "order.delivered",
    "order.cancelled", "order.refunded", "order.chargeback", "settlement.paid",
)
EMITTED_TYPES = (
    "ingest.rejected", "credit_limit.updated",
    "loan_offer.created", "loan_offer.withdrawn", "loan_offer.expired", "loan_offer.accepted",
    "loan.disbursed", "loan.repayment_applied", "loan.repaid", "loan.delinquent",
    "loan.charged_off", "collection.instruction",
)
EVENT_TYPES = MARKETPLACE_TYPES + EMITTED_TYPES


@dataclass(frozen=True, slots=True)
class FieldError:
    pointer: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"pointer": self.pointer, "message": self.message}


class EventInvalid(ValueError):
    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("; ".join(f"{e.pointer or '/'}: {e.message}" for e in errors[:5]))


def _schema_text(name: str) -> Any:
    return json.loads(resources.files("schemas").joinpath("json", name).read_text("utf-8"))


@cache
def envelope_schema() -> dict[str, Any]:
    schema: dict[str, Any] = _schema_text("cloudevent.schema.json")
    return schema


@cache
def data_schema(event_type: str) -> dict[str, Any]:
    schema: dict[str, Any] = _schema_text(f"data/{event_type}.schema.json")
    return schema


@cache
def _fast(kind: str) -> Callable[[Any], Any]:
    schema = envelope_schema() if kind == "" else data_schema(kind)
    return fastjsonschema.compile(schema)  # type: ignore[no-any-return]


@cache
def _full(kind: str) -> jsonschema.protocols.Validator:
    schema = envelope_schema() if kind == "" else data_schema(kind)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)  # type: ignore[no-any-return]


def _pointer(path: Any) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _schema_errors(kind: str, obj: Any, prefix: str) -> list[FieldError]:
    try:
        _fast(kind)(obj)
        return []
    except fastjsonschema.JsonSchemaValueException:
        pass
    errors = []
    for err in sorted(_full(kind).iter_errors(obj), key=lambda e: (list(map(str, e.absolute_path)), e.message)):
        msg = err.message
        if len(msg) > 300:
            msg = msg[:297] + "..."
        errors.append(FieldError(prefix + _pointer(err.absolute_path), msg))
    return errors


def _walk_money(obj: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield every Money object ({amount, currency}) inside `obj` with its pointer."""
    if isinstance(obj, dict):
        if set(obj) >= {"amount", "currency"} and isinstance(obj.get("currency"), str):
            yield path, obj
        for k, v in obj.items():
            if isinstance(v, dict | list):
                yield from _walk_money(v, f"{path}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk_money(v, f"{path}/{i}")


def _semantic_errors(event: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    try:
        parse_rfc3339(event["time"])
    except TimeError as exc:
        errors.append(FieldError("/time", str(exc)))
    data = event.get("data")
    currencies: dict[str, str] = {}
    for ptr, money in _walk_money(data, "/data"):
        cur = money["currency"]
        if cur not in CURRENCY_EXPONENTS:
            errors.append(FieldError(ptr + "/currency", f"unknown ISO 4217 currency {cur[:8]!r}"))
        currencies.setdefault(cur, ptr)
    if len(currencies) > 1:
        errors.append(FieldError("/data", "mixed currencies in one event: " + ", ".join(sorted(currencies))))
    if event.get("type") == "settlement.paid" and isinstance(data, dict) and not errors:
        try:
            gross, fees, withheld, net = (data[k]["amount"] for k in ("gross", "fees", "withheld", "net"))
            if net != gross - fees - withheld:
                errors.append(FieldError("/data/net", f"net {net} != gross {gross} - fees {fees} - withheld {withheld}"))
        except (KeyError, TypeError):
            pass
    for key in ("due_at", "expires_at", "accepted_at", "repaid_at", "expected_delivery_at", "received_at"):
        if isinstance(data, dict) and isinstance(data.get(key), str):
            try:
                parse_rfc3339(data[key])
            except TimeError as exc:
                errors.append(FieldError(f"/data/{key}", str(exc)))
    return errors


def validate(event: Any) -> list[FieldError]:
    """Every error of `event` against the envelope, its type's data schema and the semantic rules."""
    if not isinstance(event, dict):
        return [FieldError("", f"event must be a JSON object, got {type(event).__name__}")]
    errors = _schema_errors("", event, "")
    etype = event.get("type")
    if isinstance(etype, str) and etype in EVENT_TYPES:
        errors.extend(_schema_errors(etype, event.get("data"), "/data"))
    if not errors:
        errors.extend(_semantic_errors(event))
    return errors


def check(event: Any) -> dict[str, Any]:
    errors = validate(event)
    if errors:
        raise EventInvalid(errors)
    result: dict[str, Any] = event
    return result


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode(raw: bytes | str) -> Any:
    """Parse JSON; a malformed document raises EventInvalid with a pointer at the root."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise EventInvalid([FieldError("", f"malformed JSON: {exc}"[:300])]) from None


def new_event(
    type: str,
    subject: str,
    data: dict[str, Any],
    time: datetime | str,
    source: str,
    id: str | None = None,
) -> dict[str, Any]:
    """Build a canonical envelope (the caller validates when the data is untrusted)."""
    return {
        "specversion": SPECVERSION,
        "id": id or str(uuid.uuid4()),
        "source": source,
        "type": type,
        "time": time if isinstance(time, str) else format_rfc3339(time),
        "subject": subject,
        "dataschema": f"{SCHEMA_BASE}{type}.schema.json",
        "datacontenttype": "application/json",
        "data": data,
    }


def deterministic_id(*parts: str) -> str:
    """A stable event id derived from its cause, so a re-emitted decision dedupes downstream."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "floatbridge:" + ":".join(parts)))
