"""Fast JSON for the hot path (orjson), with a stdlib parse for what orjson cannot read exactly.

What a marketplace sends is parsed by orjson. The stdlib parser takes over, for that document only,
when orjson would not give the exact values or cannot say which event is wrong:

- an integer of 20 or more digits (orjson reads it as a float: 10**20 + 1 would become 1e20, and two
  different events would hash alike);
- a number no 64-bit float holds (`1e400`, a 5000-digit integer): that event is rejected, not the batch;
- a lone surrogate escape (`"\\ud800"`): that event is rejected, not the batch;
- an object with the same key twice (orjson silently keeps the last one; other parsers keep the first,
  so the event would mean different things to different readers): that event is rejected.

Duplicate keys are found without a second parse: every member of an object has exactly one `:` outside
strings and orjson writes every `:` inside a string as is, so a document whose parsed value, re-encoded,
holds fewer colons than its bytes lost a member. (An escaped colon, `\\u003a`, would break that count:
any document holding one takes the stdlib parse.) A UTF-8 byte order mark before a document is ignored
(RFC 8259 section 8.1 allows it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import orjson

from services.ingest.domain.model import Malformed

_SORT = orjson.OPT_SORT_KEYS
BOM = b"\xef\xbb\xbf"
_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_TWENTY_ZEROS = b"0" * 20
# A number token of 20+ digits (it follows `[`, `:` or `,` and whitespace, or starts the document).
_LONG_INTEGER = re.compile(rb"(?:^|[\[:,])[ \t\r\n]*-?[0-9]{20}")
_MAX_CLEAN_DEPTH = 64


def encode_canonical(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj, option=_SORT)
    except TypeError:  # integers beyond 64 bits
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(body: bytes | str) -> Any:
    """Parse JSON; raises ValueError with a readable message."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(str(exc)) from None


# --- the exact (stdlib) parse -----------------------------------------------------------------------


