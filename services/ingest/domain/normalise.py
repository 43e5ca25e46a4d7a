"""Turn one raw marketplace event into a canonical event, or a rejection listing every problem.

Money becomes integer minor units, timestamps become UTC, buyer ids become a keyed hash;
then the canonical event is checked by the injected schema validator. Pure: the caller
passes the receipt time, the validator and the encoder.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from services.common.money import CURRENCY_EXPONENTS, MAX_AMOUNT, Money, MoneyError
from services.common.timeutil import TimeError, format_rfc3339, parse_rfc3339
from services.ingest.domain.model import Issue, Malformed, NormalisedEvent, Reason, Rejection

# A validator lists (pointer, message) or (pointer, message, kind) per error; kind "money" or "time" gives the
# rejection that reason (a mixed-currency event is a money problem even when the schema check finds it).
Validator = Callable[[dict[str, Any]], Sequence[tuple[str, ...]]]
Encoder = Callable[[Any], bytes]

BUYER_PREFIX = "bh_"
_DECIMAL = re.compile(r"-?[0-9]{1,20}(\.[0-9]{1,20})?\Z")  # \Z: "$" would let a trailing newline through
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}\Z")
_BUYER_ID = re.compile(r"[\x21-\x7e]{1,128}\Z")  # the schemas' Id: what a buyer id must be before it is hashed
# Lines that were not JSON may still hold a buyer id; blank its value before keeping the text.
# A member name in text that is not JSON (its escapes decoded before it is judged), and the value after it:
# a string (to the end of the text when unterminated), an object or array (the rest of the text), or a bare token.


def canonical_json(obj: Any) -> bytes:
    """Stdlib encoder with sorted keys (adapters pass a faster equivalent)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _no_validation(event: dict[str, Any]) -> Sequence[tuple[str, ...]]:
    return ()


