"""Ingest settings, read from FLOATBRIDGE_INGEST_* variables."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from schemas.contract_check import MAX_EVENT_BYTES, MAX_FUTURE_SKEW_SECONDS, MIN_EVENT_TIME
from services.common.settings import SettingsError, load

PREFIX = "FLOATBRIDGE_INGEST_"
PRODUCERS = ("kafka-python", "librdkafka")
MAX_RECORD_BYTES = 1_048_576  # both sinks' record size limit (kafka-python max_request_size, message.max.bytes)


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class IngestSettings:
    kafka_bootstrap: str = field(default="127.0.0.1:19092", metadata=_doc("Kafka bootstrap servers"))
    producer: str = field(default="kafka-python",
                          metadata=_doc("Kafka client of the sink: kafka-python (the design's client) or librdkafka (confluent-kafka)"))
    events_topic: str = field(default="marketplace.events.v1", metadata=_doc("topic for accepted events"))
    rejected_topic: str = field(default="ingest.rejected.v1", metadata=_doc("dead-letter topic"))
    raw_topic: str = field(default="marketplace.raw.v1", metadata=_doc("topic consume-raw reads"))
    raw_group_id: str = field(default="floatbridge-ingest-raw", metadata=_doc("consumer group of consume-raw"))
    database_url: str = field(default="sqlite:///floatbridge-ingest-dedupe.db",
                              metadata=_doc("SQLAlchemy URL of the dedupe store (PostgreSQL shared by replicas)"))
    database_schema: str = field(default="", metadata=_doc("database schema of the dedupe table (PostgreSQL)"))
    api_key_hashes: tuple[str, ...] = field(default=(), metadata=_doc("sha256 hex of accepted API keys, comma separated"))
    api_keys: tuple[str, ...] = field(default=(), metadata=_doc("plain API keys, hashed at start (prefer *_HASHES)"))
    buyer_hash_key: str = field(default="", metadata=_doc("secret for the keyed hash of buyer ids (required)"))
    naive_timezone: str = field(default="", metadata=_doc("IANA zone for timestamps without offset, e.g. America/Sao_Paulo"))
    # The contract's limits (schemas.contract_check), which the consumers of marketplace.events.v1 apply too.
    max_future_skew_seconds: int = field(default=MAX_FUTURE_SKEW_SECONDS,
                                         metadata=_doc("how far in the future `time` may be; -1 disables"))
    min_event_time: str = field(default=MIN_EVENT_TIME.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                metadata=_doc("older event times are rejected"))
    max_batch_events: int = field(default=1000, metadata=_doc("events per request"))
    max_batch_bytes: int = field(default=8 * 1024 * 1024, metadata=_doc("bytes per request body"))
    max_event_bytes: int = field(default=MAX_EVENT_BYTES, metadata=_doc("bytes per event"))
    raw_cap_bytes: int = field(default=64 * 1024, metadata=_doc("raw payload kept in a rejection (truncated beyond)"))
    max_inflight_batches: int = field(default=8, metadata=_doc("batches processed at once; more get 503"))
    dedupe_lease_seconds: float = field(default=30.0, metadata=_doc("after this a pending claim is re-produced"))
    dedupe_window_days: int = field(default=30, metadata=_doc("ids are remembered this long"))
    purge_interval_seconds: float = field(default=3600.0, metadata=_doc("how often serve purges old ids"))
    produce_timeout_seconds: float = field(default=10.0, metadata=_doc("wait for the broker's ack at most this long"))
    retry_after_seconds: int = field(default=2, metadata=_doc("Retry-After on 503"))
    host: str = field(default="0.0.0.0", metadata=_doc("HTTP bind address"))
    port: int = field(default=8081, metadata=_doc("HTTP port"))
    source: str = field(default="floatbridge://ingest", metadata=_doc("CloudEvents source of ingest.rejected"))

    def validate(self) -> None:
        if not self.buyer_hash_key:
            raise SettingsError(f"{PREFIX}BUYER_HASH_KEY is required (secret for hashing buyer ids)")
        for h in self.api_key_hashes:
            if len(h) != 64 or any(c not in "0123456789abcdef" for c in h.lower()):
                raise SettingsError(f"{PREFIX}API_KEY_HASHES: {h[:8]}... is not a sha256 hex digest")
        if self.naive_timezone:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(self.naive_timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise SettingsError(f"{PREFIX}NAIVE_TIMEZONE: unknown time zone {self.naive_timezone!r}") from None
        from services.common.timeutil import TimeError, parse_rfc3339

        try:
            parse_rfc3339(self.min_event_time)
        except TimeError as exc:
            raise SettingsError(f"{PREFIX}MIN_EVENT_TIME: {exc}") from None
        if self.producer not in PRODUCERS:
            raise SettingsError(f"{PREFIX}PRODUCER must be one of {', '.join(PRODUCERS)}, not {self.producer!r}")
        if self.max_event_bytes > MAX_RECORD_BYTES - 64 * 1024:
            raise SettingsError(f"{PREFIX}MAX_EVENT_BYTES must leave room under the {MAX_RECORD_BYTES}-byte Kafka "
                                "record limit (at most 983040)")
        for name in ("max_batch_events", "max_batch_bytes", "max_event_bytes", "max_inflight_batches"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{PREFIX}{name.upper()} must be positive")

    def key_hashes(self) -> frozenset[str]:
        return frozenset(h.lower() for h in self.api_key_hashes) | frozenset(hash_key(k) for k in self.api_keys)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def load_settings(**overrides: object) -> IngestSettings:
    return load(IngestSettings, PREFIX, None, **overrides)
