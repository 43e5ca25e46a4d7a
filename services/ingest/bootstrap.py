"""Wire the ingest service from settings and real or fake adapters. Nothing connects at import."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry

from services.common.timeutil import parse_rfc3339, utc_now
from services.ingest.adapters.jsoncodec import encode_canonical
from services.ingest.adapters.metrics import IngestMetrics
from services.ingest.domain.model import EventResult
from services.ingest.domain.normalise import NormaliseContext, Validator
from services.ingest.domain.ports import Clock, DedupeStore, EventSink
from services.ingest.domain.service import IngestService, ServiceConfig
from services.ingest.settings import IngestSettings, load_settings

log = logging.getLogger(__name__)


def codec_validator() -> Validator:
    """schemas.codec.validate as (pointer, message, kind) tuples, with a quick yes first for plainly valid
    marketplace events (schemas/fastcheck.py: checks generated from the same schemas; any doubt runs the
    full validator, so every error is exactly the codec's)."""
    from schemas.codec import MARKETPLACE_TYPES, _envelope_surely_valid, data_schema, validate
    from schemas.fastcheck import quick_validator

    def run(event: dict[str, Any]) -> list[tuple[str, ...]]:
        return [(e.pointer, e.message, e.kind) for e in validate(event)]

    return quick_validator(MARKETPLACE_TYPES, data_schema, _envelope_surely_valid, run)


@dataclass
class IngestRuntime:
    settings: IngestSettings
    service: IngestService
    sink: Any
    dedupe: Any
    metrics: IngestMetrics
    clock: Clock
    key_hashes: frozenset[str]

    def submit(self, raw_events: Sequence[Any], intake: str = "http",
               received_at: datetime | None = None) -> list[EventResult]:
        """Submit with the clock's receipt time and record metrics."""
        results = self.service.submit(raw_events, received_at or self.clock(), intake)
        self.metrics.record(results, intake)
        return results

    def close(self) -> None:
        for part in (self.sink, self.dedupe):
            close = getattr(part, "close", None)
            if callable(close):
                try:
                    close()
                except Exception as exc:  # closing is best effort
                    log.warning("closing %s failed: %s", type(part).__name__, exc)


def normalise_context(settings: IngestSettings, validator: Validator | None = None) -> NormaliseContext:
    zone = None
    if settings.naive_timezone:
        from zoneinfo import ZoneInfo

        zone = ZoneInfo(settings.naive_timezone)
    skew = None if settings.max_future_skew_seconds < 0 else timedelta(seconds=settings.max_future_skew_seconds)
    return NormaliseContext(
        buyer_hash_key=settings.buyer_hash_key.encode("utf-8"),
        naive_zone=zone,
        max_future_skew=skew,
        min_time=parse_rfc3339(settings.min_event_time),
        max_event_bytes=settings.max_event_bytes,
        validator=validator or codec_validator(),
        encode=encode_canonical,
        accepted_types=_marketplace_types(),
    )


def _marketplace_types() -> frozenset[str]:
    from schemas.codec import MARKETPLACE_TYPES

    return frozenset(MARKETPLACE_TYPES)


def kafka_sink(settings: IngestSettings, observe_latency: Any = None) -> EventSink:
    """The sink adapter FLOATBRIDGE_INGEST_PRODUCER names (kafka-python or librdkafka); same contract."""
    if settings.producer == "librdkafka":
        from services.ingest.adapters.rdkafka_sink import RdKafkaSink

        # Bounded queue: every batch in flight fits (one record per event) twice over, in records and bytes.
        records = max(settings.max_inflight_batches * settings.max_batch_events * 2, 10_000)
        kbytes = max(settings.max_inflight_batches * settings.max_batch_bytes * 2 // 1024, 16_384)
        return RdKafkaSink(settings.kafka_bootstrap, settings.events_topic, settings.rejected_topic,
                           settings.produce_timeout_seconds, observe_latency,
                           max_queued_records=records, max_queued_kbytes=min(kbytes, 2_097_151))
    from services.ingest.adapters.kafka_sink import KafkaSink

    return KafkaSink(settings.kafka_bootstrap, settings.events_topic, settings.rejected_topic,
                     settings.produce_timeout_seconds, observe_latency)


def bootstrap(
    settings: IngestSettings | None = None,
    *,
    sink: EventSink | None = None,
    dedupe: DedupeStore | None = None,
    clock: Clock | None = None,
    registry: CollectorRegistry | None = None,
    validator: Validator | None = None,
) -> IngestRuntime:
    """Real Kafka sink and SQL dedupe store unless fakes are passed (the embedded mode passes in-memory ones)."""
    settings = settings or load_settings()
    metrics = IngestMetrics(registry)
    if sink is None:
        sink = kafka_sink(settings, metrics.produce_latency.observe)
    if dedupe is None:
        from services.ingest.adapters.sql_dedupe import SqlDedupeStore

        dedupe = SqlDedupeStore(settings.database_url, timedelta(seconds=settings.dedupe_lease_seconds),
                                settings.database_schema or None)
    size = getattr(dedupe, "size", None)
    if callable(size):
        metrics.watch_dedupe_size(size)
    service = IngestService(normalise_context(settings, validator), sink, dedupe,
                            ServiceConfig(source=settings.source, raw_cap_bytes=settings.raw_cap_bytes))
    return IngestRuntime(settings, service, sink, dedupe, metrics, clock or utc_now, settings.key_hashes())