@dataclass(frozen=True, slots=True)
class NormaliseContext:
    buyer_hash_key: bytes
    naive_zone: tzinfo | None = None
    max_future_skew: timedelta | None = timedelta(seconds=300)  # None: no future check (replays)
    min_time: datetime = datetime(2000, 1, 1, tzinfo=UTC)
    max_event_bytes: int = 256 * 1024
    validator: Validator = field(default=_no_validation)
    encode: Encoder = field(default=canonical_json)
    # The types a marketplace may send; empty = no restriction. Floatbridge's own events (limits, offers,
    # loans, collections) must never enter through the marketplace's door.
    accepted_types: frozenset[str] = frozenset()

    # HMAC-SHA256 with the key's inner and outer pads hashed once (RFC 2104); each buyer id then costs
    # two copies of a SHA-256 state instead of a new HMAC object. Same digest as hmac.new(key, id, sha256).
    _pads: tuple[Any, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = self.buyer_hash_key
        if len(key) > 64:  # SHA-256's block size
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\0")
        inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
        object.__setattr__(self, "_pads", (inner, outer))

    def hash_buyer(self, buyer_id: str) -> str:
        inner, outer = self._pads[0].copy(), self._pads[1].copy()
        inner.update(buyer_id.encode("utf-8"))
        outer.update(inner.digest())
        digest: str = outer.hexdigest()
        return BUYER_PREFIX + digest


_ENVELOPE_KEYS = frozenset(("specversion", "id", "source", "type", "time", "subject", "dataschema",
                            "datacontenttype", "data"))
MAX_DATA_DEPTH = 32  # `data` nested deeper (hostile input) is rejected; the schemas need 4 levels


def _buyerish(key: str) -> bool:
    """A member about the buyer other than buyer_id (buyer_email, buyerName, Buyer...): hashed like buyer_id."""
    return key[:5].lower() == "buyer" and key != "buyer_id"


def hash_buyer_values(val: Any, ctx: NormaliseContext, depth: int = 0) -> Any:
    """`val` with every string and number in it replaced by its keyed hash (structure, booleans and null kept)."""
    if isinstance(val, str):
        return ctx.hash_buyer(val)
    if isinstance(val, int | float) and not isinstance(val, bool):
        return ctx.hash_buyer(repr(val))
    if isinstance(val, dict | list) and depth >= MAX_RAW_DEPTH:
        return "[too deeply nested]"
    if isinstance(val, dict):
        return {k: hash_buyer_values(v, ctx, depth + 1) for k, v in val.items()}
    if isinstance(val, list):
        return [hash_buyer_values(v, ctx, depth + 1) for v in val]
    return val


def valid_id(value: Any) -> str | None:
    return value if isinstance(value, str) and _ID.match(value) else None


class _Walker:
    """Collects issues by category while building the canonical copy of `data`."""

    __slots__ = ("covered", "ctx", "issues")

    def __init__(self, ctx: NormaliseContext):
        self.ctx = ctx
        # Issues by reason, a list created on the first issue of that reason (most events have none).
        self.issues: dict[Reason, list[Issue]] = {}
        # Schema errors (pointer, message) that only repeat an issue already listed (a Money whose value failed).
        self.covered: set[tuple[str, str]] = set()

    def add(self, reason: Reason, pointer: str, message: str) -> None:
        found = self.issues.get(reason)
        if found is None:
            found = self.issues[reason] = []
        found.append(Issue(pointer, message))

    def value(self, obj: Any, ptr: str, depth: int = 1) -> Any:
        if depth > MAX_DATA_DEPTH and isinstance(obj, dict | list):
            # Hostile nesting: refused here, before any recursion can exhaust the stack.
            self.add(Reason.SCHEMA, ptr, f"data is nested more than {MAX_DATA_DEPTH} levels deep")
            return None
        if isinstance(obj, dict):
            if "currency" in obj and ("amount" in obj or "value" in obj):
                return self.money(obj, ptr)
            out = {}
            for k, v in obj.items():
                # A plain scalar member is copied as is; only members that may be rewritten or hold
                # nested values get their JSON pointer built (it is needed only to report issues).
                if k == "buyer_id" and type(v) is str and _BUYER_ID.match(v):  # the common case: no pointer needed
                    out[k] = self.ctx.hash_buyer(v)
                elif (k == "buyer_id" or isinstance(v, dict | list) or (isinstance(v, str) and k.endswith("_at"))
                      or (k[:1] in "bB" and _buyerish(k))):
                    out[k] = self.member(k, v, f"{ptr}/{_escape(k)}", depth + 1)
                else:
                    out[k] = v
            return out
        if isinstance(obj, list):
            return [self.value(v, f"{ptr}/{i}", depth + 1) for i, v in enumerate(obj)]
        return obj

    def member(self, key: str, val: Any, ptr: str, depth: int = 1) -> Any:
        if key == "buyer_id":
            if isinstance(val, str):
                if not _BUYER_ID.match(val):  # checked here: after hashing, any string would pass the schema
                    self.add(Reason.SCHEMA, ptr, f"buyer_id of {len(val)} characters is not an identifier: "
                             "1-128 printable ASCII characters, no spaces or control characters")
                return self.ctx.hash_buyer(val)
            self.add(Reason.SCHEMA, ptr, f"buyer_id must be a string, got {_json_type(val)}")
            return self.ctx.hash_buyer(repr(val))  # never keep the raw value, even in errors
        if key[:1] in "bB" and _buyerish(key) and not (isinstance(val, dict) and "currency" in val):
            return hash_buyer_values(val, self.ctx)  # an extra member about the buyer (buyer_email...): hashed too
        if key.endswith("_at") and isinstance(val, str):
            return self.timestamp(val, ptr, bounded=False)
        return self.value(val, ptr, depth)

    def timestamp(self, val: str, ptr: str, bounded: bool, now: datetime | None = None) -> str:
        dt = _canonical_utc(val)
        if dt is not None:  # already "YYYY-MM-DDTHH:MM:SSZ": format_rfc3339 would give `val` back
            if bounded and now is not None:
                self.bounds(dt, ptr, now)
            return val
        if not val.isascii():  # RFC 3339 digits are ASCII; the parser's \\d would also take "２０２４"
            self.add(Reason.TIME, ptr, f"not an RFC 3339 timestamp (only ASCII digits and separators): {val[:64]!r}")
            return val
        try:
            dt = parse_rfc3339(val, self.ctx.naive_zone)
        except OverflowError:  # "0001-01-01T00:00:00+01:00": before year 1 in UTC
            self.add(Reason.TIME, ptr, f"timestamp {val[:64]!r} is outside years 1-9999 once converted to UTC")
            return val
        except TimeError as exc:
            leap = _leap_second(val, self.ctx.naive_zone)
            if leap is None:
                hint = " (naive timestamps need FLOATBRIDGE_INGEST_NAIVE_TIMEZONE)" if "no UTC offset" in str(exc) else ""
                self.add(Reason.TIME, ptr, f"{exc}{hint}")
                return val
            dt = leap
        if bounded and now is not None:
            self.bounds(dt, ptr, now)
        return _format_utc(dt)

    def bounds(self, dt: datetime, ptr: str, now: datetime) -> None:
        skew = self.ctx.max_future_skew
        if skew is not None and dt > now + skew:
            ahead = (dt - now).total_seconds()  # "300 s" for 300.5 s would read as within the limit
            self.add(Reason.TIME, ptr, f"time is {ahead:.3f}".rstrip("0").rstrip(".") + " s in the future "
                     f"(more than the allowed {int(skew.total_seconds())} s)")
        if dt < self.ctx.min_time:
            self.add(Reason.TIME, ptr, f"time is before {format_rfc3339(self.ctx.min_time)}")

    def money(self, obj: dict[str, Any], ptr: str) -> dict[str, Any]:
        out = dict(obj)
        if "value" in out:
            del out["value"]
        cur = obj["currency"]
        if not isinstance(cur, str) or cur not in CURRENCY_EXPONENTS:
            self.add(Reason.MONEY, ptr + "/currency", f"unknown ISO 4217 currency {str(cur)[:8]!r}")
            cur = None
        if "amount" in obj and "value" in obj:
            self.add(Reason.MONEY, ptr, "give either amount (integer minor units) or value (decimal string), not both")
            return out
        if "amount" in obj:
            self.amount(obj["amount"], ptr + "/amount")
            return out
        amount = self.major(obj["value"], cur, ptr + "/value")
        if amount is not None:
            out["amount"] = amount
        else:  # the schema would add "'amount' is a required property": the value's issue says why
            self.covered.add((ptr, "'amount' is a required property"))
        return out

    def amount(self, amount: Any, ptr: str) -> None:
        if type(amount) is int:
            if amount < 0:
                self.add(Reason.MONEY, ptr, f"amount must not be negative, got {amount}")
            elif amount > MAX_AMOUNT:
                self.add(Reason.MONEY, ptr, f"amount {amount} exceeds the maximum {MAX_AMOUNT} minor units")
        elif type(amount) is float:
            if amount != amount or abs(amount) > MAX_AMOUNT:  # NaN, or an integer too big for 64 bits
                self.add(Reason.MONEY, ptr, f"amount exceeds the maximum {MAX_AMOUNT} minor units")
            else:
                self.add(Reason.MONEY, ptr, f"amount must be an integer number of minor units, not a number "
                         f"with a fraction or exponent ({amount!r}); send value as a decimal string instead")
        else:
            self.add(Reason.MONEY, ptr, f"amount must be an integer number of minor units, got {_json_type(amount)}")

    def major(self, value: Any, cur: str | None, ptr: str) -> int | None:
        if not isinstance(value, str) or not _DECIMAL.match(value):
            self.add(Reason.MONEY, ptr, 'value must be a decimal string of major units such as "12.34"')
            return None
        if value.startswith("-"):
            self.add(Reason.MONEY, ptr, f"amount must not be negative, got {value}")
            return None
        if cur is None:
            return None
        try:
            return Money.from_major(value, cur).amount
        except MoneyError as exc:
            self.add(Reason.MONEY, ptr, str(exc))
            return None


_CANONICAL_UTC = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z\Z")


_LEAP = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:)60")


