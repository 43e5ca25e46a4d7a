from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from services.underwriter.adapters.faust_app import attach_faust_sensor, create_app
from services.underwriter.settings import load

pytestmark = pytest.mark.unit


def test_worker_exports_faust_sensor_metrics_beside_its_own_under_the_service_prefix() -> None:
    app, uw = create_app(load(store="memory://", web_port=0, metrics_port=0))
    registry = uw.metrics.registry
    attach_faust_sensor(app, registry)
    names = {m.name for m in registry.collect()}
    faust_names = {n for n in names if n.startswith("floatbridge_underwriter_faust_")}
    assert "floatbridge_underwriter_faust_messages_received" in faust_names, sorted(faust_names)[:10]
    assert any(n.startswith("floatbridge_underwriter_") and "faust" not in n for n in names)
    assert isinstance(registry, CollectorRegistry)


def test_the_worker_shortens_the_brokers_fetch_wait_of_its_running_client_and_can_give_fausts_back() -> None:
    # aiokafka keeps one fetch in flight per broker; a fetch holding only quiet partitions blocked the busy ones
    # for as long as the broker may hold it (Faust hard-codes 1,500 ms): the worker's 1 s latency windows.
    from types import SimpleNamespace

    from services.underwriter.adapters import faust_intake

    consumer = SimpleNamespace(_thread=SimpleNamespace(_consumer=None))
    assert not faust_intake.set_fetch_max_wait(consumer, 20)  # not started: nothing to set
    fetcher = SimpleNamespace(_fetch_max_wait_ms=faust_intake.FAUST_FETCH_MAX_WAIT_MS)
    consumer._thread._consumer = SimpleNamespace(_fetcher=fetcher)
    assert faust_intake.set_fetch_max_wait(consumer, load(fetch_max_wait_ms=20).fetch_max_wait_ms)
    assert fetcher._fetch_max_wait_ms == 20
    assert faust_intake.set_fetch_max_wait(consumer, faust_intake.FAUST_FETCH_MAX_WAIT_MS)  # a rebalance
    assert fetcher._fetch_max_wait_ms == 1500


def test_table_writes_wait_in_the_worker_outbox_in_write_order_not_in_fausts_producer_buffer() -> None:
    # Faust's buffer sends one record per turn of the event loop; with batches keeping the loop busy it fell
    # behind by thousands of records and the next commit, which flushes it, stalled the worker for seconds.
    import asyncio

    from services.underwriter.adapters import faust_intake

    app, uw = create_app(load(store="memory://", web_port=0, metrics_port=0, partitions=4))

    class Message:
        topic, partition, offset, timestamp, value, key = "marketplace.events.v1", 2, 5, 0.0, b"{}", b"m1"

    async def write() -> None:
        uw.store.remember("m1", faust_intake.Record(Message()))
        uw.store["m1"] = b"state-1"
        uw.store["m1"] = b"state-2"

    asyncio.run(write())
    assert app.producer.buffer.size == 0
    assert [f.message.partition for f in app.outbox] == [2, 2]  # the merchant's input partition
    assert [f.message.value for f in app.outbox] == [b'"c3RhdGUtMQ=="', b'"c3RhdGUtMg=="']  # base64, in order
