"""Days past due by event time, delinquency buckets and the charge-off threshold."""

from __future__ import annotations

from datetime import datetime

from services.common.timeutil import epoch_day

BUCKETS: tuple[tuple[int, int, str], ...] = ((1, 7, "1-7"), (8, 30, "8-30"), (31, 60, "31-60"))


def days_past_due(due_at: datetime, now: datetime) -> int:
    """Whole calendar days (UTC) after the due date; 0 on or before it."""
    return max(0, epoch_day(now) - epoch_day(due_at))


def bucket(dpd: int) -> str | None:
    for low, high, name in BUCKETS:
        if low <= dpd <= high:
            return name
    return BUCKETS[-1][2] if dpd > BUCKETS[-1][1] else None


def should_charge_off(dpd: int, charge_off_dpd: int = 60) -> bool:
    return dpd >= charge_off_dpd
