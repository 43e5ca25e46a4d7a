"""The marketplace contract, checked where a record is consumed from marketplace.events.v1.

DESIGN lets a marketplace produce straight to marketplace.events.v1, past ingest. Its consumers (the underwriter
worker, the disbursement consumer) check such a record against the same contract ingest checks before their core
sees it: the JSON Schemas and the semantic invariants (codec.validate: integer non-negative bounded amounts, one
currency per event, net = gross - fees - withheld, RFC 3339 times with an offset, ids within their limits), plus
what ingest adds on the way in: only a type a marketplace may send, the event no bigger than ingest's limit,
`time` in UTC (ingest writes every time in UTC; nothing converts here), not more than a skew ahead of the clock
and not before the earliest event time, and the `subject` equal to the Kafka key (the merchant whose partition
orders its events). Ingest's normalisation is not repeated: no currency conversion, no buyer hashing (a raw buyer
id is an identifier the schemas accept; see README "Dead letters").

Error messages never hold the value of a member about a buyer (they are logged and kept in the dead letter).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from schemas.codec import MARKETPLACE_TYPES, FieldError, _envelope_surely_valid, data_schema, validate
from services.common.timeutil import TimeError, parse_rfc3339

_MARKETPLACE = frozenset(MARKETPLACE_TYPES)
_WITHHELD = "invalid value (not shown: it is about a buyer)"
UNCHECKED: Any = object()  # `key` not given: the Kafka key is not compared (None is a record without a key)


# The contract's limits: ingest's defaults (FLOATBRIDGE_INGEST_MAX_FUTURE_SKEW_SECONDS, MIN_EVENT_TIME,
# MAX_EVENT_BYTES) and the consumers' checks of marketplace.events.v1 both start from these.
MAX_FUTURE_SKEW_SECONDS = 300
MIN_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
MAX_EVENT_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Contract:
    """The limits ingest applies, as the consumers of marketplace.events.v1 check them."""

    max_future_skew_seconds: float | None = float(MAX_FUTURE_SKEW_SECONDS)  # None: no future check (old traffic)
    min_time: datetime = MIN_EVENT_TIME
    max_event_bytes: int = MAX_EVENT_BYTES
    min_year: str = field(init=False, repr=False, compare=False)  # min_time's year, as a time string starts

    def __post_init__(self) -> None:
        object.__setattr__(self, "min_year", f"{self.min_time.astimezone(UTC).year:04d}")


DEFAULT = Contract()


def marketplace_errors(event: Any, *, key: bytes | str | None = UNCHECKED, size: int | None = None,
                       now: float | None = None, contract: Contract = DEFAULT) -> list[FieldError]:
    """Every way `event` (decoded from a record of marketplace.events.v1) breaks the marketplace contract.

    `key`: the record's Kafka key (None: the record has none; UNCHECKED: not compared); `size`: its value's length in bytes; `now`: the wall
    clock (epoch seconds) for the future check (None: not checked). Empty for a valid event."""
    if size is not None and size > contract.max_event_bytes:
        return [FieldError("", f"event is {size} bytes, more than the limit of {contract.max_event_bytes} bytes")]
    errors = list(_validate(event))
    if type(event) is not dict:
        return errors
    etype, subject, etime = event.get("type"), event.get("subject"), event.get("time")
    if type(etype) is str and etype not in _MARKETPLACE:
        errors.append(FieldError("/type", f"{etype[:64]!r} is not an event type a marketplace may send "
                                          f"(one of: {', '.join(sorted(_MARKETPLACE))})"))
    if key is None:
        errors.append(FieldError("", "the record has no Kafka key: the key must be the merchant id (the subject)"))
    elif key is not UNCHECKED:
        text = key.decode("utf-8", errors="replace") if type(key) is bytes else str(key)
        if text != subject and type(subject) is str:
            errors.append(FieldError("/subject", f"subject {subject[:64]!r} differs from the Kafka key {text[:64]!r}: "
                                                 "the key must be the merchant id"))
    if type(etime) is str and (not errors or all(e.pointer != "/time" for e in errors)):
        problem = _time_problem(etime, now, contract)
        if problem:
            errors.append(FieldError("/time", problem, "time"))
    if errors:
        errors = [_withheld(e) for e in errors]
    return errors


_quick: Callable[[Any], Sequence[FieldError]] | None = None


def _validate(event: Any) -> Sequence[FieldError]:
    """codec.validate with the quick yes of schemas.fastcheck first (built on first use: nothing is compiled at
    import time); any doubt runs codec.validate, so every error is exactly the codec's."""
    global _quick
    quick = _quick
    if quick is None:
        from schemas.fastcheck import quick_validator

        quick = _quick = quick_validator(MARKETPLACE_TYPES, data_schema, _envelope_surely_valid, validate)
    return quick(event)


def _time_problem(value: str, now: float | None, contract: Contract) -> str | None:
    if len(value) == 20 and value[19] == "Z":  # the canonical shape: codec.validate already checked the calendar
        if now is None and value[:4] > contract.min_year:  # no future check, a later year than min_time's: done
            return None
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        try:
            at = parse_rfc3339(value)
        except (TimeError, OverflowError):
            return None  # codec.validate says what is wrong
        if not (value.endswith(("Z", "z", "+00:00"))):
            return (f"time {value[:40]!r} is not in UTC: events on this topic carry UTC times "
                    "(ingest converts; a producer writing straight to the topic must send Z)")
    if now is not None and contract.max_future_skew_seconds is not None:
        ahead = at.timestamp() - now
        if ahead > contract.max_future_skew_seconds:
            return (f"time is {ahead:.3f}".rstrip("0").rstrip(".") + " s in the future "
                    f"(more than the allowed {contract.max_future_skew_seconds:g} s)")
    if at < contract.min_time:
        return f"time is before {contract.min_time.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    return None


def _withheld(error: FieldError) -> FieldError:
    last = error.pointer.rsplit("/", 1)[-1]
    if last[:5].lower() == "buyer":
        return FieldError(error.pointer, _WITHHELD, error.kind)
    return error


def reason(errors: list[FieldError]) -> str:
    """The rejection reason ingest would give: money, time, else schema."""
    kinds = {e.kind for e in errors}
    return next((r for r in ("money", "time") if r in kinds), "schema")


__all__ = ["DEFAULT", "MAX_EVENT_BYTES", "MAX_FUTURE_SKEW_SECONDS", "MIN_EVENT_TIME", "Contract", "marketplace_errors",
           "reason"]
