"""Helpers for the ingest integration tests: topics, reading a topic back, an ingest subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
KEY = "integration-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def create_topics(bootstrap: str, *names: str, partitions: int = 3) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="ingest-tests")
    try:
        admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        admin.close()


def read_topic(bootstrap: str, topic: str, timeout_s: float = 20.0) -> list[Any]:
    """Every record currently on `topic` (reads to the end offsets)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in parts):
            assert time.monotonic() < deadline, f"timed out reading {topic}"
            for batch in consumer.poll(timeout_ms=500).values():
                out.extend(batch)
        return out
    finally:
        consumer.close()


def ids_on(bootstrap: str, topic: str) -> Counter[str]:
    return Counter(dict(rec.headers)["ce_id"].decode() for rec in read_topic(bootstrap, topic))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ingest_env(kafka: str, db_url: str, prefix: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOATBRIDGE_INGEST_")}
    env.update({
        "FLOATBRIDGE_INGEST_KAFKA_BOOTSTRAP": kafka,
        "FLOATBRIDGE_INGEST_DATABASE_URL": db_url,
        "FLOATBRIDGE_INGEST_EVENTS_TOPIC": prefix + "marketplace.events.v1",
        "FLOATBRIDGE_INGEST_REJECTED_TOPIC": prefix + "ingest.rejected.v1",
        "FLOATBRIDGE_INGEST_API_KEYS": KEY,
        "FLOATBRIDGE_INGEST_BUYER_HASH_KEY": "integration-secret",
        "FLOATBRIDGE_INGEST_DEDUPE_LEASE_SECONDS": "1",
        "FLOATBRIDGE_INGEST_PRODUCE_TIMEOUT_SECONDS": "5",
    })
    env.update(extra)
    return env


class IngestProcess:
    """`floatbridge ingest serve` in a subprocess."""

    def __init__(self, env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "floatbridge.cli", "ingest", "serve", "--host", "127.0.0.1",
             "--port", str(self.port)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ingest exited: {self.proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "ingest did not start"
            time.sleep(0.1)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()
        if self.proc.stderr:
            self.proc.stderr.close()


def post(url: str, events: list[Any], timeout: float = 30.0) -> httpx.Response:
    return httpx.post(url + "/v1/events", json=events, headers=AUTH, timeout=timeout)


def post_until_final(url_of: Any, events: list[Any], deadline_s: float = 60.0) -> list[dict[str, Any]]:
    """Retry (connection errors and 503) until every event has a final answer, like a client should."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            r = post(url_of(), events)
            if r.status_code == 200:
                return list(r.json()["results"])
            assert r.status_code == 503, r.text
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "events never became final"
        time.sleep(0.3)


def drain_raw_intake(settings: Any, dedupe: Any, records: int, deadline_s: float = 60.0) -> None:
    """Run ingest's marketplace.raw.v1 intake until `records` records are handled, asserting each poll committed
    what it handled and that the group's offsets end at the topic's end."""
    from kafka import TopicPartition

    from services.ingest.adapters.raw_consumer import make_consumer, process_once
    from services.ingest.bootstrap import bootstrap

    rt = bootstrap(settings, dedupe=dedupe)
    consumer = make_consumer(rt)
    try:
        seen = 0
        deadline = time.monotonic() + deadline_s
        while seen < records:
            assert time.monotonic() < deadline, f"only {seen} of {records} records were handled"
            n, committed = process_once(rt, consumer)
            assert committed or n == 0
            seen += n
        parts = [TopicPartition(settings.raw_topic, p) for p in consumer.partitions_for_topic(settings.raw_topic)]
        ends = consumer.end_offsets(parts)
        assert all(consumer.committed(tp) == ends[tp] for tp in parts)
    finally:
        consumer.close()
        rt.close()