def _leap_second(val: str, zone: tzinfo | None) -> datetime | None:
    """RFC 3339 allows a leap second, 23:59:60 UTC on the last day of a month (5.7: a leap second is added or
    removed only at the end of a UTC month): read as 23:59:59 (the same second for every feature); None when
    `val` is not one (a :60 that is not 23:59 UTC, or not on a month's last day, stays an error)."""
    m = _LEAP.match(val)
    if m is None:
        return None
    try:
        dt = parse_rfc3339(m.group(1) + "59" + val[m.end():], zone)
    except (TimeError, OverflowError):
        return None
    if (dt.hour, dt.minute, dt.second) != (23, 59, 59):
        return None
    utc = dt.astimezone(UTC)
    last_day = utc.month == 12 and utc.day == 31 or (utc + timedelta(days=1)).day == 1
    return dt if last_day else None


def _json_media_type(value: Any) -> bool:
    """True for `application/json` in any case, with optional spaces and a UTF-8 charset parameter (RFC 8259:
    JSON is UTF-8): the CloudEvents datacontenttype some SDKs write. Anything else stays for the schema to refuse."""
    if not isinstance(value, str) or len(value) > 64:
        return False
    media, _, params = value.partition(";")
    if media.strip().lower() != "application/json":
        return False
    if not params.strip():
        return True
    name, _, charset = params.partition("=")
    return name.strip().lower() == "charset" and charset.strip().strip('"').lower() in ("utf-8", "utf8")


def _format_utc(dt: datetime) -> str:
    """format_rfc3339 with a four-digit year: strftime writes year 999 as "999", which is no RFC 3339 timestamp
    (a valid "0999-05-01T10:00:00Z" would come out as one the sender never sent, and be refused)."""
    text = format_rfc3339(dt)
    year = text.split("-", 1)[0]
    return text if len(year) == 4 else year.zfill(4) + text[len(year):]


