"""Underwriter settings (FLOATBRIDGE_UNDERWRITER_*). Policy numbers live in domain.policy.PolicySettings,
loaded from the same prefix."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas import topics
from schemas.contract_check import MAX_FUTURE_SKEW_SECONDS
from services.common import settings as common
from services.underwriter.domain.policy import PolicySettings

PREFIX = "FLOATBRIDGE_UNDERWRITER_"
DEFAULT_REGISTRY = str(Path(__file__).resolve().parents[2] / "models" / "registry")


@dataclass(frozen=True, slots=True)
class UnderwriterSettings:
    kafka_bootstrap: str = field(default="127.0.0.1:19092", metadata={"doc": "Kafka bootstrap servers"})
    app_id: str = field(default="floatbridge-underwriter", metadata={"doc": "Faust app id (consumer group, changelog topic prefix)"})
    store: str = field(default="rocksdb://", metadata={"doc": "Faust table store: rocksdb:// in production, memory:// in tests"})
    data_dir: str = field(default="/tmp/floatbridge-underwriter", metadata={"doc": "Faust data directory (RocksDB files)"})
    partitions: int = field(default=12, metadata={"doc": "partitions of the input topics and the state table"})
    marketplace_topic: str = field(default=topics.MARKETPLACE_EVENTS, metadata={"doc": "input: marketplace events"})
    loans_topic: str = field(default=topics.LOANS, metadata={"doc": "input: loan lifecycle events"})
    limits_topic: str = field(default=topics.CREDIT_LIMITS, metadata={"doc": "output: credit_limit.updated"})
    offers_topic: str = field(default=topics.LOAN_OFFERS, metadata={"doc": "output: loan_offer.created/withdrawn"})
    max_future_skew_seconds: int = field(default=MAX_FUTURE_SKEW_SECONDS, metadata={"doc": "worker: an input event dated more than this ahead of the wall clock is dead-lettered (as ingest refuses it); -1 disables"})
    rejected_topic: str = field(default=topics.INGEST_REJECTED, metadata={"doc": "output: dead letters (ingest.rejected) of input records the worker cannot apply"})
    model_registry: str = field(default=DEFAULT_REGISTRY, metadata={"doc": "model registry folder (CHAMPION file + versions)"})
    challenger: str = field(default="", metadata={"doc": "registry version to shadow-score beside the champion (empty: none)"})
    debounce_seconds: int = field(default=30, metadata={"doc": "rescore a merchant at most this often (event time) unless the event is material; a debounced merchant is saved as pending, so a restarted or new worker still decides it"})
    flush_interval_seconds: float = field(default=1.0, metadata={"doc": "worker timer that scores debounced merchants"})
    batch_max: int = field(default=1000, metadata={"doc": "worker: records taken per batch (each merchant of a batch is saved and scored once)"})
    batch_within_seconds: float = field(default=0.02, metadata={"doc": "worker: records not yet in a full batch are processed at least this often while the worker keeps up with its input (bounds the added delay)"})
    batch_max_wait_seconds: float = field(default=0.25, metadata={"doc": "worker: behind a backlog (records produced longer ago than this) a batch keeps taking records up to batch_max or this long"})
    event_loop: str = field(default="auto", metadata={"doc": "worker event loop: uvloop, asyncio, or auto (uvloop when installed)"})
    fetch_max_bytes: int = field(default=1024**2, metadata={"doc": "worker: bytes fetched per input partition per request (Faust consumer_max_fetch_size)"})
    fetch_max_wait_ms: int = field(default=20, metadata={"doc": "worker: longest the broker holds a fetch request without new records, between rebalances (0: Faust's 1,500 ms throughout; rebalances and table recoveries always use Faust's 1,500 ms). aiokafka sends one fetch at a time, so a long wait on quiet partitions delays the busy ones by as much"})
    producer_linger_seconds: float = field(default=0.005, metadata={"doc": "worker: producer waits this long to fill a request (changelog writes, decisions)"})
    producer_batch_bytes: int = field(default=256 * 1024, metadata={"doc": "worker: producer batch size per partition, bytes"})
    metrics_port: int = field(default=9102, metadata={"doc": "port of the /metrics endpoint (0: none)"})
    web_port: int = field(default=6066, metadata={"doc": "Faust web port"})
    psi_window: int = field(default=5000, metadata={"doc": "recent scored PDs the score PSI gauge compares with the training reference"})
    source: str = field(default="floatbridge/underwriter", metadata={"doc": "CloudEvents source of emitted events"})

    def validate(self) -> None:
        if self.debounce_seconds < 0:
            raise ValueError("debounce_seconds must be >= 0")
        if self.max_future_skew_seconds < -1:
            raise ValueError("max_future_skew_seconds must be >= 0, or -1 to disable the check")
        if not self.store.startswith(("rocksdb://", "memory://")):
            raise ValueError(f"store must be rocksdb:// or memory://, got {self.store!r}")
        if self.psi_window < 1:
            raise ValueError("psi_window must be >= 1")
        if self.partitions < 1:
            raise ValueError("partitions must be >= 1")
        if self.batch_max < 1 or self.batch_within_seconds <= 0:
            raise ValueError("batch_max must be >= 1 and batch_within_seconds > 0")
        if self.batch_max_wait_seconds < self.batch_within_seconds:
            raise ValueError("batch_max_wait_seconds must be >= batch_within_seconds")
        if self.event_loop not in ("auto", "uvloop", "asyncio"):
            raise ValueError(f"event_loop must be auto, uvloop or asyncio, got {self.event_loop!r}")
        if not 0 <= self.fetch_max_wait_ms <= 60_000:
            raise ValueError("fetch_max_wait_ms must be between 0 and 60000")
        if self.fetch_max_bytes < 1024 or self.producer_batch_bytes < 1024 or self.producer_linger_seconds < 0:
            raise ValueError("fetch_max_bytes and producer_batch_bytes must be >= 1024, producer_linger_seconds >= 0")


def load(**overrides: Any) -> UnderwriterSettings:
    return common.load(UnderwriterSettings, PREFIX, **overrides)


def load_policy(**overrides: Any) -> PolicySettings:
    return common.load(PolicySettings, PREFIX, **overrides)
