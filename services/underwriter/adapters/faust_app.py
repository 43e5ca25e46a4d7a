"""The Faust worker: marketplace.events.v1 + loans.v1 in, credit.limits.v1 + loan.offers.v1 out.

Merchant state lives in a changelog-backed table (bytes from MerchantState.to_bytes), so a restarted or added
worker restores it; RocksDB in production (`store=rocksdb://`), memory in tests. Portfolio counters live in a
global table (every worker sees every counter; concurrent updates from several workers are last-writer-wins,
so portfolio caps are approximate across workers). A timer flushes debounced merchants.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime
from typing import Any

import faust
from faust.types import EventT

from schemas import codec, topics
from services.underwriter.bootstrap import bootstrap
from services.underwriter.domain.state import StateError
from services.underwriter.settings import UnderwriterSettings

log = logging.getLogger("floatbridge.underwriter")


class TableStore(MutableMapping[str, bytes]):
    """The state-store port over a Faust table.

    Writes inside the agent go through the table (changelog partition = the current event's). The flush timer
    runs outside any event, so it writes to the table's data and sends the changelog record itself, to the
    partition remembered from that merchant's last event.
    """

    # Values are base64 text in the table: Faust's changelog recovery decodes raw values as UTF-8.

    def __init__(self, table: Any) -> None:
        self.table = table
        self.partition_of: dict[str, int] = {}
        self._last: dict[str, tuple[Any, bytes]] = {}  # keeps decoded identity stable for the core's cache

    def __getitem__(self, key: str) -> bytes:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return bytes(value)

    def get(self, key: str, default: Any = None) -> Any:
        stored = self.table.get(key)
        if stored is None:
            return default
        last = self._last.get(key)
        if last is not None and last[0] is stored:
            return last[1]
        raw = base64.b64decode(stored.encode("ascii") if isinstance(stored, str) else stored)
        self._last[key] = (stored, raw)
        if len(self._last) > 10_000:
            self._last.pop(next(iter(self._last)))
        return raw

    def __setitem__(self, key: str, raw: bytes) -> None:
        value = base64.b64encode(raw).decode("ascii")
        self._last[key] = (value, raw)
        event = faust.current_event()
        if event is not None:
            self.partition_of[key] = event.message.partition
            self.table[key] = value
            return
        partition = self.partition_of.get(key)
        if partition is None:
            raise RuntimeError(f"no known changelog partition for merchant {key!r}")
        self.table.data[key] = value
        self.table.send_changelog(partition, key, value)

    def __delitem__(self, key: str) -> None:
        del self.table[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.table.keys())

    def __len__(self) -> int:
        return len(self.table.data)


def create_app(settings: UnderwriterSettings, **bootstrap_kwargs: Any) -> tuple[faust.App, Any]:
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store=settings.store,
        datadir=settings.data_dir,
        topic_partitions=settings.partitions,
        web_port=settings.web_port or 6066,
        web_enabled=settings.web_port > 0,
        producer_acks=-1,
    )
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    source = app.topic(settings.marketplace_topic, settings.loans_topic, **raw)
    limits_topic = app.topic(settings.limits_topic, **raw)
    offers_topic = app.topic(settings.offers_topic, **raw)
    # JSON keys and values (the app default): state values are base64 text of MerchantState.to_bytes.
    table = app.Table("merchant-state", default=None, partitions=settings.partitions)
    counters = app.GlobalTable("portfolio-counters", default=int, partitions=1, use_partitioner=True)
    store = TableStore(table)
    from services.underwriter.service import MemoryPortfolio

    uw = bootstrap(settings=settings, state_store=store, portfolio=MemoryPortfolio(counters), **bootstrap_kwargs)
    clock: dict[str, float] = {"event": 0.0, "wall": 0.0}

    async def emit(events: list[dict[str, Any]]) -> None:
        for ev in events:
            topic = limits_topic if ev["type"] == "credit_limit.updated" else offers_topic
            await topic.send(key=ev["subject"].encode("utf-8"), value=codec.encode(ev), key_serializer="raw",
                             value_serializer="raw")

    @app.agent(source)
    async def underwrite(stream: Any) -> None:
        async for event in stream.events():
            await emit(process(uw, event, clock))

    @app.timer(interval=settings.flush_interval_seconds)
    async def flush_pending() -> None:
        if not clock["wall"]:
            return
        # Event-time "now": the latest event time seen, advanced by the wall time since it was consumed.
        now = datetime.fromtimestamp(clock["event"] + (time.time() - clock["wall"]), UTC)
        await emit(uw.flush(now))

    app.underwriter = uw  # type: ignore[attr-defined]
    return app, uw


def process(uw: Any, event: EventT, clock: dict[str, float]) -> list[dict[str, Any]]:
    """Decode and handle one record; undecodable or inapplicable records are logged and skipped."""
    try:
        ev = codec.decode(event.value)
        allowed = topics.types_on(event.message.topic)
        if allowed is not None and isinstance(ev, dict) and ev.get("type") not in allowed:
            raise ValueError(f"type {str(ev.get('type'))[:64]!r} does not belong on {event.message.topic}")
        out: list[dict[str, Any]] = uw.handle(ev)
    except (codec.EventInvalid, StateError, KeyError, TypeError, ValueError) as exc:
        log.warning("skipping record at %s[%s]@%s: %s", event.message.topic, event.message.partition,
                    event.message.offset, exc)
        return []
    try:
        ts = datetime.fromisoformat(ev["time"].replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError, AttributeError):
        return out
    if ts >= clock["event"]:
        clock["event"], clock["wall"] = ts, time.time()
    return out


def attach_faust_sensor(app: Any, registry: Any) -> None:
    """Faust's own Prometheus sensor (messages, events, commit/send latency, rebalances, table ops) into the
    service's registry, named floatbridge_underwriter_faust_*."""
    from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor

    app.monitor = PrometheusMonitor(metrics=FaustMetrics.create(registry, "floatbridge_underwriter_faust"))


def run_worker(settings: UnderwriterSettings, loglevel: str = "warning") -> int:
    app, uw = create_app(settings)
    attach_faust_sensor(app, uw.metrics.registry)
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, registry=uw.metrics.registry)
    worker = faust.Worker(app, loglevel=loglevel)
    worker.execute_from_commandline()
    return 0


__all__ = ["TableStore", "attach_faust_sensor", "create_app", "process", "run_worker"]