def _canonical_utc(val: str) -> datetime | None:
    """The instant of a timestamp already in the canonical form (whole seconds, `Z`, year >= 1000);
    None for anything else, which takes the general parser (and its error messages)."""
    if len(val) != 20 or not _CANONICAL_UTC.match(val) or val[0] == "0":
        return None
    try:  # exactly that shape, so the C parser reads it as the UTC instant (and checks the calendar)
        return datetime.fromisoformat(val)
    except ValueError:
        return None


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _json_type(val: Any) -> str:
    return {bool: "a boolean", str: "a string", dict: "an object", list: "an array", type(None): "null",
            int: "an integer", float: "a number"}.get(type(val), type(val).__name__)


def _covered(pointer: str, known: set[str]) -> bool:
    return any(pointer == p or pointer.startswith(p + "/") for p in known)


def normalise(raw: Any, ctx: NormaliseContext, now: datetime) -> NormalisedEvent | Rejection:
    """Normalise one raw event received at `now` (the only use of receipt time: the future-skew check)."""
    if isinstance(raw, Malformed):
        return Rejection(Reason.MALFORMED, (Issue(raw.pointer, f"malformed JSON: {raw.error}"),),
                         *(_ident(raw.doc) if isinstance(raw.doc, dict) else ()))
    if not isinstance(raw, dict):
        return Rejection(Reason.SCHEMA, (Issue("", f"event must be a JSON object, got {_json_type(raw)}"),))
    try:
        size = len(ctx.encode(raw))
    except RecursionError:
        return Rejection(Reason.SCHEMA, (Issue("", "event is nested too deeply"),), *_ident(raw))
    if size > ctx.max_event_bytes:
        issue = Issue("", f"event is {size} bytes, more than the limit of {ctx.max_event_bytes} bytes")
        return Rejection(Reason.SIZE, (issue,), *_ident(raw))
    walker = _Walker(ctx)
    event = dict(raw)
    if not _ENVELOPE_KEYS.issuperset(event):  # extension attributes: one about the buyer is hashed too
        for key in [k for k in event if _buyerish(k) or k == "buyer_id"]:
            event[key] = hash_buyer_values(event[key], ctx)
    ctype = raw.get("datacontenttype")
    if ctype is not None and ctype != "application/json" and _json_media_type(ctype):
        event["datacontenttype"] = "application/json"  # "application/json; charset=utf-8" means just that
    etime = raw.get("time")
    if isinstance(etime, str):
        event["time"] = walker.timestamp(etime, "/time", bounded=True, now=now)
    data = raw.get("data")
    if isinstance(data, dict):
        event["data"] = walker.value(data, "/data")
    etype = raw.get("type")
    if ctx.accepted_types and isinstance(etype, str) and etype not in ctx.accepted_types:
        walker.add(Reason.SCHEMA, "/type", f"{etype[:64]!r} is not an event type a marketplace may send "
                   f"(one of: {', '.join(sorted(ctx.accepted_types))})")
    found = ctx.validator(event)
    by_reason = walker.issues
    if not found and not by_reason:
        payload = ctx.encode(event)
        return NormalisedEvent(event["id"], event["type"], event["subject"], event, payload,
                               hashlib.sha256(payload).hexdigest())
    own = [i for reason in (Reason.MONEY, Reason.TIME, Reason.SCHEMA) for i in by_reason.get(reason, ())]
    known = {i.pointer for i in own}
    kinds = {f[2] for f in found if len(f) > 2}
    schema = [Issue(f[0], f[1]) for f in found if not _covered(f[0], known) and (f[0], f[1]) not in walker.covered]
    reason = next((r for r in (Reason.MONEY, Reason.TIME) if by_reason.get(r) or r.value in kinds), Reason.SCHEMA)
    return Rejection(reason, tuple(own + schema), *_ident(raw))


def _ident(raw: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """What a rejection can still say about the event: a well-formed id, its type, its merchant."""
    etype = raw.get("type")
    return valid_id(raw.get("id")), etype if isinstance(etype, str) else None, valid_id(raw.get("subject"))


MAX_RAW_DEPTH = 64  # deeper JSON (hostile input) is cut off in the dead letter instead of overflowing the stack


def redact_raw(raw: Any, ctx: NormaliseContext, depth: int = 0) -> Any:
    """A copy of a raw event with every buyer_id replaced by its keyed hash (for the dead letter)."""
    if isinstance(raw, dict | list) and depth >= MAX_RAW_DEPTH:
        return "[too deeply nested]"
    if isinstance(raw, dict):
        return {k: (_redact_buyer(v, ctx) if k == "buyer_id" else hash_buyer_values(v, ctx, depth + 1)
                    if _buyerish(k) else redact_raw(v, ctx, depth + 1))
                for k, v in raw.items()}
    if isinstance(raw, list):
        return [redact_raw(v, ctx, depth + 1) for v in raw]
    return raw


def _redact_buyer(val: Any, ctx: NormaliseContext) -> str:
    return ctx.hash_buyer(val) if isinstance(val, str) else "[redacted]"


