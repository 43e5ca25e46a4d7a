"""The ingest application service: normalise a batch, claim ids, produce, answer per event.

Exactly-once protocol (see services/ingest/README.md): claim each id as pending with its
content hash, produce and wait for the broker's ack, then mark it done. A pending claim older
than the lease is taken over and re-produced (so a record can appear twice on the topic after
a crash; it carries its id in a header and consumers dedupe by id).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schemas.dead_letter import REJECTED_SCHEMA, REJECTED_TYPE, redact_text
from services.common.timeutil import format_rfc3339
from services.ingest.domain.model import (
    EventResult,
    Issue,
    Malformed,
    NormalisedEvent,
    Outgoing,
    Reason,
    Rejection,
    Status,
)
from services.ingest.domain.normalise import NormaliseContext, normalise, redact_raw, valid_id
from services.ingest.domain.ports import (
    Claim,
    ClaimRequest,
    DedupeStore,
    DedupeUnavailable,
    EventSink,
    SinkUnavailable,
)

MAX_ERRORS = 200


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    source: str = "floatbridge://ingest"
    raw_cap_bytes: int = 64 * 1024


@dataclass(slots=True)
class _Item:
    index: int
    raw: Any
    outcome: NormalisedEvent | Rejection
    result: EventResult | None = None
    reject_id: str = ""


class IngestService:
    def __init__(self, ctx: NormaliseContext, sink: EventSink, dedupe: DedupeStore,
                 config: ServiceConfig | None = None):
        self.ctx = ctx
        self.sink = sink
        self.dedupe = dedupe
        self.config = config or ServiceConfig()

    def submit(self, raw_events: Sequence[Any], received_at: datetime, intake: str = "http") -> list[EventResult]:
        """Take a batch; every result is final (accepted/duplicate/rejected) or `retry`."""
        items = [_Item(i, raw, _normalise_or_reject(raw, self.ctx, received_at)) for i, raw in enumerate(raw_events)]
        firsts, repeats = self._group(items)
        owner = uuid.uuid4().hex
        try:
            claims = self.dedupe.claim([ClaimRequest(e.event_id, e.content_hash) for e in firsts.values()],
                                       owner, received_at) if firsts else {}
        except DedupeUnavailable as exc:
            return [_retry(it, f"dedupe store unavailable: {exc}") for it in items]
        rejects: list[_Item] = []
        to_produce: list[NormalisedEvent] = []
        for it in items:
            out = it.outcome
            if isinstance(out, Rejection):
                rejects.append(it)
                continue
            claim = claims[out.event_id]
            is_first = firsts[out.event_id] is out
            if claim is Claim.CONFLICT or (not is_first and out.content_hash != firsts[out.event_id].content_hash):
                it.outcome = Rejection(Reason.CONFLICT, (Issue("/id", "event id already used with different content"),),
                                       out.event_id, out.event_type, out.subject)
                rejects.append(it)
            elif claim is Claim.DONE:
                it.result = _final(it, Status.DUPLICATE)
            elif claim is Claim.PENDING:
                it.result = _retry(it, "another request is producing this event id; retry later")
            elif is_first:
                to_produce.append(out)
        records = [Outgoing("event", e.subject, e.event_id, e.payload, _headers(e.event_id, e.event_type))
                   for e in to_produce]
        records += [self._rejected_record(it, received_at, intake) for it in rejects]
        delivered = self._publish(records)
        produced = [e.event_id for e in to_produce if e.event_id in delivered]
        failed = [e.event_id for e in to_produce if e.event_id not in delivered]
        self._settle(produced, failed, owner)
        return [self._result(it, claims, delivered, repeats) for it in items]

    def _group(self, items: list[_Item]) -> tuple[dict[str, NormalisedEvent], set[int]]:
        firsts: dict[str, NormalisedEvent] = {}
        repeats: set[int] = set()
        for it in items:
            if isinstance(it.outcome, NormalisedEvent):
                if it.outcome.event_id in firsts:
                    repeats.add(it.index)
                else:
                    firsts[it.outcome.event_id] = it.outcome
        return firsts, repeats

    def _publish(self, records: list[Outgoing]) -> frozenset[str]:
        if not records:
            return frozenset()
        try:
            self.sink.publish(records)
        except SinkUnavailable as exc:
            return exc.delivered
        return frozenset(r.event_id for r in records)

    def _settle(self, produced: list[str], failed: list[str], owner: str) -> None:
        try:
            if produced:
                self.dedupe.mark_done(produced, owner)
            if failed:
                self.dedupe.release(failed, owner)
        except DedupeUnavailable:
            # The events are on the topic; a stale pending claim is re-produced after the lease and
            # consumers drop the repeat by its ce_id header. Still correct, so the answer stands.
            pass

    def _result(self, it: _Item, claims: dict[str, Claim], delivered: frozenset[str],
                repeats: set[int]) -> EventResult:
        if it.result is not None:
            return it.result
        out = it.outcome
        if isinstance(out, Rejection):
            if it.reject_id not in delivered:
                return _retry(it, "the dead-letter topic did not acknowledge; retry later")
            return EventResult(it.index, Status.REJECTED, out.event_id, out.event_type, out.reason,
                               out.issues[:MAX_ERRORS])
        if out.event_id not in delivered:
            return _retry(it, "the broker did not acknowledge; retry later")
        return EventResult(it.index, Status.DUPLICATE if it.index in repeats else Status.ACCEPTED, out.event_id,
                           out.event_type)

    def _rejected_record(self, it: _Item, received_at: datetime, intake: str) -> Outgoing:
        rej = it.outcome
        assert isinstance(rej, Rejection)
        raw_text, truncated = self._raw_text(it.raw)
        received = format_rfc3339(received_at)
        data: dict[str, Any] = {
            "raw": raw_text, "raw_truncated": truncated, "source": intake, "received_at": received,
            "reason": rej.reason.value,
            "errors": [{"pointer": i.pointer[:1024], "message": (i.message or "invalid")[:1000]}
                       for i in rej.issues[:MAX_ERRORS]],
        }
        for key, val in (("event_id", rej.event_id), ("event_type", rej.event_type)):
            if val is not None:
                data[key] = val[:128]
        digest = hashlib.sha256(raw_text.encode("utf-8")).hexdigest()
        rid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"floatbridge:ingest.rejected:{digest}:{it.index}:{received}"))
        it.reject_id = rid
        event = {
            "specversion": "1.0", "id": rid, "source": self.config.source, "type": REJECTED_TYPE,
            "time": received, "subject": rej.subject or "unknown", "dataschema": REJECTED_SCHEMA,
            "datacontenttype": "application/json", "data": data,
        }
        return Outgoing("rejected", rej.subject or "unknown", rid, self.ctx.encode(event),
                        _headers(rid, REJECTED_TYPE))

    def _raw_text(self, raw: Any) -> tuple[str, bool]:
        try:
            return self._raw_text_of(raw)
        except Exception as exc:  # never let the dead letter of one event fail the batch
            return f"[the raw payload could not be kept: {type(exc).__name__}]", True

    def _raw_text_of(self, raw: Any) -> tuple[str, bool]:
        if isinstance(raw, Malformed) and raw.doc is None:
            text = redact_text(raw.text)
        elif isinstance(raw, Malformed):
            text = self.ctx.encode(redact_raw(raw.doc, self.ctx)).decode("utf-8")
        else:
            text = self.ctx.encode(redact_raw(raw, self.ctx)).decode("utf-8")
        data = text.encode("utf-8")
        cap = self.config.raw_cap_bytes
        if len(data) <= cap:
            return text, False
        return data[:cap].decode("utf-8", errors="ignore"), True


def _normalise_or_reject(raw: Any, ctx: NormaliseContext, received_at: datetime) -> NormalisedEvent | Rejection:
    """normalise(), and should an input it was not written for make it raise, a rejection of that event alone:
    one event must never fail its whole batch (HTTP 500) or stop the Kafka intake on the same record forever."""
    try:
        return normalise(raw, ctx, received_at)
    except Exception as exc:  # a defect, not a verdict on the event: it goes to the dead letter for ops to see
        ident = raw if isinstance(raw, dict) else {}
        etype = ident.get("type")
        return Rejection(Reason.SCHEMA, (Issue("", f"event could not be checked ({type(exc).__name__}); it is kept "
                                               "in ingest.rejected.v1"),),
                         valid_id(ident.get("id")), etype[:64] if isinstance(etype, str) else None,
                         valid_id(ident.get("subject")))


_TYPE_HEADERS: dict[str, tuple[str, bytes]] = {}  # one ("ce_type", bytes) per event type, built once


def _headers(event_id: str, event_type: str) -> tuple[tuple[str, bytes], ...]:
    type_header = _TYPE_HEADERS.get(event_type)
    if type_header is None:
        type_header = ("ce_type", event_type.encode("utf-8"))
        if len(_TYPE_HEADERS) < 1024:  # types are a closed catalog; never let odd input grow this
            _TYPE_HEADERS[event_type] = type_header
    return (("ce_id", event_id.encode("utf-8")), type_header)


def _ident(it: _Item) -> tuple[str | None, str | None]:
    out = it.outcome
    if isinstance(out, NormalisedEvent):
        return out.event_id, out.event_type
    return out.event_id, out.event_type


def _final(it: _Item, status: Status) -> EventResult:
    eid, etype = _ident(it)
    return EventResult(it.index, status, eid, etype)


def _retry(it: _Item, detail: str) -> EventResult:
    eid, etype = _ident(it)
    return EventResult(it.index, Status.RETRY, eid, etype, detail=detail)
