"""Secrets and privacy on real processes: with known test secrets and a known raw buyer id, no secret
appears in any log, and the raw buyer id appears nowhere past ingest (logs, every topic, every table)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from floatbridge.audit.sources import audit, read_topic
from floatbridge.audit.traffic import DecisionFeeder, Marketplace, register_merchant
from schemas import topics as t
from tests.e2e.test_faults_kill import ADMIN_KEY, INGEST_KEY, histories, make_stack

pytestmark = pytest.mark.e2e
RAW_BUYER = "raw-buyer-7731-maria.silva@example.com"
MERCHANT_KEY = "merchant-secret-key-55c1d7e0a9"
WEBHOOK_SECRET = "whsec_c2VjcmV0LXdlYmhvb2sta2V5LWZvci10ZXN0cy0wMDE="
BUYER_HASH_KEY = "fault-buyer-hash-key"  # make_stack's


def test_no_secret_in_logs_and_no_raw_buyer_id_past_ingest(kafka_bootstrap: str, pg_schema_url: str,
                                                           fresh_topic_prefix: str, tmp_path: Path) -> None:
    stack = make_stack(kafka_bootstrap, pg_schema_url, fresh_topic_prefix, tmp_path, workers=0)
    stack.prepare()
    stack.start(wait=90)
    feeder = DecisionFeeder(kafka_bootstrap, fresh_topic_prefix)
    try:
        ingest, disb = f"http://127.0.0.1:{stack.cfg.ingest_port}", f"http://127.0.0.1:{stack.cfg.disbursement_port}"
        (mid, open_orders, events), = histories(1, days=3)
        for e in events:
            if e["type"] == "order.placed":
                e["data"]["buyer_id"] = RAW_BUYER
        bad = dict(events[1], id="bad-1", data={**events[1]["data"], "amount": {"amount": -1, "currency": "BRL"}})
        register_merchant(disb, ADMIN_KEY, mid, MERCHANT_KEY, webhook_url="http://127.0.0.1:9/hooks",
                          webhook_secret=WEBHOOK_SECRET)
        Marketplace(ingest, INGEST_KEY).send([*events, bad])
        httpx.post(f"{ingest}/v1/events", json=[], headers={"Authorization": "Bearer wrong-" + INGEST_KEY})
        oid = feeder.offer(mid, 3_000, [open_orders[0][0]])
        for _ in range(60):
            r = httpx.post(f"{disb}/v1/offers/{oid}/accept", timeout=10,
                           headers={"Authorization": f"Bearer {MERCHANT_KEY}", "Idempotency-Key": "k1"})
            if r.status_code in (200, 202):
                break
            time.sleep(0.5)
        assert r.status_code in (200, 202), r.text
        report = audit(kafka_bootstrap, pg_schema_url, fresh_topic_prefix, settle_seconds=30)
        assert report.ok, report.to_text()
    finally:
        feeder.close()
        stack.stop()

    secrets = [INGEST_KEY, ADMIN_KEY, BUYER_HASH_KEY, MERCHANT_KEY, WEBHOOK_SECRET, WEBHOOK_SECRET[6:]]
    logs = {p.name: p.read_text(errors="replace") for p in (tmp_path / "logs").glob("*.log")}
    assert logs, "the services wrote logs"
    for name, text in logs.items():
        for s in secrets:
            assert s not in text, f"a test secret appears in {name}"
        assert RAW_BUYER not in text, f"the raw buyer id appears in {name}"

    topic_text = []
    for topic in [x.name for x in t.catalog()]:
        records, _ = read_topic(kafka_bootstrap, fresh_topic_prefix + topic)
        topic_text += [str(v) + str(h) for h, v in records]
    assert any("bad-1" in x for x in topic_text), "the rejected event reached the dead letter"
    assert not [x for x in topic_text if RAW_BUYER in x], "raw buyer id on a topic"

    engine = sa.create_engine(pg_schema_url)
    try:
        with engine.connect() as conn:
            for table in sa.inspect(conn).get_table_names():
                rows = conn.execute(sa.text(f'SELECT t::text FROM "{table}" t')).scalars().all()
                assert not [r for r in rows if RAW_BUYER in r], f"raw buyer id in table {table}"
    finally:
        engine.dispose()
