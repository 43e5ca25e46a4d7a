"""Fast JSON for the hot path (orjson), with stdlib fallbacks for what orjson refuses."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson

from services.ingest.domain.model import Malformed

_SORT = orjson.OPT_SORT_KEYS


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


def parse_ndjson(body: bytes) -> list[Any]:
    """One event per non-blank line; a line that is not JSON becomes a Malformed item (rejected alone)."""
    out: list[Any] = []
    for line in body.split(b"\n"):
        if not line.strip():
            continue
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            out.append(Malformed(line.decode("utf-8", errors="replace"), str(exc)))
    return out


def parse_records(values: Sequence[bytes | None]) -> list[Any]:
    """Kafka record values: each one event; undecodable values become Malformed."""
    out: list[Any] = []
    for value in values:
        if value is None:
            out.append(Malformed("", "empty record value (tombstone)"))
            continue
        try:
            out.append(orjson.loads(value))
        except orjson.JSONDecodeError as exc:
            out.append(Malformed(value.decode("utf-8", errors="replace"), str(exc)))
    return out
