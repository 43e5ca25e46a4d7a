"""Prometheus metrics of the ingest service (one registry per service instance)."""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from schemas.codec import MARKETPLACE_TYPES
from services.ingest.domain.model import EventResult, Status

_KNOWN_TYPES = frozenset(MARKETPLACE_TYPES)


def type_label(event_type: str | None) -> str:
    return event_type if event_type in _KNOWN_TYPES else "unknown"


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.received = Counter("floatbridge_ingest_events_received_total", "Events received", ["type", "intake"], registry=r)
        self.accepted = Counter("floatbridge_ingest_events_accepted_total", "Events produced and acknowledged", ["type"], registry=r)
        self.duplicate = Counter("floatbridge_ingest_events_duplicate_total", "Events already taken (same id and content)", ["type"], registry=r)
        self.rejected = Counter("floatbridge_ingest_events_rejected_total", "Events rejected to the dead letter", ["type", "reason"], registry=r)
        self.retry = Counter("floatbridge_ingest_events_retry_total", "Events answered retry-later", ["type"], registry=r)
        self.refused = Counter("floatbridge_ingest_requests_refused_total", "Whole requests refused", ["reason"], registry=r)
        self.batch_size = Histogram("floatbridge_ingest_batch_size_events", "Events per batch",
                                    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 5000), registry=r)
        self.produce_latency = Histogram("floatbridge_ingest_produce_latency_seconds", "Produce until broker ack",
                                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                         registry=r)
        self.inflight = Gauge("floatbridge_ingest_inflight_requests", "Batches being processed", registry=r)
        self.dedupe_rows = Gauge("floatbridge_ingest_dedupe_store_rows", "Rows in the dedupe store", registry=r)
        self.http_requests = Counter("floatbridge_ingest_http_requests_total", "HTTP requests", ["route", "method", "status"], registry=r)
        self.http_duration = Histogram("floatbridge_ingest_http_request_duration_seconds", "HTTP request duration",
                                       ["route"], registry=r)
        self.purged = Counter("floatbridge_ingest_dedupe_purged_total", "Dedupe rows purged after the window", registry=r)

    def record(self, results: Sequence[EventResult], intake: str) -> None:
        self.batch_size.observe(len(results))
        # Count first, then one labelled increment per (status, type, reason): a labels() lookup takes a
        # lock and hashes the label tuple, which per event cost more than the rest of this method.
        tally: collections.Counter[tuple[Status, str | None, str]] = collections.Counter(
            (res.status, res.event_type, res.reason.value if res.reason else "schema") for res in results)
        received: collections.Counter[str] = collections.Counter()
        for (status, etype, reason), n in tally.items():
            t = type_label(etype)
            received[t] += n
            if status is Status.ACCEPTED:
                self.accepted.labels(t).inc(n)
            elif status is Status.DUPLICATE:
                self.duplicate.labels(t).inc(n)
            elif status is Status.REJECTED:
                self.rejected.labels(t, reason).inc(n)
            else:
                self.retry.labels(t).inc(n)
        for t, n in received.items():
            self.received.labels(t, intake).inc(n)

    def watch_dedupe_size(self, size: Callable[[], int], every_s: float = 15.0) -> None:
        """Count rows at most every `every_s` seconds, on scrape (COUNT(*) is not free)."""
        cache = {"at": 0.0, "value": 0.0}

        def read() -> float:
            now = time.monotonic()
            if now - cache["at"] >= every_s:
                cache["at"] = now
                # The store being down must not break /metrics.
                with contextlib.suppress(Exception):
                    cache["value"] = float(size())
            return cache["value"]

        self.dedupe_rows.set_function(read)
