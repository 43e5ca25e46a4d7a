"""The marketplace.raw.v1 door with the inputs of the HTTP attacks (tests/unit/test_ingest_contract_attacks.py),
against the real broker: record keys and headers do not decide anything (the subject does), a tombstone or a
huge record is rejected on its own, and a record that used to crash the consumer (a time that leaves years
1-9999 once converted to UTC) is dead-lettered and committed past. Also /readyz when a broker that was up
goes down (a throwaway broker, never the shared one)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from services.ingest.adapters.http import create_app
from services.ingest.adapters.memory import InMemoryDedupeStore
from services.ingest.bootstrap import bootstrap, kafka_sink
from services.ingest.settings import IngestSettings
from tests.integration.ingest_support import create_topics, drain_raw_intake, free_port, read_topic
from tests.unit.ingest_helpers import placed, settlement

pytestmark = pytest.mark.integration
KAFKA_SH = Path(__file__).resolve().parents[2] / "deploy" / "local" / "kafka.sh"


def test_raw_records_are_judged_by_their_value_alone_and_each_bad_one_is_committed_past(
        kafka_bootstrap: str, fresh_topic_prefix: str) -> None:
    from kafka import KafkaProducer

    prefix = fresh_topic_prefix
    create_topics(kafka_bootstrap, *(prefix + t for t in ("marketplace.events.v1", "ingest.rejected.v1",
                                                          "marketplace.raw.v1")))
    settings = IngestSettings(
        buyer_hash_key="k", kafka_bootstrap=kafka_bootstrap, max_future_skew_seconds=-1,
        events_topic=prefix + "marketplace.events.v1", rejected_topic=prefix + "ingest.rejected.v1",
        raw_topic=prefix + "marketplace.raw.v1", raw_group_id=prefix + "raw")
    mixed = settlement("r-mixed")
    mixed["data"]["fees"]["currency"] = "USD"
    huge = placed("r-huge")
    huge["data"]["note"] = "x" * 600_000  # over MAX_EVENT_BYTES, under the broker's record limit
    binary_mode = {"order_id": "o-bin", "buyer_id": "b-1", "amount": {"amount": 1, "currency": "BRL"}}
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
        (None, orjson.dumps(placed("r-nullkey", subject="m-7")), []),
        (b"m-other", orjson.dumps(placed("r-otherkey", subject="m-8")), [("ce_subject", b"m-other")]),
        (b"m-1", None, []),  # tombstone
        (b"m-1", orjson.dumps(placed("r-year1", time="0001-01-01T00:00:00+01:00")), []),  # crashed the consumer
        (b"m-1", orjson.dumps(mixed), []),
        (b"m-1", orjson.dumps(huge), []),
        # CloudEvents binary mode (attributes in headers, data as the value) is not what the door takes
        (b"m-1", orjson.dumps(binary_mode), [("ce_specversion", b"1.0"), ("ce_id", b"r-binary"),
                                             ("ce_type", b"order.placed"), ("ce_source", b"x")]),
    ]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", max_request_size=2_000_000)
    for key, value, headers in records:
        producer.send(settings.raw_topic, value, key=key, headers=headers)
    producer.flush()
    producer.close()
    drain_raw_intake(settings, InMemoryDedupeStore(), len(records))
    produced = {json.loads(r.value)["id"]: r.key for r in read_topic(kafka_bootstrap, settings.events_topic)}
    assert produced == {"r-nullkey": b"m-7", "r-otherkey": b"m-8"}  # keyed by subject, whatever the raw key
    rejected = [json.loads(r.value)["data"] for r in read_topic(kafka_bootstrap, settings.rejected_topic)]
    assert sorted((r.get("event_id", ""), r["reason"]) for r in rejected) == [
        ("", "malformed"), ("", "schema"), ("r-huge", "size"), ("r-mixed", "money"), ("r-year1", "time")]
    [big] = [r for r in rejected if r.get("event_id") == "r-huge"]
    assert big["raw_truncated"] is True and len(big["raw"].encode()) <= settings.raw_cap_bytes


class _ThrowawayKafka:
    def __init__(self) -> None:
        self.env = {**os.environ, "FLOATBRIDGE_LOCAL_DIR": tempfile.mkdtemp(prefix="fb-kafka-ingest-"),
                    "FLOATBRIDGE_KAFKA_PORT": str(free_port()), "FLOATBRIDGE_KAFKA_CONTROLLER_PORT": str(free_port()),
                    "FLOATBRIDGE_KAFKA_HEAP": "384m"}
        self.bootstrap = f"127.0.0.1:{self.env['FLOATBRIDGE_KAFKA_PORT']}"

    def run(self, action: str) -> None:
        subprocess.run(["bash", str(KAFKA_SH), action], env=self.env, check=True, capture_output=True, timeout=150)


@pytest.fixture
def throwaway_broker(kafka_bootstrap: str) -> Iterator[_ThrowawayKafka]:
    broker = _ThrowawayKafka()
    try:
        broker.run("start")
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"throwaway broker did not start: {exc.stderr.decode()[-500:]}")
    try:
        yield broker
    finally:
        broker.run("stop")


@pytest.mark.parametrize("producer", ["kafka-python", "librdkafka"])
def test_readyz_turns_503_when_a_broker_that_was_up_goes_down(throwaway_broker: _ThrowawayKafka,
                                                               producer: str) -> None:
    # kafka-python's partitions_for answers from cached metadata: /readyz said ready with the broker gone.
    settings = IngestSettings(buyer_hash_key="k", api_keys=("k1",), kafka_bootstrap=throwaway_broker.bootstrap,
                              producer=producer, produce_timeout_seconds=3.0,
                              events_topic="ready.events", rejected_topic="ready.rejected")
    create_topics(throwaway_broker.bootstrap, "ready.events", "ready.rejected", partitions=1)
    rt = bootstrap(settings, sink=kafka_sink(settings), dedupe=InMemoryDedupeStore())
    try:
        with TestClient(create_app(rt)) as c:
            up: Any = c.get("/readyz")
            assert up.status_code == 200, up.text
            throwaway_broker.run("stop")
            down = c.get("/readyz")
            assert down.status_code == 503, down.text
            assert down.json()["broker"].startswith("unavailable"), down.text
    finally:
        rt.close()
