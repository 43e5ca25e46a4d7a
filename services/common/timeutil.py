"""Event-time helpers: RFC 3339 parsing and formatting, always UTC (stdlib only)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?\Z"
)


class TimeError(ValueError):
    pass


def parse_rfc3339(value: str, naive_zone: tzinfo | None = None) -> datetime:
    """Parse an RFC 3339 timestamp to an aware UTC datetime.

    A timestamp without offset is an error unless `naive_zone` says which zone it is in.
    """
    if not isinstance(value, str):
        raise TimeError("timestamp must be a string")
    m = _RFC3339.match(value)
    if not m:
        raise TimeError(f"not an RFC 3339 timestamp: {value[:64]!r}")
    frac = (m.group(7) or "")[1:7].ljust(6, "0") if m.group(7) else "0"
    try:
        dt = datetime(
            int(m.group(1)), int(m.group(2)), int(m.group(3)),
            int(m.group(4)), int(m.group(5)), int(m.group(6)), int(frac),
        )
    except ValueError as exc:
        raise TimeError(f"invalid date/time {value[:64]!r}: {exc}") from None
    off = m.group(8)
    if off is None:
        if naive_zone is None:
            raise TimeError(f"timestamp {value[:64]!r} has no UTC offset")
        return dt.replace(tzinfo=naive_zone).astimezone(UTC)
    if off in ("Z", "z"):
        return dt.replace(tzinfo=UTC)
    sign = 1 if off[0] == "+" else -1
    hh, mm = int(off[1:3]), int(off[4:6])
    if hh > 23 or mm > 59:
        raise TimeError(f"invalid UTC offset in {value[:64]!r}")
    return (dt - sign * timedelta(hours=hh, minutes=mm)).replace(tzinfo=UTC)


def format_rfc3339(dt: datetime) -> str:
    """Format as RFC 3339 UTC with a Z suffix (milliseconds kept when present)."""
    if dt.tzinfo is None:
        raise TimeError("refusing to format a naive datetime")
    dt = dt.astimezone(UTC)
    if dt.microsecond:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_now() -> datetime:
    return datetime.now(UTC)


def epoch_day(dt: datetime) -> int:
    """Days since 1970-01-01 (UTC) for daily buckets."""
    return int(dt.astimezone(UTC).timestamp() // 86400)
