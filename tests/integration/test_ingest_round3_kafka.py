"""Round three of attacks on the ingest door against the real broker and PostgreSQL: two requests racing with the
same ids (two replicas on one dedupe store), and the kafka-python sink's bulk append across partitions, batch
boundaries and the record size limit (a record is reported delivered only when the broker acknowledged it)."""

from __future__ import annotations

import json
import threading
from collections import Counter, defaultdict
from datetime import timedelta
from typing import Any

import pytest

from services.ingest.adapters.kafka_sink import KafkaSink
from services.ingest.adapters.memory import InMemorySink
from services.ingest.adapters.sql_dedupe import SqlDedupeStore
from services.ingest.bootstrap import IngestRuntime, bootstrap
from services.ingest.domain.model import Outgoing
from services.ingest.domain.ports import SinkUnavailable
from tests.integration.ingest_support import create_topics, read_topic
from tests.unit.ingest_helpers import NOW, placed, settings

pytestmark = pytest.mark.integration


def _replica(pg_schema_url: str, sink: Any) -> IngestRuntime:
    store = SqlDedupeStore(pg_schema_url, timedelta(seconds=30))
    return bootstrap(settings(), sink=sink, dedupe=store, clock=lambda: NOW)


def _race(replicas: list[IngestRuntime], batches: list[list[dict[str, Any]]]) -> list[list[str]]:
    answers: list[list[str]] = [[] for _ in replicas]
    start = threading.Barrier(len(replicas))

    def run(n: int) -> None:
        start.wait()
        answers[n] = [r.status.value for r in replicas[n].submit(batches[n])]

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(replicas))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def test_the_same_ids_in_two_parallel_requests_are_taken_once_and_the_other_answer_is_duplicate_or_retry(
        kafka_bootstrap: str, pg_schema_url: str, fresh_topic_prefix: str) -> None:
    events_topic = fresh_topic_prefix + "marketplace.events.v1"
    rejected_topic = fresh_topic_prefix + "ingest.rejected.v1"
    create_topics(kafka_bootstrap, events_topic, rejected_topic)
    sinks = [KafkaSink(kafka_bootstrap, events_topic, rejected_topic, 10.0) for _ in range(2)]
    replicas = [_replica(pg_schema_url, s) for s in sinks]
    try:
        for round_no in range(5):
            batch = [placed(f"r{round_no}-{i}", subject=f"m-{i % 5}") for i in range(60)]
            a, b = _race(replicas, [batch, list(reversed(batch))])
            b = list(reversed(b))
            for mine, other in zip(a, b, strict=True):
                assert sorted((mine, other)) in (["accepted", "duplicate"], ["accepted", "retry"]), (mine, other)
            # The client of a `retry` resends: now it is a duplicate.
            again = [r.status.value for r in replicas[1].submit(batch)]
            assert again == ["duplicate"] * len(batch)
        # Same ids, other content, racing: one is taken, the other never overwrites it.
        first = [placed(f"c-{i}", amount={"amount": 100, "currency": "BRL"}) for i in range(40)]
        second = [placed(f"c-{i}", amount={"amount": 200, "currency": "BRL"}) for i in range(40)]
        a, b = _race(replicas, [first, second])
        for mine, other in zip(a, b, strict=True):
            assert "accepted" in (mine, other) and {mine, other} - {"accepted"} <= {"rejected", "retry"}, (mine, other)
        loser = [second, first][a.count("accepted") < b.count("accepted")]
        final = replicas[0].submit(loser)
        assert {r.status.value for r in final} <= {"rejected", "duplicate"}
    finally:
        for rt in replicas:
            rt.close()
    on_topic = Counter(dict(rec.headers)["ce_id"].decode() for rec in read_topic(kafka_bootstrap, events_topic))
    expected = [f"r{n}-{i}" for n in range(5) for i in range(60)] + [f"c-{i}" for i in range(40)]
    assert on_topic == dict.fromkeys(expected, 1)
    amounts = {json.loads(rec.value)["id"]: json.loads(rec.value)["data"]["amount"]["amount"]
               for rec in read_topic(kafka_bootstrap, events_topic) if json.loads(rec.value)["id"].startswith("c-")}
    assert len(amounts) == 40 and all(v in (100, 200) for v in amounts.values())


