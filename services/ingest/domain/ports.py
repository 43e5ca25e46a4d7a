"""Ports the ingest core needs: a sink that returns only after the broker acknowledged, and a
dedupe store shared by every replica."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from services.ingest.domain.model import Outgoing, quick_init

Clock = Callable[[], datetime]


class SinkUnavailable(RuntimeError):
    """The broker did not acknowledge; `delivered` names the event ids that did get acknowledged."""

    def __init__(self, message: str, delivered: frozenset[str] = frozenset()):
        super().__init__(message)
        self.delivered = delivered


class DedupeUnavailable(RuntimeError):
    """The dedupe store could not be reached; nothing was claimed."""


class EventSink(Protocol):
    def publish(self, records: Sequence[Outgoing]) -> None:
        """Produce every record and return only after all were acknowledged; else raise SinkUnavailable."""
        ...


class Claim(StrEnum):
    NEW = "new"  # claimed by this call: produce it, then mark it done
    TAKEN_OVER = "taken_over"  # a stale pending claim (its owner died) now belongs to this call: re-produce
    DONE = "done"  # already produced with the same content: duplicate
    PENDING = "pending"  # another caller is producing it right now: retry later
    CONFLICT = "conflict"  # the id is known with different content


@quick_init
@dataclass(frozen=True, slots=True)
class ClaimRequest:
    event_id: str
    content_hash: str


class DedupeStore(Protocol):
    def claim(self, requests: Sequence[ClaimRequest], owner: str, now: datetime) -> dict[str, Claim]:
        """Claim ids as pending for `owner` (one round trip for the batch); ids must be distinct."""
        ...

    def mark_done(self, event_ids: Sequence[str], owner: str) -> None:
        """Record that these ids are on the topic."""
        ...

    def release(self, event_ids: Sequence[str], owner: str) -> None:
        """Forget pending claims of `owner` whose produce failed, so a retry need not wait for the lease."""
        ...
