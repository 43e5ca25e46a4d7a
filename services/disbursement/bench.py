"""Acceptance latency benchmark: HTTP accept request -> loan.disbursed in the outbox -> published to Kafka.

    python -m services.disbursement.bench --db-url postgresql+psycopg2://... --kafka 127.0.0.1:19092 -n 300

Runs the real FastAPI app under uvicorn on an ephemeral port against PostgreSQL (a throwaway schema,
dropped afterwards) with the sandbox payout rail, and prints p50/p99 in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

DEFAULT_DB = "postgresql+psycopg2://floatbridge:floatbridge@127.0.0.1:55432/floatbridge"


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _events(merchant: str, offer_id: str, now: datetime) -> list[dict[str, Any]]:
    from schemas.codec import new_event

    def m(a: int) -> dict[str, Any]:
        return {"amount": a, "currency": "BRL"}

    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return [
        new_event("credit_limit.updated", merchant, {
            "limit": m(10**9), "available": m(10**9), "outstanding": m(0), "eligible_receivables": m(10**9),
            "pd": 0.01, "model_version": "bench", "reasons": [], "trigger_event_id": "t"}, now, "urn:bench"),
        new_event("loan_offer.created", merchant, {
            "offer_id": offer_id, "amount": m(50_000), "fee": m(1_200), "apr": "0.2190",
            "due_at": (now + timedelta(days=14)).strftime(fmt), "expires_at": (now + timedelta(hours=24)).strftime(fmt),
            "order_ids": [f"o-{offer_id}"], "pd": 0.01, "model_version": "bench", "reasons": []}, now, "urn:bench"),
    ]


def run(db_url: str, kafka: str | None, n: int, merchants: int) -> dict[str, float]:
    import httpx
    import uvicorn
    from prometheus_client import CollectorRegistry

    from services.disbursement.adapters.http_api import create_app
    from services.disbursement.adapters.orm import outbox
    from services.disbursement.bootstrap import bootstrap, make_engine
    from services.disbursement.migrations import upgrade
    from services.disbursement.settings import DisbursementSettings

    schema = "bench_" + uuid.uuid4().hex[:10]
    admin = sa.create_engine(db_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(db_url, schema)
    try:
        upgrade(engine)
        bus = None
        if kafka:
            from services.disbursement.adapters.kafka import KafkaPublisher

            bus = KafkaPublisher(kafka)
        svc = bootstrap(DisbursementSettings(topic_prefix=f"{schema}."), engine=engine, bus=bus,
                        transport=lambda u, h, b: 200, registry=CollectorRegistry(), auto_relay=False)
        now = datetime.now(UTC)
        keys = {}
        for i in range(merchants):
            mid = f"bench-m{i}"
            keys[mid] = f"bench-key-{i}-{uuid.uuid4().hex}"
            svc.register_merchant(mid, None, keys[mid])
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(svc), host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        to_outbox: list[float] = []
        to_published: list[float] = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for i in range(n + 20):  # the first 20 warm up pools and caches
                mid = f"bench-m{i % merchants}"
                offer_id = f"bench-of-{i}"
                for ev in _events(mid, offer_id, now):
                    svc.handle(ev)
                t0 = time.perf_counter()
                r = client.post(f"/v1/offers/{offer_id}/accept",
                                headers={"Authorization": f"Bearer {keys[mid]}", "Idempotency-Key": offer_id})
                t1 = time.perf_counter()
                if r.status_code != 200:
                    raise SystemExit(f"accept failed: {r.status_code} {r.text}")
                with engine.connect() as conn:  # the answer is only sent after loan.disbursed is committed
                    assert conn.execute(sa.select(sa.func.count()).select_from(outbox).where(
                        outbox.c.payload.like('%"type":"loan.disbursed"%' + r.json()["loan_id"] + '%'))).scalar_one()
                if bus is not None:
                    svc.relay_outbox()
                t2 = time.perf_counter()
                if i >= 20:
                    to_outbox.append((t1 - t0) * 1000)
                    to_published.append((t2 - t0) * 1000)
        server.should_exit = True
        out = {"n": float(n), "outbox_p50_ms": statistics.median(to_outbox), "outbox_p99_ms": _pct(to_outbox, 99),
               "outbox_max_ms": max(to_outbox)}
        if bus is not None:
            out |= {"published_p50_ms": statistics.median(to_published), "published_p99_ms": _pct(to_published, 99)}
            bus.close()
        return out
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db-url", default=os.environ.get("FLOATBRIDGE_TEST_DATABASE_URL", DEFAULT_DB))
    ap.add_argument("--kafka", default=os.environ.get("FLOATBRIDGE_TEST_KAFKA"), help="broker; omit to skip publishing")
    ap.add_argument("-n", type=int, default=300, help="acceptances to time")
    ap.add_argument("--merchants", type=int, default=20)
    args = ap.parse_args()
    res = run(args.db_url, args.kafka, args.n, args.merchants)
    print(f"acceptances: {int(res['n'])}")
    print(f"HTTP accept -> loan.disbursed in outbox : p50 {res['outbox_p50_ms']:.1f} ms  "
          f"p99 {res['outbox_p99_ms']:.1f} ms  max {res['outbox_max_ms']:.1f} ms")
    if "published_p50_ms" in res:
        print(f"HTTP accept -> published to Kafka       : p50 {res['published_p50_ms']:.1f} ms  "
              f"p99 {res['published_p99_ms']:.1f} ms")
    print("goal p99 <= 100 ms:", "met" if res.get("published_p99_ms", res["outbox_p99_ms"]) <= 100 else "NOT met")


if __name__ == "__main__":
    main()
