"""Value objects of the ingest core: what comes in, what goes out, what the caller is told."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem with an event: a JSON pointer into the raw event and a plain message."""

    pointer: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"pointer": self.pointer, "message": self.message}


class Reason(StrEnum):
    """Bounded reason labels for rejections (also used as metric labels)."""

    MALFORMED = "malformed"
    SIZE = "size"
    SCHEMA = "schema"
    MONEY = "money"
    TIME = "time"
    CONFLICT = "conflict"


class Status(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    RETRY = "retry"  # not taken now (broker down, or another replica holds the id): send again later


@dataclass(frozen=True, slots=True)
class Malformed:
    """An input item that was not even JSON (an NDJSON line, a Kafka record value)."""

    text: str
    error: str


@dataclass(frozen=True, slots=True)
class NormalisedEvent:
    """A canonical event ready to produce; `payload` is its encoded form, `content_hash` its sha256."""

    event_id: str
    event_type: str
    subject: str
    event: dict[str, Any]
    payload: bytes
    content_hash: str


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    issues: tuple[Issue, ...]
    event_id: str | None = None
    event_type: str | None = None
    subject: str | None = None


@dataclass(frozen=True, slots=True)
class EventResult:
    """The answer for one submitted event, in submission order."""

    index: int
    status: Status
    event_id: str | None = None
    event_type: str | None = None
    reason: Reason | None = None
    errors: tuple[Issue, ...] = ()
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "id": self.event_id, "status": self.status.value}
        if self.reason is not None:
            out["reason"] = self.reason.value
        if self.errors:
            out["errors"] = [e.to_json() for e in self.errors]
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A record for the sink: `kind` is "event" (marketplace.events) or "rejected" (dead letter)."""

    kind: str
    key: str
    event_id: str
    payload: bytes
    headers: tuple[tuple[str, bytes], ...] = field(default=())
