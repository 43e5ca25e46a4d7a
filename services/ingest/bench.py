"""Throughput of POST /v1/events into a real broker, against a raw kafka-python producer.

    python -m services.ingest.bench --bootstrap 127.0.0.1:19092

Starts `floatbridge ingest serve` in a subprocess (real uvicorn, PostgreSQL or SQLite dedupe store),
posts batches of validated events from concurrent clients, then sends the same payloads with a bare
producer (acks=all) as the ceiling. Prints events per second for both. Not a test.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

DEFAULT_DB = "postgresql+psycopg2://floatbridge:floatbridge@127.0.0.1:55432/floatbridge"
KEY = "bench-key"
ROOT = Path(__file__).resolve().parents[2]


def make_events(run: str, n: int) -> list[dict[str, Any]]:
    return [{
        "specversion": "1.0", "id": f"{run}-{i}", "source": "marketplace://bench", "type": "order.placed",
        "time": "2024-05-01T11:00:00Z", "subject": f"m-{i % 5000}",
        "data": {"order_id": f"o-{i}", "buyer_id": f"b-{i % 20000}", "amount": {"amount": 1000 + i % 997, "currency": "BRL"}},
    } for i in range(n)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    admin.close()


def _start_server(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "floatbridge.cli", "ingest", "serve", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("ingest server did not become ready")


def bench_http(url: str, bodies: list[bytes], concurrency: int) -> tuple[float, dict[str, int]]:
    """Seconds to POST every body from `concurrency` keep-alive connections, and the summed answer counts.

    The client is stdlib http.client (real HTTP/1.1 over TCP, the same bytes as any client), not httpx:
    it shares the 2 cores with the server and the broker, and httpx cost ~3x its CPU per request. Every
    answer is checked: the counts must add up to the events sent and each result must name its event's
    id in order; a 503 is retried after a pause (the Retry-After contract), anything else is an error."""
    counts: dict[str, int] = {}
    errors: list[str] = []
    lock = threading.Lock()
    # The ids each answer must list, in order (read before the clock starts).
    queue = [(body, [e["id"] for e in orjson.loads(body)]) for body in reversed(bodies)]
    parsed = urlsplit(url)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}

    def check(sent: list[str], doc: dict[str, Any]) -> None:
        got = [r["id"] for r in doc["results"]]
        total = sum(doc[k] for k in ("accepted", "duplicate", "rejected", "retry"))
        if got != sent or total != len(sent):
            raise RuntimeError(f"answer does not match the batch: {len(got)} results, counts {total}, sent {len(sent)}")

    def worker() -> None:
        conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port, timeout=60)
        try:
            while True:
                with lock:
                    if not queue or errors:
                        return
                    body, ids = queue.pop()
                while True:
                    conn.request("POST", "/v1/events", body=body, headers=headers)
                    r = conn.getresponse()
                    content = r.read()
                    if r.status == 200:
                        break
                    if r.status != 503:
                        raise RuntimeError(f"HTTP {r.status}: {content[:200]!r}")
                    time.sleep(0.05)  # 503: honour the retry contract
                doc = orjson.loads(content)
                check(ids, doc)
                with lock:
                    for k in ("accepted", "duplicate", "rejected"):
                        counts[k] = counts.get(k, 0) + doc[k]
        except Exception as exc:  # reported after the run: a benchmark must not count a failed batch
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"benchmark client failed: {errors[0]}")
    return elapsed, counts


def bench_raw(bootstrap: str, topic: str, events: list[dict[str, Any]],
              config: dict[str, Any] | None = None) -> float:
    """Seconds for a bare kafka-python producer (ingest's settings unless `config`) to send the same
    canonical payloads and get every acknowledgement."""
    from kafka import KafkaProducer

    from services.ingest.adapters.kafka_sink import producer_config

    producer = KafkaProducer(**(config if config is not None else producer_config(bootstrap, 30.0)))
    payloads = [(e["subject"].encode(), orjson.dumps(e, option=orjson.OPT_SORT_KEYS), e["id"].encode())
                for e in events]
    start = time.perf_counter()
    futures = [producer.send(topic, value=v, key=k, headers=[("ce_id", i)]) for k, v, i in payloads]
    for f in futures:
        f.get(timeout=60)
    elapsed = time.perf_counter() - start
    producer.close()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bootstrap", default="127.0.0.1:19092", help="Kafka bootstrap servers")
    p.add_argument("--database-url", default=os.environ.get("FLOATBRIDGE_INGEST_DATABASE_URL", DEFAULT_DB),
                   help="dedupe store URL ('sqlite' for a temporary SQLite file)")
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--producer", choices=("librdkafka", "kafka-python"),
                   default=os.environ.get("FLOATBRIDGE_INGEST_PRODUCER") or "kafka-python",
                   help="the server's Kafka sink (FLOATBRIDGE_INGEST_PRODUCER)")
    args = p.parse_args(argv)

    run = "bench-" + uuid.uuid4().hex[:8]
    topics = [f"{run}.marketplace.events.v1", f"{run}.ingest.rejected.v1", f"{run}.raw-producer"]
    _create_topics(args.bootstrap, topics, args.partitions)
    db = args.database_url
    tmp = None
    if db == "sqlite":
        tmp = tempfile.mkdtemp()
        db = f"sqlite:///{tmp}/dedupe.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOATBRIDGE_INGEST_")}
    env.update({
        "FLOATBRIDGE_INGEST_KAFKA_BOOTSTRAP": args.bootstrap, "FLOATBRIDGE_INGEST_DATABASE_URL": db,
        "FLOATBRIDGE_INGEST_DATABASE_SCHEMA": run.replace("-", "_") if db.startswith("postgresql") else "",
        "FLOATBRIDGE_INGEST_EVENTS_TOPIC": topics[0], "FLOATBRIDGE_INGEST_REJECTED_TOPIC": topics[1],
        "FLOATBRIDGE_INGEST_API_KEYS": KEY, "FLOATBRIDGE_INGEST_BUYER_HASH_KEY": "bench-secret",
        "FLOATBRIDGE_INGEST_MAX_FUTURE_SKEW_SECONDS": "-1", "FLOATBRIDGE_INGEST_PRODUCER": args.producer,
    })
    events = make_events(run, args.events)
    bodies = [orjson.dumps(events[i:i + args.batch]) for i in range(0, len(events), args.batch)]
    port = _free_port()
    server = _start_server(env, port)
    try:
        bench_http(f"http://127.0.0.1:{port}", bodies[:4], 1)  # warm-up (first connections, JIT-free caches)
        warm = 4 * args.batch
        elapsed, counts = bench_http(f"http://127.0.0.1:{port}", bodies[4:], args.concurrency)
    finally:
        server.terminate()
        server.wait(20)
    n_http = args.events - warm
    http_rate = n_http / elapsed
    raw_elapsed = bench_raw(args.bootstrap, topics[2], events[warm:])
    raw_rate = n_http / raw_elapsed
    print(f"ingest HTTP : {n_http} events in {elapsed:.2f} s = {http_rate:,.0f} events/s "
          f"(batch {args.batch}, {args.concurrency} clients, dedupe {db.split(':')[0]}, sink {args.producer}) {counts}")
    print(f"raw producer: {n_http} events in {raw_elapsed:.2f} s = {raw_rate:,.0f} events/s (acks=all, idempotent)")
    print(f"ratio       : {http_rate / raw_rate:.2f}x of the raw producer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
