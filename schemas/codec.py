"""The one codec every service uses for CloudEvents envelopes and their data.

Validation runs a compiled validator (fastjsonschema, generated Python code) on the
fast path; only when an event is invalid is the full jsonschema walk run, to list
*every* error with its JSON pointer. Semantic rules that JSON Schema cannot express
(known currency, one currency per event, integer money that arrived as a float,
settlement arithmetic, a parseable RFC 3339 timestamp with an offset) are checked here
too, so every consumer applies the same contract.

The semantic rules find their fields through the data schemas' shared definitions
(`$defs` named Currency and Timestamp, Money through them; every "type": "integer"), so a new type
gets them by reusing those definitions. See schemas/README.md.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema
import jsonschema

try:
    import orjson
except ImportError:  # pragma: no cover - a declared dependency; the stdlib parser gives the same values
    orjson = None  # type: ignore[assignment]

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
    "loan.charged_off", "loan.cancelled", "collection.instruction",
)
EVENT_TYPES = MARKETPLACE_TYPES + EMITTED_TYPES

MAX_MESSAGE = 300
MAX_POINTER = 1024

Path = tuple[str, ...]  # keys into the data; "*" stands for every item of an array


@dataclass(frozen=True, slots=True)
class FieldError:
    pointer: str
    message: str
    # What rule the error breaks: "schema" (structure, envelope), "money" (integer minor units, known and single
    # currency, settlement arithmetic) or "time" (RFC 3339 with an offset). Not part of equality or of to_json.
    kind: str = field(default="schema", compare=False)

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


def _schema_for(kind: str) -> dict[str, Any]:
    return envelope_schema() if kind == "" else data_schema(kind)


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """The schema with local `#/$defs/...` references replaced by their targets (none are recursive)."""
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = _inline_refs(defs[ref.rsplit("/", 1)[-1]], defs)
        return {**{k: v for k, v in node.items() if k != "$ref"}, **target}
    return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}


@cache
def _fast(kind: str) -> Callable[[Any], Any]:
    # Inlined references: fastjsonschema formats a field name for every $ref call, which
    # doubles the cost of a settlement listing many orders. (It also gets a fresh copy,
    # as it rewrites the schema it compiles.) Formats are documentation here: timestamps
    # are parsed by the semantic rules, which say precisely what is wrong.
    schema = _schema_for(kind)
    flat = _inline_refs(schema, schema.get("$defs", {}))
    return fastjsonschema.compile(flat, use_formats=False)


_DOLLAR = re.compile(r"(?<!\\)\$")


@cache
def _anchored(pattern: str) -> re.Pattern[str]:
    # Python's `$` also matches before a trailing newline; `\Z` does not. fastjsonschema
    # makes the same substitution, so both validators agree on "id\n".
    return re.compile(_DOLLAR.sub(r"\\Z", pattern))


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[jsonschema.ValidationError]:
    if isinstance(instance, str) and not _anchored(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


@cache
def _full(kind: str) -> jsonschema.protocols.Validator:
    schema = _schema_for(kind)
    base = jsonschema.validators.validator_for(schema)
    cls = jsonschema.validators.extend(base, {"pattern": _pattern})
    return cls(schema)


def _escape(key: Any) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def _pointer(path: Any) -> str:
    ptr = "".join("/" + _escape(p) for p in path)
    return ptr if len(ptr) <= MAX_POINTER else ptr[: MAX_POINTER - 3] + "..."


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value) if not isinstance(value, dict | list) else json.dumps(value, default=repr)[:limit + 1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
               float: "number", type(None): "null"}


def _message(err: jsonschema.ValidationError) -> str:
    """A short, specific message that never echoes a huge value back."""
    kind, value, schema = err.validator, err.instance, err.schema
    expected = schema.get("description") if isinstance(schema, dict) else None
    if kind == "type":
        msg = f"must be of type {err.validator_value}, got {_JSON_TYPES.get(type(value), type(value).__name__)}"
    elif kind == "maxLength" and isinstance(value, str):
        msg = f"string of {len(value)} characters is longer than the maximum {err.validator_value}"
    elif kind == "maxItems" and isinstance(value, list):
        msg = f"array of {len(value)} items is longer than the maximum {err.validator_value}"
    elif kind == "pattern":
        msg = f"{_short(value)} is not {expected}" if expected else f"{_short(value)} does not match {err.validator_value}"
    elif kind == "enum" and schema is envelope_schema()["properties"]["type"]:
        msg = f"unknown event type {_short(value)}; see schemas/README.md for the catalog"
    elif kind == "anyOf" and all(set(sub) == {"required"} for sub in err.validator_value):
        names = [name for sub in err.validator_value for name in sub["required"]]
        msg = "needs at least one of: " + ", ".join(names)
    elif kind == "enum":
        msg = f"{_short(value)} is not one of {', '.join(map(str, err.validator_value))}"
    elif kind == "additionalProperties" and isinstance(value, dict) and isinstance(schema, dict):
        known, patterns = set(schema.get("properties", {})), [_anchored(p) for p in schema.get("patternProperties", {})]
        extra = sorted(str(k) for k in value if k not in known and not any(p.search(str(k)) for p in patterns))
        msg = "unexpected properties: " + ", ".join(_short(k, 40) for k in extra[:10])
    else:
        msg = err.message
    return msg if len(msg) <= MAX_MESSAGE else msg[: MAX_MESSAGE - 3] + "..."


def _schema_errors(kind: str, obj: Any, prefix: str) -> list[FieldError]:
    try:
        _fast(kind)(obj)
        return []
    except fastjsonschema.JsonSchemaValueException as fast_err:
        first = fast_err
    errors = [FieldError(prefix + _pointer(err.absolute_path), _message(err))
              for err in _full(kind).iter_errors(obj)]
    if not errors:  # the two validators disagree: trust the stricter one rather than pass bad input
        errors = [FieldError(prefix + _pointer(first.path[1:]), first.message[:MAX_MESSAGE])]
    errors.sort(key=lambda e: (e.pointer, e.message))
    return errors


# --- semantic rules -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rules:
    """Where a type's data holds currencies, timestamps and integers (Money's amount among them)."""

    currencies: tuple[Path, ...]
    timestamps: tuple[Path, ...]
    integers: tuple[Path, ...]


def _collect(schema: Any, defs: dict[str, Any], path: Path, found: dict[str, list[Path]], depth: int = 0) -> None:
    if not isinstance(schema, dict) or depth > 20:
        return
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref.rsplit("/", 1)[-1]
        if name in found:
            found[name].append(path)
        _collect(defs.get(name), defs, path, found, depth + 1)
    if schema.get("type") == "integer":
        found["integer"].append(path)
    for key, sub in schema.get("properties", {}).items():
        _collect(sub, defs, (*path, key), found, depth + 1)
    if "items" in schema:
        _collect(schema["items"], defs, (*path, "*"), found, depth + 1)


@cache
def _rules(event_type: str) -> _Rules:
    schema = data_schema(event_type)
    found: dict[str, list[Path]] = {k: [] for k in ("Currency", "Timestamp", "integer")}
    _collect(schema, schema.get("$defs", {}), (), found)
    return _Rules(*(tuple(found[k]) for k in ("Currency", "Timestamp", "integer")))


def _values(obj: Any, path: Path, ptr: str = "/data") -> list[tuple[str, Any]]:
    """(pointer, value) for every value at `path` that exists; missing or mistyped parts are skipped."""
    for i, key in enumerate(path):
        if key == "*":
            if not isinstance(obj, list):
                return []
            return [hit for n, item in enumerate(obj) for hit in _values(item, path[i + 1:], f"{ptr}/{n}")]
        if not isinstance(obj, dict) or key not in obj:
            return []
        obj = obj[key]
        ptr = f"{ptr}/{_escape(key)}"
    return [(ptr, obj)]


def _plain(obj: Any, path: Path) -> list[Any]:
    """The values at `path`, without pointers: the cheap scan for events that are fine."""
    if "*" not in path:  # no array on the way: plain lookups
        for key in path:
            if not (isinstance(obj, dict) and key in obj):
                return []
            obj = obj[key]
        return [obj]
    values = [obj]
    for key in path:
        if key == "*":
            values = [item for v in values if isinstance(v, list) for item in v]
        elif len(values) == 1:  # no array on the way yet: a plain lookup
            v = values[0]
            if not (isinstance(v, dict) and key in v):
                return []
            values = [v[key]]
        else:
            values = [v[key] for v in values if isinstance(v, dict) and key in v]
    return values


def _money_looks_fine(data: Any, rules: _Rules) -> bool:
    """True when no integer is a float, every currency is known and there is only one."""
    for path in rules.integers:
        for value in _plain(data, path):
            if isinstance(value, float):
                return False
    first: str | None = None
    for path in rules.currencies:
        for cur in _plain(data, path):
            if isinstance(cur, str):
                if cur not in CURRENCY_EXPONENTS:
                    return False
                if first is None:
                    first = cur
                elif cur != first:
                    return False
    return True


def _money_errors(data: Any, rules: _Rules) -> list[FieldError]:
    errors = []
    for path in rules.integers:
        for ptr, value in _values(data, path):
            if isinstance(value, float):
                errors.append(FieldError(ptr, f"must be an integer (minor units for money), got the number {value!r}",
                                         "money"))
    seen: dict[str, str] = {}
    for path in rules.currencies:
        for ptr, cur in _values(data, path):
            if isinstance(cur, str) and cur not in CURRENCY_EXPONENTS:
                errors.append(FieldError(ptr, f"unknown ISO 4217 currency {cur[:8]!r}", "money"))
            elif isinstance(cur, str):
                seen.setdefault(cur, ptr)
    if len(seen) > 1:
        errors.append(FieldError("/data", "mixed currencies in one event: " + ", ".join(sorted(seen)), "money"))
    return errors


_CANONICAL_UTC = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z\Z")


def _time_errors(ptr: str, value: Any) -> list[FieldError]:
    if not isinstance(value, str):
        return []
    if len(value) == 20 and _CANONICAL_UTC.match(value):  # the common shape: only the calendar can be wrong
        try:  # exactly that shape: the C ISO parser checks the calendar
            datetime.fromisoformat(value)
            return []
        except ValueError:
            pass  # the general parser words the error
    problem = time_problem(value)
    return [FieldError(ptr, problem, "time")] if problem else []


def time_problem(value: str) -> str | None:
    """What is wrong with an RFC 3339 timestamp (with an offset), or None.

    Stricter than a bare parse_rfc3339 in two ways: digits must be ASCII (RFC 3339's DIGIT; `\\d` would take
    `２０２４` or Arabic-Indic digits), and an instant outside years 1-9999 once converted to UTC
    (`0001-01-01T00:00:00+01:00`) is an error, not an OverflowError."""
    if not value.isascii():
        return f"not an RFC 3339 timestamp (only ASCII digits and separators): {value[:64]!r}"
    try:
        parse_rfc3339(value)
    except TimeError as exc:
        return str(exc)
    except OverflowError:
        return f"timestamp {value[:64]!r} is outside years 1-9999 once converted to UTC"
    return None


def _amount(data: Any, key: str) -> int | None:
    money = data.get(key) if isinstance(data, dict) else None
    amount = money.get("amount") if isinstance(money, dict) else None
    return amount if type(amount) is int else None


# ISO 3166-1 alpha-2 codes assigned to a country or territory (249, as in tzdata's iso3166.tab), plus XK
# (Kosovo: user-assigned, but what the EU, SWIFT and card networks use). "ZZ" or "XX" are not countries.
_COUNTRY_CODES = """
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ
CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO
FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE
JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO
MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW
PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM
TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
XK
"""
COUNTRIES = frozenset(_COUNTRY_CODES.split())


def _semantic_errors(event: dict[str, Any], etype: str | None) -> list[FieldError]:
    errors = _time_errors("/time", event.get("time"))
    if etype is None:
        return errors
    data, rules = event.get("data"), _rules(etype)
    if not _money_looks_fine(data, rules):  # pointers are only built when something is wrong
        errors.extend(_money_errors(data, rules))
    for path in rules.timestamps:
        for ptr, value in _values(data, path):
            errors.extend(_time_errors(ptr, value))
    if etype == "merchant.onboarded" and type(data) is dict:
        country = data.get("country")
        if type(country) is str and len(country) == 2 and country.isupper() and country not in COUNTRIES:
            errors.append(FieldError("/data/country", f"{country!r} is not an assigned ISO 3166-1 alpha-2 country code"))
    if etype == "settlement.paid":
        gross, fees, withheld, net = (_amount(data, k) for k in ("gross", "fees", "withheld", "net"))
        if None not in (gross, fees, withheld, net) and net != gross - fees - withheld:  # type: ignore[operator]
            errors.append(FieldError("/data/net", f"net {net} != gross {gross} - fees {fees} - withheld {withheld}",
                                     "money"))
        errors.extend(_settled_orders_errors(data, gross))
    return errors


def _settled_orders_errors(data: Any, gross: int | None) -> list[FieldError]:
    """A settlement pays each order once and never more than its gross (else settled sales would be inflated)."""
    orders = data.get("orders") if isinstance(data, dict) else None
    if type(orders) is not list:
        return []
    total = 0
    ids: list[str] = []
    for item in orders:
        if type(item) is dict:
            money = item.get("amount")
            amount = money.get("amount") if type(money) is dict else None
            if type(amount) is int:
                total += amount
            oid = item.get("order_id")
            if type(oid) is str:
                ids.append(oid)
    errors: list[FieldError] = []
    if len(set(ids)) != len(ids):  # only now find where
        seen: set[str] = set()
        for n, item in enumerate(orders):
            oid = item.get("order_id") if type(item) is dict else None
            if type(oid) is str:
                if oid in seen:
                    errors.append(FieldError(f"/data/orders/{n}/order_id", f"order {_short(oid)} is listed twice"))
                seen.add(oid)
    if gross is not None and total > gross:
        errors.append(FieldError("/data/orders", f"orders add up to {total}, more than gross {gross}", "money"))
    return errors


_KNOWN_TYPES = frozenset(EVENT_TYPES)
_DATASCHEMAS = {t: f"{SCHEMA_BASE}{t}.schema.json" for t in EVENT_TYPES}
_ENVELOPE_REQUIRED = frozenset(("specversion", "id", "source", "type", "time", "subject", "data"))
_ENVELOPE_KEYS = _ENVELOPE_REQUIRED | {"dataschema", "datacontenttype"}
_ID_TEXT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*\Z")
_PRINTABLE = re.compile(r"[\x21-\x7e]+\Z")


def _envelope_surely_valid(event: dict[str, Any]) -> bool:
    """A quick check that implies the envelope schema holds (it is stricter in places, never looser).

    True means the compiled validator would pass the envelope; False means nothing, and the
    schema validators run as usual. It only skips the generic walk for the common, plainly valid
    envelope (only the CloudEvents members Floatbridge uses, no extension attributes, `dataschema` absent or
    the schema of `type`)."""
    keys = event.keys()
    if not (keys >= _ENVELOPE_REQUIRED and keys <= _ENVELOPE_KEYS):
        return False
    eid, source, etype, etime, subject = (event["id"], event["source"], event["type"], event["time"],
                                          event["subject"])
    if not (event["specversion"] == "1.0" and type(event["specversion"]) is str and type(event["data"]) is dict
            and type(eid) is str and 0 < len(eid) <= 128 and _ID_TEXT.match(eid)
            and type(subject) is str and 0 < len(subject) <= 128 and _ID_TEXT.match(subject)
            and type(source) is str and 0 < len(source) <= 256 and _PRINTABLE.match(source)
            and type(etype) is str and etype in _KNOWN_TYPES
            and type(etime) is str and len(etime) <= 40):
        return False
    if "dataschema" in keys and event["dataschema"] != _DATASCHEMAS[etype]:
        return False  # the schema allows any string; _identity_errors says what is wrong with it
    if "datacontenttype" in keys:
        ctype = event["datacontenttype"]
        if not (type(ctype) is str and ctype == "application/json"):
            return False
    return True


def _validate(event: dict[str, Any]) -> list[FieldError]:
    plain = _envelope_surely_valid(event)  # also: no extension attributes, dataschema (if any) is the type's
    errors = [] if plain else _schema_errors("", event, "")
    etype = event.get("type")
    known = etype if isinstance(etype, str) and etype in _KNOWN_TYPES else None
    if known is not None:
        errors.extend(_schema_errors(known, event.get("data"), "/data"))
    semantic = _semantic_errors(event, known)
    if known is not None and (not plain or _merchant_in_data(event)):
        semantic.extend(_identity_errors(event, known))
    if not plain and not event.keys() <= _ENVELOPE_KEYS:
        semantic.extend(_extension_errors(event))
    if semantic:
        # A semantic error adds nothing where the schema already flagged the same field.
        flagged = {e.pointer for e in errors}
        errors.extend(e for e in semantic if e.pointer not in flagged)
    if not errors:  # the common case: nothing to deduplicate
        return errors
    return list(dict.fromkeys(errors))  # the envelope and the data schema may both say "data must be an object"


_MARKETPLACE = frozenset(MARKETPLACE_TYPES)
# Members by which a marketplace may (needlessly) repeat the merchant in `data`; the subject is the merchant.
_MERCHANT_KEYS = ("merchant_id", "merchantId")


def _merchant_in_data(event: dict[str, Any]) -> bool:
    data = event.get("data")
    return type(data) is dict and ("merchant_id" in data or "merchantId" in data)


def _identity_errors(event: dict[str, Any], etype: str) -> list[FieldError]:
    """The envelope must not contradict itself: `dataschema`, when given, is the schema of `type` (a reader
    that follows it must not validate the data against another type), and on a marketplace event a merchant
    id repeated in `data` is the `subject` (else which merchant is it: the one keyed, or the one named?)."""
    errors: list[FieldError] = []
    schema = event.get("dataschema")
    if schema is not None and schema != _DATASCHEMAS[etype]:
        errors.append(FieldError("/dataschema", f"{_short(schema)} is not the schema of type {etype} "
                                 f"({_DATASCHEMAS[etype]})"))
    data = event.get("data")
    if etype in _MARKETPLACE and type(data) is dict:
        for key in _MERCHANT_KEYS:
            if key in data and data[key] != event.get("subject"):
                errors.append(FieldError(f"/data/{key}", f"{_short(data[key])} differs from subject "
                                         f"{_short(event.get('subject'))}, the merchant of the event"))
    return errors


_CE_INTEGER = range(-(2**31), 2**31)  # CloudEvents 1.0 type system: Integer is a signed 32-bit whole number


def _extension_errors(event: dict[str, Any]) -> list[FieldError]:
    """Extension attributes hold CloudEvents values: an integer beyond 32 bits has no CloudEvents form (a binary-mode
    header or another SDK would change or refuse it)."""
    return [FieldError(f"/{_escape(k)}", f"extension attribute integer {_short(v)} is outside the CloudEvents "
                                         "Integer range (-2^31..2^31-1)")
            for k, v in event.items() if k not in _ENVELOPE_KEYS and type(v) is int and v not in _CE_INTEGER]


def validate(event: Any) -> list[FieldError]:
    """Every error of `event` against the envelope, its type's data schema and the semantic rules.

    Never raises for any JSON value: problems come back as FieldError(pointer, message),
    pointer being an RFC 6901 JSON pointer into the event ("" = the whole event).
    """
    if not isinstance(event, dict):
        return [FieldError("", f"event must be a JSON object, got {_JSON_TYPES.get(type(event), type(event).__name__)}")]
    try:
        return _validate(event)
    except RecursionError:
        return [FieldError("", "event is nested too deeply")]


def check(event: Any) -> dict[str, Any]:
    """`event` itself when valid, else EventInvalid carrying every error."""
    errors = validate(event)
    if errors:
        raise EventInvalid(errors)
    result: dict[str, Any] = event
    return result


def encode(event: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON. NaN/Infinity are not JSON and raise ValueError."""
    try:
        text = json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (from a "\\ud800" escape) cannot be UTF-8: keep it as an escape instead.
        return json.dumps(event, separators=(",", ":"), allow_nan=False).encode("ascii")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# orjson reads an integer of 20 or more digits as a float: any run of 19+ digits takes the stdlib parser.
# Bytes are checked by mapping every digit to "0" and looking for 19 of them (8x cheaper than the regex).
_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_NINETEEN_ZEROS = b"0" * 19
_LONG_DIGITS_S = re.compile(r"[0-9]{19}")


def decode(raw: bytes | str) -> Any:
    """Parse JSON; a malformed document (or NaN/Infinity) raises EventInvalid with a pointer at the root.

    orjson first (~5x faster; the same values for every document it accepts), the stdlib parser for whatever
    it refuses (NaN, lone surrogate escapes, a BOM, UTF-16/32, out-of-range floats) and for long digit runs,
    so the result and the errors are the stdlib's in every case."""
    if isinstance(raw, str):
        long_digits = _LONG_DIGITS_S.search(raw) is not None
    else:
        long_digits = _NINETEEN_ZEROS in bytes(raw).translate(_DIGITS_TO_ZERO)
    if orjson is not None and not long_digits:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise EventInvalid([FieldError("", f"malformed JSON: {exc}"[:MAX_MESSAGE])]) from None


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
