"""Event time: RFC 3339 in, aware UTC out; naive times only with an explicit zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from services.common.timeutil import TimeError, epoch_day, format_rfc3339, parse_rfc3339

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-05-14T13:05:27Z", datetime(2024, 5, 14, 13, 5, 27, tzinfo=UTC)),
    ("2024-05-14t13:05:27z", datetime(2024, 5, 14, 13, 5, 27, tzinfo=UTC)),
    ("2024-05-14T10:05:27-03:00", datetime(2024, 5, 14, 13, 5, 27, tzinfo=UTC)),
    ("2024-05-15T00:30:00+09:00", datetime(2024, 5, 14, 15, 30, tzinfo=UTC)),
    ("2024-12-31T23:30:00-01:00", datetime(2025, 1, 1, 0, 30, tzinfo=UTC)),
    ("2024-05-14 13:05:27.123456789+00:00", datetime(2024, 5, 14, 13, 5, 27, 123456, tzinfo=UTC)),
])
def test_offsets_are_converted_to_utc(text: str, expected: datetime) -> None:
    parsed = parse_rfc3339(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


def test_naive_timestamp_is_rejected_without_a_zone() -> None:
    with pytest.raises(TimeError, match="no UTC offset"):
        parse_rfc3339("2024-05-14T10:05:27")


def test_naive_timestamp_is_read_in_the_given_zone() -> None:
    parsed = parse_rfc3339("2024-05-14 10:05:27", naive_zone=ZoneInfo("America/Sao_Paulo"))
    assert parsed == datetime(2024, 5, 14, 13, 5, 27, tzinfo=UTC)


@pytest.mark.parametrize(("text", "message"), [
    ("2024-02-30T00:00:00Z", "invalid date"), ("2023-02-29T00:00:00Z", "invalid date"),
    ("2024-13-01T00:00:00Z", "invalid date"), ("2024-01-01T24:00:00Z", "invalid date"),
    ("2024-01-01T00:00:00+24:00", "offset"), ("2024-01-01T00:00:00+05:60", "offset"),
    ("14/05/2024 13:05", "not an RFC 3339"), ("1715691927", "not an RFC 3339"), ("", "not an RFC 3339"),
    ("2024-05-14T13:05:27Z\n", "not an RFC 3339"),
])
def test_bad_dates_are_rejected_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(TimeError, match=message):
        parse_rfc3339(text)


def test_non_string_is_rejected() -> None:
    with pytest.raises(TimeError):
        parse_rfc3339(1715691927)  # type: ignore[arg-type]


def test_format_is_utc_with_z_and_milliseconds() -> None:
    local = datetime(2024, 5, 14, 10, 5, 27, 250_999, tzinfo=timezone(timedelta(hours=-3)))
    assert format_rfc3339(local) == "2024-05-14T13:05:27.250Z"
    assert format_rfc3339(datetime(2024, 5, 14, tzinfo=UTC)) == "2024-05-14T00:00:00Z"
    assert parse_rfc3339(format_rfc3339(local)) == local.replace(microsecond=250_000)


def test_formatting_a_naive_datetime_is_refused() -> None:
    with pytest.raises(TimeError):
        format_rfc3339(datetime(2024, 5, 14))


def test_epoch_day_counts_utc_days() -> None:
    assert epoch_day(datetime(1970, 1, 1, 23, 59, tzinfo=UTC)) == 0
    assert epoch_day(datetime(1970, 1, 2, tzinfo=UTC)) == 1
    # 23:30 in Sao Paulo is already the next UTC day
    assert epoch_day(datetime(2024, 5, 14, 23, 30, tzinfo=ZoneInfo("America/Sao_Paulo"))) == \
        epoch_day(datetime(2024, 5, 15, tzinfo=UTC))
