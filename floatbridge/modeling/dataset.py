"""Training rows from an event history, with outcomes joined from the future and no look-ahead.

Events are replayed in time order through the underwriter's own `MerchantState.apply` and
`compute_features` (the code that serves), so training sees exactly what serving sees. At each
decision point (a merchant's weekly payout, when it would be offered an advance) we snapshot the
features *as of that time* and open a hypothetical advance against the merchant's open
receivables. The label is decided later in the same pass, only from events after the snapshot:
the financed orders' settlements repay the advance first and a withhold applies to the other
settlements; the advance defaults when it is not repaid 30 days after its due date.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.common.timeutil import parse_rfc3339
from services.underwriter.domain.features import FEATURE_NAMES, INDEX, compute_features
from services.underwriter.domain.state import (
    F_PAID,
    F_SHIPPED,
    R_AMOUNT,
    R_CLOSED,
    R_FLAGS,
    R_REFUNDED,
    MerchantState,
)

DAY = 86_400


@dataclass(frozen=True)
class LabelPolicy:
    """The hypothetical advance each snapshot is labelled with (mirrors the product defaults)."""

    advance_bps: int = 8_000  # share of open receivables advanced
    withhold_bps: int = 2_000  # share of other settlements withheld while a balance remains
    fee_bps_per_day: int = 5  # 0.05% a day
    term_days: int = 28  # due date: expected settlement of the receivables plus grace
    default_dpd: int = 30  # default = 30+ days past due
    min_tenure_days: float = 30.0
    min_receivables: int = 10_000  # R$100
    snapshot_every_days: float = 6.5


@dataclass(slots=True)
class Snapshot:
    merchant_id: str
    as_of: int
    features: list[float]
    principal: int
    owed: int
    financed: frozenset[str]
    collected: int = 0  # repayment capacity collected by the deadline (uncapped)
    label: int | None = None  # 1 = default; None = censored (deadline after the history ends)


@dataclass
class Dataset:
    snapshots: list[Snapshot] = field(default_factory=list)
    events: int = 0
    first_ts: int = 0
    last_ts: int = 0

    def labelled(self) -> list[Snapshot]:
        return [s for s in self.snapshots if s.label is not None]

    def digest(self) -> str:
        h = hashlib.sha256()
        for s in self.labelled():
            h.update(f"{s.merchant_id}|{s.as_of}|{s.label}|{s.principal}|".encode())
            h.update(repr(s.features).encode())
        return h.hexdigest()


def _open_receivables(state: MerchantState, now: int) -> tuple[int, frozenset[str]]:
    total, ids = 0, []
    for oid, rec in state.receivables.items():
        if rec[R_CLOSED] and rec[R_CLOSED] <= now:
            continue
        if rec[R_FLAGS] & F_PAID and rec[R_FLAGS] & F_SHIPPED:
            value = max(0, rec[R_AMOUNT] - rec[R_REFUNDED])
            if value:
                total += value
                ids.append(oid)
    return total, frozenset(ids)


class DatasetBuilder:
    """Feed events in time order (`add`), then `finish()`; usable on any event iterable."""

    def __init__(self, policy: LabelPolicy | None = None) -> None:
        self.policy = policy or LabelPolicy()
        self.states: dict[str, MerchantState] = {}
        self.data = Dataset()
        self._last_snap: dict[str, int] = {}
        self._open: dict[str, list[Snapshot]] = {}
        self._deadlines: list[tuple[int, int, Snapshot]] = []
        self._n = 0

    def add(self, event: dict[str, Any]) -> None:
        subject = event["subject"]
        state = self.states.get(subject)
        if state is None:
            state = self.states[subject] = MerchantState(subject)
        ts = int(parse_rfc3339(event["time"]).timestamp())
        self._expire(ts)
        state.apply(event)
        d = self.data
        d.events += 1
        d.first_ts = d.first_ts or ts
        d.last_ts = max(d.last_ts, ts)
        if event["type"] == "settlement.paid":
            self._collect(subject, event["data"])
            self._maybe_snapshot(state, ts)

    def _expire(self, now: int) -> None:
        while self._deadlines and self._deadlines[0][0] < now:
            _, _, snap = heapq.heappop(self._deadlines)
            if snap.label is None:
                snap.label = 1
                self._open[snap.merchant_id].remove(snap)

    def _collect(self, merchant: str, data: dict[str, Any]) -> None:
        snaps = self._open.get(merchant)
        if not snaps:
            return
        gross = data["gross"]["amount"]
        net_ratio = (data["net"]["amount"] + data["withheld"]["amount"]) / gross if gross else 0.0
        amounts = [(o["order_id"], o["amount"]["amount"] * net_ratio) for o in data["orders"]]
        other_share = self.policy.withhold_bps / 10_000
        for snap in list(snaps):
            paid = sum(a if oid in snap.financed else a * other_share for oid, a in amounts)
            snap.collected += int(paid)
            if snap.collected >= snap.owed:
                snap.label = 0
                snaps.remove(snap)

    def _maybe_snapshot(self, state: MerchantState, ts: int) -> None:
        p = self.policy
        last = self._last_snap.get(state.merchant_id)
        if last is not None and ts - last < p.snapshot_every_days * DAY:
            return
        if state.status != "active" or not state.since or (ts - state.since) < p.min_tenure_days * DAY:
            return
        receivables, financed = _open_receivables(state, ts)
        if receivables < p.min_receivables:
            return
        self._last_snap[state.merchant_id] = ts
        features = compute_features(state, datetime.fromtimestamp(ts, UTC))
        principal = receivables * p.advance_bps // 10_000
        owed = principal + principal * p.fee_bps_per_day * p.term_days // 10_000
        snap = Snapshot(state.merchant_id, ts, features, principal, owed, financed)
        self.data.snapshots.append(snap)
        self._open.setdefault(state.merchant_id, []).append(snap)
        self._n += 1
        heapq.heappush(self._deadlines, (ts + (p.term_days + p.default_dpd) * DAY, self._n, snap))

    def finish(self) -> Dataset:
        # Deadlines inside the history were decided by _expire; the rest stay censored (label None).
        self._expire(self.data.last_ts)
        return self.data


def build_dataset(events: Iterable[dict[str, Any]], policy: LabelPolicy | None = None) -> Dataset:
    builder = DatasetBuilder(policy)
    for event in events:
        builder.add(event)
    return builder.finish()


def time_split(snaps: list[Snapshot], cuts: tuple[float, float, float] = (0.55, 0.70, 0.80)) -> dict[str, list[Snapshot]]:
    """Split by snapshot time: train | validation (early stopping) | calibration | test (held out)."""
    if not snaps:
        raise ValueError("no labelled snapshots: simulate more merchants or days")
    lo = min(s.as_of for s in snaps)
    hi = max(s.as_of for s in snaps)
    bounds = [lo + (hi - lo) * c for c in cuts]
    parts: dict[str, list[Snapshot]] = {"train": [], "valid": [], "calib": [], "test": []}
    names = list(parts)
    for s in snaps:
        k = sum(s.as_of >= b for b in bounds)
        parts[names[k]].append(s)
    return parts


__all__ = ["FEATURE_NAMES", "INDEX", "Dataset", "DatasetBuilder", "LabelPolicy", "Snapshot", "build_dataset",
           "time_split"]
