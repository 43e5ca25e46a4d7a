"""Kafka consumer lag per partition for every consumer group, as a Prometheus exporter.

Lag = log end offset - committed offset of the group, per (group, topic, partition). Offsets are
polled in the background every `interval` seconds so a slow broker never makes a scrape time out;
a scrape serves the latest snapshot.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

LAG_METRIC = "floatbridge_kafka_consumer_lag_messages"
TopicPartitionKey = tuple[str, int]


class OffsetSource(Protocol):
    """What the exporter needs from Kafka (a fake in unit tests, KafkaOffsetSource for real)."""

    def groups(self) -> list[str]: ...

    def committed(self, group: str) -> dict[TopicPartitionKey, int]: ...

    def end_offsets(self, partitions: Iterable[TopicPartitionKey]) -> dict[TopicPartitionKey, int]: ...


@dataclass(frozen=True, slots=True)
class LagSample:
    group: str
    topic: str
    partition: int
    lag: int


def compute_lag(
    group: str, committed: Mapping[TopicPartitionKey, int], end: Mapping[TopicPartitionKey, int]
) -> list[LagSample]:
    """One sample per committed partition; never negative (end offsets are read after the commits)."""
    out = []
    for (topic, partition), offset in sorted(committed.items()):
        if (topic, partition) not in end or offset < 0:
            continue  # partition deleted, or no commit yet (-1): lag is unknown, not zero
        out.append(LagSample(group, topic, partition, max(0, end[(topic, partition)] - offset)))
    return out


def poll_lag(source: OffsetSource, group_filter: set[str] | None = None) -> list[LagSample]:
    samples: list[LagSample] = []
    for group in sorted(source.groups()):
        if group_filter and group not in group_filter:
            continue
        committed = source.committed(group)
        if not committed:
            continue
        samples.extend(compute_lag(group, committed, source.end_offsets(committed.keys())))
    return samples


@dataclass(eq=False)  # identity hash: the registry keys collectors by object
class LagCollector:
    """prometheus-client custom collector serving the latest polled snapshot."""

    source: OffsetSource
    group_filter: set[str] | None = None
    samples: list[LagSample] = field(default_factory=list)
    last_success: float = 0.0
    errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def refresh(self) -> None:
        try:
            samples = poll_lag(self.source, self.group_filter)
        except Exception:  # the exporter must outlive a broker restart
            log.exception("consumer lag poll failed")
            with self._lock:
                self.errors += 1
            return
        with self._lock:
            self.samples, self.last_success = samples, time.time()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self._lock:
            samples, last, errors = list(self.samples), self.last_success, self.errors
        lag = GaugeMetricFamily(
            LAG_METRIC,
            "Messages between the log end offset and the consumer group's committed offset.",
            labels=["group", "topic", "partition"],
        )
        for s in samples:
            lag.add_metric([s.group, s.topic, str(s.partition)], float(s.lag))
        yield lag
        yield GaugeMetricFamily(
            "floatbridge_kafka_lag_exporter_last_success_timestamp_seconds",
            "Unix time of the last successful offset poll.",
            value=last,
        )
        yield CounterMetricFamily(
            "floatbridge_kafka_lag_exporter_errors", "Offset polls that failed.", value=float(errors)
        )


class KafkaOffsetSource:
    """kafka-python adapter; works with the 2.x (list_consumer_group_offsets) and 3.x (list_group_offsets) APIs."""

    def __init__(self, bootstrap_servers: str, request_timeout_ms: int = 10_000) -> None:
        from kafka import KafkaAdminClient, KafkaConsumer

        self._admin = KafkaAdminClient(
            bootstrap_servers=bootstrap_servers, client_id="floatbridge-lag-exporter",
            request_timeout_ms=request_timeout_ms,
        )
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
            client_id="floatbridge-lag-exporter", request_timeout_ms=max(request_timeout_ms, 11_000),
        )

    def groups(self) -> list[str]:
        if hasattr(self._admin, "list_consumer_groups"):  # kafka-python 2.x: [(group_id, protocol_type)]
            return [str(g[0]) for g in self._admin.list_consumer_groups()]
        return [str(_group_id(g)) for g in self._admin.list_groups()]

    def committed(self, group: str) -> dict[TopicPartitionKey, int]:
        if hasattr(self._admin, "list_consumer_group_offsets"):
            offsets = self._admin.list_consumer_group_offsets(group)
        else:
            offsets = self._admin.list_group_offsets({group: None}).get(group, {})
        return {(tp.topic, tp.partition): int(meta.offset) for tp, meta in offsets.items()}

    def end_offsets(self, partitions: Iterable[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        from kafka import TopicPartition

        tps = [TopicPartition(t, p) for t, p in partitions]
        if not tps:
            return {}
        return {(tp.topic, tp.partition): int(off) for tp, off in self._consumer.end_offsets(tps).items()}

    def close(self) -> None:
        self._admin.close()
        self._consumer.close()


def _group_id(group: Any) -> Any:
    if isinstance(group, dict):
        return group.get("group_id") or group.get("group")
    if isinstance(group, tuple):
        return group[0]
    return getattr(group, "group_id", group)


def serve(
    source: OffsetSource,
    port: int,
    host: str = "127.0.0.1",
    interval: float = 5.0,
    group_filter: set[str] | None = None,
    stop: threading.Event | None = None,
) -> LagCollector:
    """Start the HTTP endpoint and poll until `stop` is set (forever when None)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    collector = LagCollector(source, group_filter)
    collector.refresh()  # serve real numbers from the first scrape
    registry.register(collector)  # type: ignore[arg-type]
    start_http_server(port, addr=host, registry=registry)
    stop = stop or threading.Event()
    while not stop.wait(interval):
        collector.refresh()
    return collector
