"""kill -9 of each service mid-stream, then restart: no accepted event lost, no offer duplicated, no
loan paid twice, the ledger balanced. Each test ends with the consistency checker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from floatbridge.audit.sources import audit
from floatbridge.audit.traffic import (
    Acceptor,
    DecisionFeeder,
    Marketplace,
    chunks,
    interleave,
    register_merchant,
)
from floatbridge.stack import Stack, StackConfig, free_ports
from tests.scenario import healthy_merchant

pytestmark = pytest.mark.e2e

INGEST_KEY = "fault-marketplace-key-0123456789"
ADMIN_KEY = "fault-admin-key-0123456789abcdef"


def make_stack(kafka: str, db: str, prefix: str, workdir: Path, workers: int) -> Stack:
    ports = free_ports(10)  # ingest, disbursement, 4 worker metrics, 4 worker web ports: all distinct
    return Stack(StackConfig(
        kafka=kafka, database_url=db, workdir=workdir, ingest_api_key=INGEST_KEY, admin_api_key=ADMIN_KEY,
        buyer_hash_key="fault-buyer-hash-key", topic_prefix=prefix, ingest_port=ports[0],
        disbursement_port=ports[1], metrics_ports=ports[2:6], web_ports=ports[6:],
        topic_partitions=4, underwriter_workers=workers,
        extra_env={"FLOATBRIDGE_UNDERWRITER_FLUSH_INTERVAL_SECONDS": "0.5",
                   "FLOATBRIDGE_DISBURSEMENT_RECOVERY_AFTER_SECONDS": "2"}))


@pytest.fixture
def edge_stack(kafka_bootstrap: str, pg_schema_url: str, fresh_topic_prefix: str, tmp_path: Path) -> Iterator[Stack]:
    """Ingest and disbursement; a DecisionFeeder plays the underwriter."""
    s = make_stack(kafka_bootstrap, pg_schema_url, fresh_topic_prefix, tmp_path, workers=0)
    s.prepare()
    try:
        s.start(wait=90)
        yield s
    finally:
        s.stop()


def histories(n: int, days: int = 10) -> list[tuple[str, list[tuple[str, int]], list[dict]]]:
    now = datetime.now(UTC).replace(microsecond=0)
    out = []
    for i in range(n):
        h = healthy_merchant(f"mk{i}", now - timedelta(minutes=1), days=days, orders_per_day=3, seed=i)
        out.append((h.merchant_id, h.open_orders, h.events))
    return out


def test_kill9_of_ingest_and_disbursement_mid_stream_loses_nothing_and_pays_once(edge_stack: Stack) -> None:
    cfg = edge_stack.cfg
    ingest, disb = f"http://127.0.0.1:{cfg.ingest_port}", f"http://127.0.0.1:{cfg.disbursement_port}"
    merchants = histories(3)
    keys = {mid: f"key-{mid}-0123456789abcdef" for mid, _, _ in merchants}
    for mid, key in keys.items():
        register_merchant(disb, ADMIN_KEY, mid, key)
    market = Marketplace(ingest, INGEST_KEY)
    batches = chunks(interleave([ev for _, _, ev in merchants]), 40)
    sender = threading.Thread(target=lambda: [market.send(b) for b in batches], daemon=True)
    sender.start()
    time.sleep(1.5)
    edge_stack.procs["ingest"].kill9()  # mid-stream: batches in flight are cut off
    time.sleep(0.5)
    edge_stack.restart("ingest")

    acceptor = Acceptor(disb, cfg.database_url, keys, period=0.2)
    acceptor.start()
    feeder = DecisionFeeder(cfg.kafka, cfg.topic_prefix)
    try:
        for mid, open_orders, _ in merchants[:2]:
            feeder.offer(mid, 5_000, [o for o, _ in open_orders[:2]])
        deadline = time.monotonic() + 30
        while not acceptor.answers and time.monotonic() < deadline:
            time.sleep(0.05)
        edge_stack.procs["disbursement"].kill9()  # during acceptances and payouts
        edge_stack.restart("disbursement")
        mid, open_orders, _ = merchants[2]
        feeder.offer(mid, 7_000, [o for o, _ in open_orders[:2]])
        sender.join(120)
        assert not sender.is_alive(), "the marketplace could not deliver its events in time"
        deadline = time.monotonic() + 60
        while len(acceptor.done) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        acceptor.stop()
        feeder.close()

    report = audit(cfg.kafka, cfg.database_url, cfg.topic_prefix, settle_seconds=60)
    assert report.ok, report.to_text()
    assert market.accepted_ids() <= set(report_ids(cfg)), "every event the marketplace saw accepted is on record"
    assert report.counts["loans"] == 3 and report.counts["payouts"] == 3, report.counts
    assert report.counts["ingest_accepted"] == sum(len(ev) for _, _, ev in merchants)


def report_ids(cfg: StackConfig) -> list[str]:
    from floatbridge.audit.sources import snapshot

    return snapshot(None, cfg.database_url).accepted_ids  # type: ignore[return-value]
