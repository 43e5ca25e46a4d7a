"""In-memory adapters for unit tests and the embedded single-process mode."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.ingest.domain.model import Outgoing
from services.ingest.domain.ports import Claim, ClaimRequest, SinkUnavailable


@dataclass(slots=True)
class _Row:
    content_hash: str
    state: str
    owner: str
    claimed_at: datetime
    first_seen: datetime


class InMemoryDedupeStore:
    """Same protocol as the SQL store, one process only."""

    def __init__(self, lease: timedelta = timedelta(seconds=30)):
        self.lease = lease
        self._rows: dict[str, _Row] = {}
        self._lock = threading.Lock()

    def claim(self, requests: Sequence[ClaimRequest], owner: str, now: datetime) -> dict[str, Claim]:
        out: dict[str, Claim] = {}
        with self._lock:
            for req in requests:
                row = self._rows.get(req.event_id)
                if row is None:
                    self._rows[req.event_id] = _Row(req.content_hash, "pending", owner, now, now)
                    out[req.event_id] = Claim.NEW
                elif row.content_hash != req.content_hash:
                    out[req.event_id] = Claim.CONFLICT
                elif row.state == "done":
                    out[req.event_id] = Claim.DONE
                elif now - row.claimed_at >= self.lease:
                    row.owner, row.claimed_at = owner, now
                    out[req.event_id] = Claim.TAKEN_OVER
                else:
                    out[req.event_id] = Claim.PENDING
        return out

    def mark_done(self, event_ids: Sequence[str], owner: str) -> None:
        with self._lock:
            for eid in event_ids:
                if eid in self._rows:
                    self._rows[eid].state = "done"

    def release(self, event_ids: Sequence[str], owner: str) -> None:
        with self._lock:
            for eid in event_ids:
                row = self._rows.get(eid)
                if row is not None and row.state == "pending" and row.owner == owner:
                    del self._rows[eid]

    def purge(self, before: datetime) -> int:
        with self._lock:
            old = [k for k, r in self._rows.items() if r.first_seen < before and r.state == "done"]
            for k in old:
                del self._rows[k]
            return len(old)

    def size(self) -> int:
        return len(self._rows)

    def ping(self) -> None:
        return None

    def state(self, event_id: str) -> str | None:
        row = self._rows.get(event_id)
        return row.state if row else None


class InMemorySink:
    """Keeps what was published; `fail` makes the next publishes raise SinkUnavailable."""

    def __init__(self) -> None:
        self.records: list[Outgoing] = []
        self.fail = False
        self._lock = threading.Lock()

    def publish(self, records: Sequence[Outgoing]) -> None:
        if self.fail:
            raise SinkUnavailable("in-memory sink set to fail")
        with self._lock:
            self.records.extend(records)

    def ping(self) -> None:
        if self.fail:
            raise SinkUnavailable("in-memory sink set to fail")

    def events(self) -> list[Outgoing]:
        return [r for r in self.records if r.kind == "event"]

    def rejected(self) -> list[Outgoing]:
        return [r for r in self.records if r.kind == "rejected"]

    def close(self) -> None:
        return None
