"""A quick yes for plainly valid events before the full validator (schemas.codec.validate).

For every marketplace type whose data schema uses only simple keywords, a check is generated from the
schema once (Python source compiled at start): it answers True only when the event is certainly valid
under everything codec.validate checks: the envelope (codec's own sufficient envelope check), the type's
data schema (types, required and extra members, lengths, patterns, bounds, nested objects and arrays), and
the semantic rules (`time` and every Timestamp in the canonical UTC form on a real calendar date, every
currency known and the same, no merchant id repeated in `data`). It is stricter than the validator in
places (an integer must be an int, not 1.0; a timestamp must already be canonical), never looser. Any
other answer (False) means nothing: the full validator runs and gives every error exactly as before. Types
with other rules (settlement.paid's arithmetic, merchant.onboarded's countries) or keywords the generator
does not know always take the full validator.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from services.common.money import CURRENCY_EXPONENTS

Check = Callable[[Any], bool]
E = TypeVar("E")  # what the full validator lists per error

# Keywords that only document (formats are not asserted by the compiled schema either: use_formats=False).
_DOC_KEYWORDS = frozenset(("description", "title", "$id", "$schema", "$comment", "examples", "default",
                           "deprecated", "readOnly", "writeOnly", "format", "$defs"))
_OBJECT_KEYWORDS = frozenset(("type", "properties", "required", "additionalProperties", "maxProperties",
                              "minProperties", "propertyNames"))
_STRING_KEYWORDS = frozenset(("type", "minLength", "maxLength", "pattern", "enum", "const"))
_NUMBER_KEYWORDS = frozenset(("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "const"))
_ARRAY_KEYWORDS = frozenset(("type", "items", "minItems", "maxItems"))
# Types whose semantic rules go beyond currencies and timestamps: always the full validator.
_OWN_RULES = frozenset(("settlement.paid", "merchant.onboarded"))
CANONICAL_UTC = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z\Z")


class Unsupported(Exception):
    """The schema uses something the generator does not translate: no quick check for that type."""


def _plain_number(value: Any) -> bool:
    return type(value) in (int, float) and value == value and value not in (float("inf"), float("-inf"))


def _anchored(pattern: str) -> str:
    """The pattern as the compiled schema searches it: a final `$` means the end of the text (`\\Z`)."""
    if pattern.count("$") > (1 if pattern.endswith("$") else 0):
        raise Unsupported(f"pattern {pattern!r}")
    return pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$") else pattern


class _Gen:
    def __init__(self, defs: dict[str, Any]):
        self.defs = defs
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self.n = 0

    def const(self, value: Any) -> str:
        name = f"_k{len(self.consts)}"
        self.consts[name] = value
        return name

    def var(self) -> str:
        self.n += 1
        return f"v{self.n}"

    def emit(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)

    def node(self, schema: Any, var: str, indent: int, depth: int = 0) -> None:
        """Lines that `return False` unless the value in `var` certainly satisfies `schema`."""
        if depth > 16 or not isinstance(schema, dict):
            raise Unsupported("depth or shape")
        ref = schema.get("$ref")
        if ref is not None:
            if not (isinstance(ref, str) and ref.startswith("#/$defs/")) or set(schema) - _DOC_KEYWORDS - {"$ref"}:
                raise Unsupported(f"$ref {ref!r} with siblings")
            name = ref.rsplit("/", 1)[-1]
            target = self.defs.get(name)
            if target is None:
                raise Unsupported(f"unknown $ref {ref!r}")
            self.node(target, var, indent, depth + 1)
            if name == "Currency":  # known, and the same as every other currency of the event
                self.emit(indent, f"if {var} not in _CURRENCIES: return False")
                self.emit(indent, f"if cur[0] is None: cur[0] = {var}")
                self.emit(indent, f"elif cur[0] != {var}: return False")
            elif name == "Timestamp":  # the canonical UTC form on a real date (else the semantic rules speak)
                self.emit(indent, f"if type({var}) is not str or len({var}) != 20 or not _CANON({var}): return False")
                self.emit(indent, f"if not _real_date({var}): return False")
            return
        keys = set(schema) - _DOC_KEYWORDS
        kind = schema.get("type")
        if kind == "object":
            self.obj(schema, keys, var, indent, depth)
        elif kind == "string":
            self.string(schema, keys, var, indent)
        elif kind in ("integer", "number"):
            self.number(schema, keys, kind, var, indent)
        elif kind == "boolean" and keys == {"type"}:
            self.emit(indent, f"if type({var}) is not bool: return False")
        elif kind == "array":
            self.array(schema, keys, var, indent, depth)
        else:
            raise Unsupported(f"type {kind!r}")

    def obj(self, schema: dict[str, Any], keys: set[str], var: str, indent: int, depth: int) -> None:
        if keys - _OBJECT_KEYWORDS:
            raise Unsupported(f"object keywords {sorted(keys - _OBJECT_KEYWORDS)}")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        if not isinstance(props, dict) or extra not in (True, False):
            raise Unsupported("properties / additionalProperties")
        self.emit(indent, f"if type({var}) is not dict: return False")
        required = schema.get("required", [])
        if required:
            self.emit(indent, f"if not {var}.keys() >= {self.const(frozenset(required))}: return False")
        if extra is False:
            self.emit(indent, f"if not {var}.keys() <= {self.const(frozenset(props))}: return False")
        if "maxProperties" in schema:
            self.emit(indent, f"if len({var}) > {int(schema['maxProperties'])}: return False")
        if "minProperties" in schema:
            self.emit(indent, f"if len({var}) < {int(schema['minProperties'])}: return False")
        names = schema.get("propertyNames")
        if names is not None:
            if not isinstance(names, dict) or set(names) - _DOC_KEYWORDS - {"minLength", "maxLength"}:
                raise Unsupported("propertyNames")
            lo, hi = int(names.get("minLength", 0)), int(names.get("maxLength", 1 << 30))
            self.emit(indent, f"for _name in {var}:")
            self.emit(indent + 1, f"if not {lo} <= len(_name) <= {hi}: return False")
        for name, sub in props.items():
            child = self.var()
            self.emit(indent, f"{child} = {var}.get({name!r}, _MISSING)")
            self.emit(indent, f"if {child} is not _MISSING:")
            before = len(self.lines)
            self.node(sub, child, indent + 1, depth + 1)
            if len(self.lines) == before:
                self.emit(indent + 1, "pass")

    def string(self, schema: dict[str, Any], keys: set[str], var: str, indent: int) -> None:
        if keys - _STRING_KEYWORDS:
            raise Unsupported(f"string keywords {sorted(keys - _STRING_KEYWORDS)}")
        self.emit(indent, f"if type({var}) is not str: return False")
        if "minLength" in schema or "maxLength" in schema:
            # JSON Schema counts code points, as len() does.
            lo, hi = int(schema.get("minLength", 0)), int(schema.get("maxLength", 1 << 30))
            self.emit(indent, f"if not {lo} <= len({var}) <= {hi}: return False")
        if "pattern" in schema:
            regex = re.compile(_anchored(schema["pattern"]))
            self.emit(indent, f"if not {self.const(regex.search)}({var}): return False")
        if "enum" in schema:
            if not all(isinstance(v, str) for v in schema["enum"]):
                raise Unsupported("enum of non-strings")
            self.emit(indent, f"if {var} not in {self.const(frozenset(schema['enum']))}: return False")
        if "const" in schema:
            if not isinstance(schema["const"], str):
                raise Unsupported("const")
            self.emit(indent, f"if {var} != {schema['const']!r}: return False")

    def number(self, schema: dict[str, Any], keys: set[str], kind: str, var: str, indent: int) -> None:
        if keys - _NUMBER_KEYWORDS or "enum" in keys or "const" in keys:
            raise Unsupported(f"number keywords {sorted(keys)}")
        if kind == "integer":
            self.emit(indent, f"if type({var}) is not int: return False")
        else:
            self.emit(indent, f"if not _plain_number({var}): return False")
        for word, op in (("minimum", "<"), ("maximum", ">"), ("exclusiveMinimum", "<="), ("exclusiveMaximum", ">=")):
            if word in schema:
                bound = schema[word]
                if type(bound) not in (int, float):
                    raise Unsupported(word)
                self.emit(indent, f"if {var} {op} {bound!r}: return False")

    def array(self, schema: dict[str, Any], keys: set[str], var: str, indent: int, depth: int) -> None:
        if keys - _ARRAY_KEYWORDS:
            raise Unsupported(f"array keywords {sorted(keys - _ARRAY_KEYWORDS)}")
        self.emit(indent, f"if type({var}) is not list: return False")
        if "minItems" in schema or "maxItems" in schema:
            lo, hi = int(schema.get("minItems", 0)), int(schema.get("maxItems", 1 << 30))
            self.emit(indent, f"if not {lo} <= len({var}) <= {hi}: return False")
        if "items" in schema:
            item = self.var()
            self.emit(indent, f"for {item} in {var}:")
            self.node(schema["items"], item, indent + 1, depth + 1)


def _real_date(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def compile_data_check(schema: dict[str, Any]) -> Check:
    """check(data) -> True only when `data` certainly satisfies `schema` and its currency/timestamp rules;
    raises Unsupported for a schema outside the translated subset."""
    gen = _Gen(schema.get("$defs", {}))
    gen.emit(1, "cur = [None]")
    gen.node(schema, "data", 1)
    gen.emit(1, "return True")
    source = "def check(data):\n" + "\n".join(gen.lines)
    ns: dict[str, Any] = {"_MISSING": object(), "_CURRENCIES": frozenset(CURRENCY_EXPONENTS),
                          "_CANON": CANONICAL_UTC.match, "_real_date": _real_date, "_plain_number": _plain_number,
                          **gen.consts}
    exec(compile(source, f"<quick check of {schema.get('$id', 'data')}>", "exec"), ns)
    check: Check = ns["check"]
    return check


def quick_validator(types: Sequence[str], data_schema: Callable[[str], dict[str, Any]],
                    envelope_surely_valid: Callable[[dict[str, Any]], bool],
                    full: Callable[[Any], Sequence[E]]) -> Callable[[Any], Sequence[E]]:
    """A validator with the same answers as `full`: () at once for an event the generated checks certainly
    pass, `full(event)` for any other."""
    checks: dict[str, Check] = {}
    for etype in types:
        if etype in _OWN_RULES:
            continue
        try:
            checks[etype] = compile_data_check(data_schema(etype))
        except Unsupported:
            continue
    canon = CANONICAL_UTC.match

    def run(event: Any) -> Sequence[E]:
        if type(event) is dict and envelope_surely_valid(event):
            check = checks.get(event["type"])
            data, etime = event["data"], event["time"]
            if (check is not None and "merchant_id" not in data and "merchantId" not in data
                    and len(etime) == 20 and canon(etime) and _real_date(etime) and check(data)):
                return ()
        return full(event)

    run.checks = checks  # type: ignore[attr-defined]
    return run