class _OutOfRange:
    """A number literal no 64-bit float (or Python int) holds."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


class _DuplicateKeys(dict[str, Any]):
    """An object that named a key more than once (the value is the last one, as orjson gives)."""

    __slots__ = ("keys_twice",)
    keys_twice: list[str]


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    twice = [k for k, _ in pairs if k in seen or seen.add(k)]  # type: ignore[func-returns-value]
    out = _DuplicateKeys(obj)
    out.keys_twice = twice
    return out


def _float(text: str) -> Any:
    value = float(text)
    return value if value - value == 0 else _OutOfRange(text)  # inf - inf is nan


def _int(text: str) -> Any:
    try:
        return int(text)
    except ValueError:  # beyond Python's integer string conversion limit (4300 digits)
        return _OutOfRange(text)


def _exact(data: bytes) -> Any:
    """The stdlib's values, with the markers above; raises ValueError when the document is not JSON."""
    try:
        return json.loads(data, object_pairs_hook=_pairs, parse_float=_float, parse_int=_int,
                          parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _needs_exact(data: bytes, doc: Any) -> bool:
    """True when orjson's value of `data` may differ from the document (see the module docstring)."""
    if _TWENTY_ZEROS in data.translate(_DIGITS_TO_ZERO) and _LONG_INTEGER.search(data):
        return True
    if b"\\" in data and (b"\\u003a" in data or b"\\u003A" in data):
        return True
    try:
        encoded = orjson.dumps(doc)
    except TypeError:  # deeper than orjson writes
        return True
    return encoded.count(b":") != data.count(b":")


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _problem(doc: Any) -> tuple[str, str] | None:
    """(JSON pointer, message) of the first thing in `doc` no event may hold, in document order."""
    stack: list[tuple[Any, str]] = [(doc, "")]
    while stack:
        node, ptr = stack.pop()
        if isinstance(node, _OutOfRange):
            text = node.text if len(node.text) <= 40 else node.text[:37] + "..."
            return ptr, f"number {text} is out of range (at most a 64-bit float)"
        if isinstance(node, str):
            if _has_surrogate(node):
                return ptr, "string holds a lone surrogate escape (not valid Unicode)"
        elif isinstance(node, _DuplicateKeys):
            return ptr, f"duplicate key {node.keys_twice[0][:64]!r} in one object"
        elif isinstance(node, dict):
            for key in node:
                if _has_surrogate(key):
                    return ptr, "key holds a lone surrogate escape (not valid Unicode)"
            stack.extend((v, f"{ptr}/{_escape(k)}") for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((v, f"{ptr}/{i}") for i, v in reversed(list(enumerate(node))))
    return None


def _clean(node: Any, depth: int = 0) -> Any:
    """Plain JSON values (markers and lone surrogates made text) for the dead letter."""
    if isinstance(node, _OutOfRange):
        return node.text[:64]
    if isinstance(node, str):
        return node.encode("utf-8", "replace").decode("utf-8") if _has_surrogate(node) else node
    if isinstance(node, dict | list) and depth >= _MAX_CLEAN_DEPTH:
        return "[too deeply nested]"
    if isinstance(node, dict):
        return {_clean(k): _clean(v, depth + 1) for k, v in node.items()}
    if isinstance(node, list):
        return [_clean(v, depth + 1) for v in node]
    return node


def _item(value: Any) -> Any:
    """An exactly parsed event, or a Malformed item saying what in it no event may hold."""
    found = _problem(value)
    if found is None:
        return value
    return Malformed("", found[1], found[0], _clean(value))


def _document(data: bytes) -> Any:
    """One event document (an NDJSON line, a Kafka record value): its value, or a Malformed item."""
    if data.startswith(BOM):
        data = data[3:]
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        try:
            return _item(_exact(data))
        except ValueError:
            return Malformed(data.decode("utf-8", errors="replace"), str(exc))
    if not _needs_exact(data, doc):
        return doc
    try:
        return _item(_exact(data))
    except ValueError as exc:  # orjson took it, the stdlib did not (not expected): say so, alone
        return Malformed(data.decode("utf-8", errors="replace"), str(exc))


def parse_array(body: bytes) -> Any:
    """The document of a body meant to be a JSON array of events (the caller checks it is a list); raises
    ValueError (with a readable message) when it is not JSON. Elements no event may be (duplicate keys,
    numbers out of range, lone surrogates) become Malformed items."""
    if body.startswith(BOM):
        body = body[3:]
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            doc = _exact(body)
        except ValueError:
            raise ValueError(str(exc)) from None
        return [_item(v) for v in doc] if isinstance(doc, list) else doc
    if isinstance(doc, list) and _needs_exact(body, doc):
        exact = _exact(body)
        return [_item(v) for v in exact] if isinstance(exact, list) else exact
    return doc


def _parse_many(docs: list[bytes], whole: bytes | None = None) -> list[Any]:
    """Each of `docs` parsed on its own (`whole`: their bytes together, when the caller has them)."""
    out: list[Any] = []
    clean = True
    for data in docs:
        try:
            out.append(orjson.loads(data))
        except orjson.JSONDecodeError:
            out.append(None)
            clean = False
    # The checks of _needs_exact once for them all; one document at a time only when they fail.
    if clean and not _needs_exact(b"\n".join(docs) if whole is None else whole, out):
        return out
    return [_document(data) for data in docs]


def parse_ndjson(body: bytes) -> list[Any]:
    """One event per non-blank line; a line that is not JSON becomes a Malformed item (rejected alone)."""
    lines: list[bytes] = []
    for line in body.split(b"\n"):
        if line.startswith(BOM):
            line = line[3:]
        if line.strip():
            lines.append(line)
    return _parse_many(lines, body)


def parse_records(values: Sequence[bytes | None]) -> list[Any]:
    """Kafka record values: each one event; undecodable values become Malformed."""
    present = [v[3:] if v.startswith(BOM) else v for v in values if v is not None]
    parsed = iter(_parse_many(present))
    return [Malformed("", "empty record value (tombstone)") if v is None else next(parsed) for v in values]
