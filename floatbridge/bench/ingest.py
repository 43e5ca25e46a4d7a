"""Ingest throughput: HTTP batch -> broker (acks=all, PostgreSQL dedupe) next to raw kafka-python producers."""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

from floatbridge.bench import infra
from floatbridge.bench.core import NotRun, Sizes

KEY = "bench-key"
BATCH = 500
CLIENTS = 4


def producer() -> str:
    """The sink the server uses: FLOATBRIDGE_INGEST_PRODUCER from this environment, else the default."""
    from services.ingest.settings import IngestSettings

    return os.environ.get("FLOATBRIDGE_INGEST_PRODUCER") or IngestSettings().producer


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (every thread, the Kafka client's network threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_env(bootstrap: str, db: str, schema: str, topics: list[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOATBRIDGE_INGEST_")}
    env.update({
        "FLOATBRIDGE_INGEST_PRODUCER": producer(),
        "FLOATBRIDGE_INGEST_KAFKA_BOOTSTRAP": bootstrap, "FLOATBRIDGE_INGEST_DATABASE_URL": db,
        "FLOATBRIDGE_INGEST_DATABASE_SCHEMA": schema,
        "FLOATBRIDGE_INGEST_EVENTS_TOPIC": topics[0], "FLOATBRIDGE_INGEST_REJECTED_TOPIC": topics[1],
        "FLOATBRIDGE_INGEST_API_KEYS": KEY, "FLOATBRIDGE_INGEST_BUYER_HASH_KEY": "bench-secret",
        "FLOATBRIDGE_INGEST_MAX_FUTURE_SKEW_SECONDS": "-1",
    })
    return env


def naive_rate(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> float:
    """kafka-python's defaults (linger 0, 16 KB batches, no idempotence) with acks=all, same payloads."""
    from services.ingest.bench import bench_raw

    return len(events) / bench_raw(bootstrap, topic, events, {"bootstrap_servers": bootstrap.split(","), "acks": "all"})


def core_rate(events: list[dict[str, Any]]) -> float:
    """IngestService alone (normalise, validate, claim, encode) with in-memory sink and dedupe store."""
    from services.ingest.adapters.jsoncodec import encode_canonical
    from services.ingest.adapters.memory import InMemoryDedupeStore, InMemorySink
    from services.ingest.bootstrap import codec_validator
    from services.ingest.domain.normalise import NormaliseContext
    from services.ingest.domain.service import IngestService

    ctx = NormaliseContext(b"bench-secret", max_future_skew=None, validator=codec_validator(), encode=encode_canonical)
    svc = IngestService(ctx, InMemorySink(), InMemoryDedupeStore())
    now = datetime.now(UTC)
    start = time.perf_counter()
    for i in range(0, len(events), BATCH):
        svc.submit(events[i:i + BATCH], now)
    return len(events) / (time.perf_counter() - start)


def run(sizes: Sizes) -> dict[str, float]:
    bootstrap = infra.kafka()
    if bootstrap is None:
        raise NotRun("no Kafka broker reachable (start it: bash deploy/local/infra.sh up)")
    db = infra.database()
    if db is None:
        raise NotRun("no PostgreSQL reachable for the dedupe store")
    import orjson

    from services.ingest import bench as ib

    n = sizes.pick(60_000, 3_000)
    sink = producer()
    print(f"ingest: server sink {sink} (FLOATBRIDGE_INGEST_PRODUCER)", file=sys.stderr, flush=True)
    rid = infra.run_id()
    schema = rid.replace("-", "_")
    topics = [f"{rid}.marketplace.events.v1", f"{rid}.ingest.rejected.v1", f"{rid}.raw-tuned", f"{rid}.raw-naive"]
    infra.create_topics(bootstrap, topics, 6)
    events = ib.make_events(rid, n + 4 * BATCH)
    bodies = [orjson.dumps(events[i:i + BATCH]) for i in range(0, len(events), BATCH)]
    timed = events[4 * BATCH:]
    try:
        port = ib._free_port()
        server = ib._start_server(_server_env(bootstrap, db, schema, topics), port)
        try:
            url = f"http://127.0.0.1:{port}"
            ib.bench_http(url, bodies[:4], 1)  # warm-up: connections, pools, first compilations
            cpu0 = _cpu_seconds(server.pid)
            elapsed, counts = ib.bench_http(url, bodies[4:], CLIENTS)
            server_cpu = _cpu_seconds(server.pid) - cpu0
        finally:
            server.terminate()
            server.wait(20)
        if counts.get("accepted", 0) != len(timed):
            raise RuntimeError(f"ingest accepted {counts} of {len(timed)} events")
        http = len(timed) / elapsed
        tuned = len(timed) / ib.bench_raw(bootstrap, topics[2], timed)
        naive = naive_rate(bootstrap, topics[3], timed)
    finally:
        infra.delete_topics(bootstrap, topics)
        infra.drop_schema(db, schema)
    core = core_rate(timed)
    return {"http_eps": http, "raw_tuned_eps": tuned, "raw_naive_eps": naive, "ratio_to_raw": http / tuned,
            "core_eps": core, "server_cpu_us_per_event": server_cpu / len(timed) * 1e6,
            "sink_librdkafka": 1.0 if sink == "librdkafka" else 0.0}
