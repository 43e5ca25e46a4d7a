"""The whole product on real processes: ingest, two underwriter workers and disbursement against the
real broker and PostgreSQL. A marketplace pushes history over HTTP; the merchant receives a signed
offer webhook, accepts it over HTTP, gets the money once; the marketplace withholds what
collections.v1 asks from the next payout; the loan is repaid and the ledger balances."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from floatbridge.stack import Stack, StackConfig, free_ports
from schemas.codec import new_event
from tests.scenario import healthy_merchant, settlement

pytestmark = pytest.mark.e2e

INGEST_KEY = "e2e-marketplace-key-0123456789"
ADMIN_KEY = "e2e-admin-key-0123456789abcdef"
MERCHANT_KEY = "e2e-merchant-key-0123456789abc"


class MerchantReceiver:
    """The merchant's webhook endpoint: verifies signatures with the shipped verifier, accepts offers."""

    def __init__(self, accept_url: str) -> None:
        from services.disbursement.verifier.verify import WebhookVerificationError, verify

        self.secret = ""
        self.received: list[dict[str, Any]] = []
        self.rejected = 0
        self.accept_answers: list[tuple[int, dict[str, Any]]] = []
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        self.accepted_offer: dict[str, Any] | None = None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                try:
                    event = verify(receiver.secret, dict(self.headers.items()), body, seen_ids=receiver.seen)
                except WebhookVerificationError:
                    receiver.rejected += 1
                    self.send_response(400)
                    self.end_headers()
                    return
                receiver.received.append(event)
                self.send_response(204)
                self.end_headers()
                if event["type"] == "loan_offer.created":
                    with receiver.lock:  # the merchant takes one advance: the first offer that is still open
                        if any(code in (200, 202) for code, _ in receiver.accept_answers):
                            return
                        offer_id = event["data"]["offer_id"]
                        r = httpx.post(f"{accept_url}/v1/offers/{offer_id}/accept", timeout=10,
                                       headers={"Authorization": f"Bearer {MERCHANT_KEY}",
                                                "Idempotency-Key": f"accept-{offer_id}"})
                        receiver.accept_answers.append((r.status_code, r.json()))
                        if r.status_code in (200, 202):
                            receiver.accepted_offer = event

            def log_message(self, *_: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/webhooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def types(self) -> list[str]:
        return [e["type"] for e in self.received]

    def wait_for(self, etype: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.received:
                if e["type"] == etype:
                    return e
            time.sleep(0.2)
        raise AssertionError(f"no {etype} webhook within {timeout}s; got {self.types()} "
                             f"(accept answers {self.accept_answers})")


@pytest.fixture
def stack(kafka_bootstrap: str, pg_schema_url: str, fresh_topic_prefix: str, tmp_path: Path) -> Iterator[Stack]:
    ports = free_ports(10)  # ingest, disbursement, 4 worker metrics, 4 worker web ports: all distinct
    cfg = StackConfig(
        kafka=kafka_bootstrap, database_url=pg_schema_url, workdir=tmp_path, ingest_api_key=INGEST_KEY,
        admin_api_key=ADMIN_KEY, buyer_hash_key="e2e-buyer-hash-key", topic_prefix=fresh_topic_prefix,
        ingest_port=ports[0], disbursement_port=ports[1], metrics_ports=ports[2:6],
        web_ports=ports[6:], topic_partitions=4,
        extra_env={"FLOATBRIDGE_UNDERWRITER_FLUSH_INTERVAL_SECONDS": "0.5"},
    )
    s = Stack(cfg)
    s.prepare()
    s.start(wait=120)
    yield s
    s.stop()


def _post(url: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results = []
    for i in range(0, len(events), 500):
        r = httpx.post(f"{url}/v1/events", json=events[i:i + 500], timeout=60,
                       headers={"Authorization": f"Bearer {INGEST_KEY}"})
        assert r.status_code == 200, r.text[:500]
        results += r.json()["results"]
    return results


def _collection_owed(kafka: str, topic: str, merchant: str, timeout: float) -> int:
    """Read collections.v1 like the marketplace's settlement system does."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=kafka, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=1000)
    owed, deadline = 0, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and owed == 0:
            for rec in consumer:
                event = json.loads(rec.value)
                if event["subject"] == merchant:
                    owed = event["data"]["owed"]["amount"]
    finally:
        consumer.close()
    return owed


def test_marketplace_history_leads_to_offer_acceptance_payout_and_repayment(stack: Stack) -> None:
    cfg = stack.cfg
    ingest = f"http://127.0.0.1:{cfg.ingest_port}"
    disb = f"http://127.0.0.1:{cfg.disbursement_port}"
    receiver = MerchantReceiver(disb)
    mid = "merchant-e2e-1"
    r = httpx.post(f"{disb}/admin/merchants", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10,
                   json={"merchant_id": mid, "webhook_url": receiver.url, "api_key": MERCHANT_KEY, "currency": "BRL"})
    assert r.status_code == 201, r.text
    receiver.secret = r.json()["webhook_secret"]

    now = datetime.now(UTC).replace(microsecond=0)
    history = healthy_merchant(mid, now - timedelta(minutes=2), days=40, orders_per_day=5)
    results = _post(ingest, history.events)
    assert {x["status"] for x in results} == {"accepted"}, [x for x in results if x["status"] != "accepted"][:3]
    # A material event at "now" makes the underwriter decide at once with a fresh offer expiry.
    _post(ingest, [new_event("merchant.updated", mid, {"status": "active"}, now - timedelta(seconds=30),
                             "https://marketplace.example/events", id=f"{mid}-upd")])

    receiver.wait_for("loan_offer.created", 120)
    disbursed = receiver.wait_for("loan.disbursed", 90)
    offer = receiver.accepted_offer
    assert offer is not None, receiver.accept_answers
    assert offer["data"]["order_ids"], "an advance names the receivables it finances"
    loan_id = disbursed["data"]["loan_id"]
    owed_expected = disbursed["data"]["principal"]["amount"] + disbursed["data"]["fee"]["amount"]

    # Accepting again (a client retry) gives the same loan, not a second payout.
    again = httpx.post(f"{disb}/v1/offers/{offer['data']['offer_id']}/accept", timeout=10,
                       headers={"Authorization": f"Bearer {MERCHANT_KEY}",
                                "Idempotency-Key": f"accept-{offer['data']['offer_id']}"})
    assert again.status_code in (200, 202) and again.json()["loan_id"] == loan_id, again.text

    owed = _collection_owed(cfg.kafka, cfg.topic_prefix + "collections.v1", mid, 60)
    assert owed == owed_expected
    financed = set(offer["data"]["order_ids"])
    orders = [(o, a) for o, a in history.open_orders if o in financed] or history.open_orders
    pay = settlement(mid, datetime.now(UTC).replace(microsecond=0), orders, f"{mid}-final", withheld=owed)
    assert pay["data"]["withheld"]["amount"] == owed, "the payout must be big enough to repay in one go"
    _post(ingest, [pay])

    repaid = receiver.wait_for("loan.repaid", 90)
    assert repaid["data"]["loan_id"] == loan_id
    assert receiver.rejected == 0

    import sqlalchemy as sa

    from services.disbursement.adapters.orm import sandbox_payouts
    from services.disbursement.bootstrap import bootstrap

    svc = bootstrap(db_url=cfg.database_url, migrate=False)
    balances = svc.balances()
    assert sum(balances.values()) == 0, balances
    with svc.engine.connect() as conn:
        n = conn.execute(sa.select(sa.func.count()).select_from(sandbox_payouts)
                         .where(sandbox_payouts.c.idempotency_key == loan_id)).scalar()
    assert n == 1, "the payout rail paid exactly once for the accepted offer"

    # A record produced straight to the events topic that no service can apply is kept, not dropped: the
    # underwriter worker and the disbursement consumer each dead-letter it to ingest.rejected.v1.
    from kafka import KafkaConsumer, KafkaProducer

    producer = KafkaProducer(bootstrap_servers=cfg.kafka)
    producer.send(cfg.topic_prefix + "marketplace.events.v1", key=mid.encode(), value=b"[1, 2, 3]").get(30)
    producer.close()
    consumers: set[str] = set()
    reader = KafkaConsumer(cfg.topic_prefix + "ingest.rejected.v1", bootstrap_servers=cfg.kafka,
                           auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=1000)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and consumers != {"underwriter", "disbursement"}:
            consumers |= {json.loads(rec.value)["data"].get("consumer") for rec in reader} - {None}
    finally:
        reader.close()
    assert consumers == {"underwriter", "disbursement"}, consumers