def _outgoing(tag: str, n: int, size: int, keys: int = 11) -> list[Outgoing]:
    return [Outgoing("event", f"m-{i % keys}", f"{tag}-{i}", json.dumps({"n": i, "pad": "x" * size}).encode(),
                     (("ce_id", f"{tag}-{i}".encode()),)) for i in range(n)]


def test_bulk_append_across_partitions_and_full_batches_keeps_each_keys_order_and_every_record_once(
        kafka_bootstrap: str, fresh_topic_prefix: str) -> None:
    topic = fresh_topic_prefix + "marketplace.events.v1"
    create_topics(kafka_bootstrap, topic, fresh_topic_prefix + "ingest.rejected.v1", partitions=3)
    sink = KafkaSink(kafka_bootstrap, topic, fresh_topic_prefix + "ingest.rejected.v1", 20.0)
    try:
        sink.publish(_outgoing("warm", 1, 10))  # metadata known: the next calls take the bulk path
        records = _outgoing("bulk", 3000, 900)  # ~2.8 MB over 3 partitions: several 256 KiB batches each
        sink.publish(records)
        sink.publish(_outgoing("tiny", 5000, 0, keys=97))  # a huge count of tiny records
    finally:
        sink.close()
    got = read_topic(kafka_bootstrap, topic)
    ids = Counter(dict(r.headers)["ce_id"].decode() for r in got)
    assert ids == Counter(["warm-0"] + [f"bulk-{i}" for i in range(3000)] + [f"tiny-{i}" for i in range(5000)])
    order: dict[str, list[int]] = defaultdict(list)
    partitions: dict[str, set[int]] = defaultdict(set)
    for r in sorted(got, key=lambda r: (r.partition, r.offset)):
        eid = dict(r.headers)["ce_id"].decode()
        if eid.startswith("bulk-"):
            order[r.key.decode()].append(int(eid.split("-")[1]))
            partitions[r.key.decode()].add(r.partition)
    assert all(seq == sorted(seq) for seq in order.values())
    assert all(len(p) == 1 for p in partitions.values()) and len(set().union(*partitions.values())) > 1


def test_a_record_just_under_the_size_limit_is_delivered_and_one_over_is_never_reported_delivered(
        kafka_bootstrap: str, fresh_topic_prefix: str) -> None:
    topic = fresh_topic_prefix + "marketplace.events.v1"
    create_topics(kafka_bootstrap, topic, fresh_topic_prefix + "ingest.rejected.v1", partitions=3)
    sink = KafkaSink(kafka_bootstrap, topic, fresh_topic_prefix + "ingest.rejected.v1", 20.0)
    try:
        sink.publish(_outgoing("warm", 1, 10))
        limit = int(sink._get().config["max_request_size"])
        near = Outgoing("event", "m-1", "near", b"x" * (limit - 1024 - 200), (("ce_id", b"near"),))
        sink.publish([*_outgoing("a", 50, 100), near, *_outgoing("b", 50, 100)])
        over = Outgoing("event", "m-2", "over", b"y" * (limit + 10), (("ce_id", b"over"),))
        with pytest.raises(SinkUnavailable) as failed:
            sink.publish([*_outgoing("c", 30, 100), over])
        assert "over" not in failed.value.delivered
        assert failed.value.delivered <= {f"c-{i}" for i in range(30)}
    finally:
        sink.close()
    ids = Counter(dict(r.headers)["ce_id"].decode() for r in read_topic(kafka_bootstrap, topic))
    assert ids["near"] == 1 and ids["over"] == 0
    assert all(ids[f"c-{i}"] <= 1 for i in range(30))
    assert all(ids[f"a-{i}"] == 1 and ids[f"b-{i}"] == 1 for i in range(50))


def test_a_memory_sink_keeps_the_reference_behaviour_for_the_same_race(pg_schema_url: str) -> None:
    sink = InMemorySink()
    replicas = [_replica(pg_schema_url, sink), _replica(pg_schema_url, sink)]
    batch = [placed(f"m-{i}") for i in range(100)]
    a, b = _race(replicas, [batch, batch])
    assert all(sorted(x) in (["accepted", "duplicate"], ["accepted", "retry"]) for x in zip(a, b, strict=True))
    assert Counter(r.event_id for r in sink.records if r.kind == "event") == dict.fromkeys(
        (e["id"] for e in batch), 1)
    for rt in replicas:
        rt.close()
