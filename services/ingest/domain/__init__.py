"""Pure ingest core: normalisation, validation hook, exactly-once intake protocol (stdlib only)."""

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
from services.ingest.domain.normalise import NormaliseContext, normalise
from services.ingest.domain.ports import (
    Claim,
    ClaimRequest,
    Clock,
    DedupeStore,
    DedupeUnavailable,
    EventSink,
    SinkUnavailable,
)
from services.ingest.domain.service import IngestService, ServiceConfig

__all__ = [
    "Claim", "ClaimRequest", "Clock", "DedupeStore", "DedupeUnavailable", "EventResult", "EventSink",
    "IngestService", "Issue", "Malformed", "NormaliseContext", "NormalisedEvent", "Outgoing", "Reason",
    "Rejection", "ServiceConfig", "SinkUnavailable", "Status", "normalise",
]
