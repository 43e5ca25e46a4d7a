"""Ingest against a real broker and PostgreSQL: exactly-once intake across batches, restarts and kill -9."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.ingest.adapters.http import create_app
from services.ingest.adapters.memory import InMemoryDedupeStore
from services.ingest.adapters.sql_dedupe import SqlDedupeStore
from services.ingest.bootstrap import bootstrap, kafka_sink
from services.ingest.settings import IngestSettings
from tests.integration.ingest_support import (
    AUTH,
    IngestProcess,
    create_topics,
    drain_raw_intake,
    free_port,
    ids_on,
    ingest_env,
    post,
    post_until_final,
    read_topic,
)
from tests.unit.ingest_helpers import placed

pytestmark = pytest.mark.integration


@pytest.fixture
def topics(kafka_bootstrap: str, fresh_topic_prefix: str) -> str:
    create_topics(kafka_bootstrap, *(fresh_topic_prefix + t for t in
                                     ("marketplace.events.v1", "ingest.rejected.v1", "marketplace.raw.v1")))
    return fresh_topic_prefix


@pytest.fixture(params=["kafka-python", "librdkafka"])
def producer(request: pytest.FixtureRequest) -> str:
    """Both sink adapters keep the same contract (FLOATBRIDGE_INGEST_PRODUCER)."""
    return str(request.param)


def _events(prefix: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    return [placed(f"{prefix}-{i}", subject=f"m-{i % 7}") for i in range(start, start + n)]


def test_duplicates_within_across_batches_and_across_restart_give_one_record_each(
        kafka_bootstrap: str, pg_schema_url: str, topics: str, producer: str) -> None:
    env = ingest_env(kafka_bootstrap, pg_schema_url, topics, FLOATBRIDGE_INGEST_PRODUCER=producer)
    first = IngestProcess(env)
    try:
        batch = _events("e", 20)
        r = post(first.url, batch + batch[:5])
        assert r.status_code == 200
        assert [x["status"] for x in r.json()["results"]] == ["accepted"] * 20 + ["duplicate"] * 5
        r = post(first.url, batch[5:10] + [placed("bad", amount={"amount": 1.5, "currency": "BRL"})])
        assert [x["status"] for x in r.json()["results"]] == ["duplicate"] * 5 + ["rejected"]
    finally:
        first.stop()
    second = IngestProcess(env)  # a new process on the same PostgreSQL dedupe store
    try:
        r = post(second.url, batch[10:] + _events("e", 3, start=20))
        assert [x["status"] for x in r.json()["results"]] == ["duplicate"] * 10 + ["accepted"] * 3
        conflict = placed("e-0", amount={"amount": 1, "currency": "BRL"}, subject="m-0")
        assert post(second.url, [conflict]).json()["results"][0]["reason"] == "conflict"
    finally:
        second.stop()
    on_topic = ids_on(kafka_bootstrap, topics + "marketplace.events.v1")
    assert on_topic == {f"e-{i}": 1 for i in range(23)}
    rejected = read_topic(kafka_bootstrap, topics + "ingest.rejected.v1")
    assert sorted(json.loads(r.value)["data"]["reason"] for r in rejected) == ["conflict", "money"]
    keys = {rec.key.decode() for rec in read_topic(kafka_bootstrap, topics + "marketplace.events.v1")}
    assert keys == {f"m-{i}" for i in range(7)}


def test_kill_9_between_batches_while_client_retries_loses_and_duplicates_nothing(
        kafka_bootstrap: str, pg_schema_url: str, topics: str, producer: str) -> None:
    env = ingest_env(kafka_bootstrap, pg_schema_url, topics, FLOATBRIDGE_INGEST_PRODUCER=producer)
    server = [IngestProcess(env)]
    acknowledged: set[str] = set()
    previous: list[dict[str, Any]] = []
    try:
        for round_no in range(4):
            batch = _events(f"r{round_no}", 50)
            # Resend the previous batch too: a client that never saw its answer would do so.
            results = post_until_final(lambda: server[0].url, previous + batch)
            assert {x["status"] for x in results[:len(previous)]} <= {"duplicate"}
            acknowledged |= {x["id"] for x in results if x["status"] == "accepted"}
            previous = batch
            server[0].kill9()
            server[0] = IngestProcess(env)
    finally:
        server[0].stop()
    assert len(acknowledged) == 200
    assert ids_on(kafka_bootstrap, topics + "marketplace.events.v1") == dict.fromkeys(acknowledged, 1)


def test_kill_9_during_a_batch_loses_nothing_and_dedupes_by_id_header(
        kafka_bootstrap: str, pg_schema_url: str, topics: str, producer: str) -> None:
    env = ingest_env(kafka_bootstrap, pg_schema_url, topics, FLOATBRIDGE_INGEST_PRODUCER=producer)
    server = [IngestProcess(env)]
    batch = _events("mid", 300)
    answers: list[list[dict[str, Any]]] = []
    client = threading.Thread(target=lambda: answers.append(post_until_final(lambda: server[0].url, batch)))
    client.start()
    time.sleep(0.05)
    server[0].kill9()
    server[0] = IngestProcess(env)
    client.join(90)
    try:
        assert answers and {x["status"] for x in answers[0]} <= {"accepted", "duplicate"}
    finally:
        server[0].stop()
    on_topic = ids_on(kafka_bootstrap, topics + "marketplace.events.v1")
    # At-least-once on the topic, exactly once by ce_id header (what consumers dedupe on).
    assert set(on_topic) == {e["id"] for e in batch}


def test_broker_on_dead_port_answers_503_with_retry_after_and_readyz_fails(tmp_path: Any, producer: str) -> None:
    settings = IngestSettings(buyer_hash_key="k", api_keys=("integration-key",), produce_timeout_seconds=1.5,
                              producer=producer, kafka_bootstrap=f"127.0.0.1:{free_port()}",
                              events_topic="x.events", rejected_topic="x.rejected")
    sink = kafka_sink(settings)
    rt = bootstrap(settings, sink=sink, dedupe=InMemoryDedupeStore())
    with TestClient(create_app(rt)) as c:
        start = time.monotonic()
        r = c.post("/v1/events", json=[placed("a")], headers=AUTH)
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 0
        assert r.json()["results"][0]["status"] == "retry"
        assert time.monotonic() - start < 10
        assert c.get("/readyz").status_code == 503
    assert rt.dedupe.state("a") is None  # claim released: a retry after recovery is not blocked


def test_two_replicas_sharing_postgres_produce_each_id_once(
        kafka_bootstrap: str, pg_schema_url: str, topics: str, producer: str) -> None:
    env = ingest_env(kafka_bootstrap, pg_schema_url, topics, FLOATBRIDGE_INGEST_PRODUCER=producer)
    a, b = IngestProcess(env), IngestProcess(env)
    batch = _events("rep", 200)
    out: dict[str, list[dict[str, Any]]] = {}
    try:
        threads = [threading.Thread(target=lambda s=s, n=n: out.__setitem__(n, post_until_final(lambda: s.url, batch)))
                   for n, s in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
    finally:
        a.stop()
        b.stop()
    assert set(out) == {"a", "b"}
    accepted = [x["id"] for res in out.values() for x in res if x["status"] == "accepted"]
    assert sorted(accepted) == sorted(e["id"] for e in batch)
    assert ids_on(kafka_bootstrap, topics + "marketplace.events.v1") == {e["id"]: 1 for e in batch}


def test_consume_raw_validates_routes_and_commits_after_produce(
        kafka_bootstrap: str, pg_schema_url: str, topics: str) -> None:
    from kafka import KafkaProducer

    settings = IngestSettings(
        buyer_hash_key="k", kafka_bootstrap=kafka_bootstrap, database_url=pg_schema_url,
        events_topic=topics + "marketplace.events.v1", rejected_topic=topics + "ingest.rejected.v1",
        raw_topic=topics + "marketplace.raw.v1", raw_group_id=topics + "raw")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    values = [json.dumps(e).encode() for e in _events("raw", 10)] + [json.dumps(_events("raw", 1)[0]).encode(),
                                                                   b'{"broken', json.dumps({"x": 1}).encode()]
    for v in values:
        producer.send(settings.raw_topic, v, key=b"m")
    producer.flush()
    producer.close()
    dedupe = SqlDedupeStore(pg_schema_url, timedelta(seconds=1))
    drain_raw_intake(settings, dedupe, len(values), deadline_s=30)
    assert ids_on(kafka_bootstrap, settings.events_topic) == {f"raw-{i}": 1 for i in range(10)}
    rejected = [json.loads(r.value)["data"] for r in read_topic(kafka_bootstrap, settings.rejected_topic)]
    assert sorted(r["reason"] for r in rejected) == ["malformed", "schema"]
    assert {r["source"] for r in rejected} == {"kafka:" + settings.raw_topic}
