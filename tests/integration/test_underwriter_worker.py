"""The underwriter Faust worker on the real broker: limits and offers out, state restored after a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from floatbridge.bench.underwriter_kafka import events_counted, metric_sum
from schemas import codec
from services.underwriter.synthetic import Profile, history

pytestmark = pytest.mark.integration

START = datetime(2025, 1, 1, tzinfo=UTC)
PARTITIONS = 2


class Env:
    def __init__(self, kafka: str, name: Callable[[str], str], tmp: Path) -> None:
        from kafka import KafkaAdminClient

        self.kafka, self.tmp = kafka, tmp
        base = name("uw").replace("_", "-")
        self.topics = {k: f"{base}.{k}" for k in ("market", "loans", "limits", "offers")}
        self.app_id = base + "-app"
        admin = KafkaAdminClient(bootstrap_servers=kafka, client_id="test-underwriter")
        admin.create_topics([_new_topic(t) for t in self.topics.values()])
        admin.close()
        self.seen: list[dict[str, Any]] = []
        from kafka import KafkaConsumer

        self.consumer = KafkaConsumer(self.topics["limits"], self.topics["offers"], bootstrap_servers=kafka,
                                      auto_offset_reset="earliest", group_id=None, consumer_timeout_ms=500)

    def produce(self, events: list[dict[str, Any]]) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.kafka, acks="all")
        for e in events:
            producer.send(self.topics["market"], key=e["subject"].encode(), value=codec.encode(e))
        producer.flush(timeout=30)
        producer.close()

    def start(self, n: int, extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update({
            "FLOATBRIDGE_UNDERWRITER_KAFKA_BOOTSTRAP": self.kafka, "FLOATBRIDGE_UNDERWRITER_APP_ID": self.app_id,
            "FLOATBRIDGE_UNDERWRITER_STORE": "memory://", "FLOATBRIDGE_UNDERWRITER_PARTITIONS": str(PARTITIONS),
            "FLOATBRIDGE_UNDERWRITER_MARKETPLACE_TOPIC": self.topics["market"],
            "FLOATBRIDGE_UNDERWRITER_LOANS_TOPIC": self.topics["loans"],
            "FLOATBRIDGE_UNDERWRITER_LIMITS_TOPIC": self.topics["limits"],
            "FLOATBRIDGE_UNDERWRITER_OFFERS_TOPIC": self.topics["offers"],
            "FLOATBRIDGE_UNDERWRITER_METRICS_PORT": "0", "FLOATBRIDGE_UNDERWRITER_WEB_PORT": "0",
            "FLOATBRIDGE_UNDERWRITER_DATA_DIR": str(self.tmp / f"data{n}"),
        })
        env.update(extra or {})
        log = (self.tmp / f"worker{n}.log").open("wb")
        return subprocess.Popen([sys.executable, "-m", "floatbridge.cli", "underwriter", "worker", "--loglevel", "info"],
                                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp)

    def wait_for(self, pred: Callable[[list[dict[str, Any]]], bool], proc: subprocess.Popen[bytes], n: int,
                 timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in self.consumer:
                self.seen.append(json.loads(msg.value))
            if pred(self.seen):
                return
            if proc.poll() is not None:
                break
        tail = (self.tmp / f"worker{n}.log").read_text(errors="replace")[-4000:]
        raise AssertionError(f"condition not met; {len(self.seen)} events seen; worker log:\n{tail}")


def _new_topic(name: str) -> Any:
    from kafka.admin import NewTopic

    return NewTopic(name, num_partitions=PARTITIONS, replication_factor=1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def limits(seen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in seen if e["type"] == "credit_limit.updated"]


def test_worker_emits_limits_and_an_offer_and_restores_state_after_restart(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    env = Env(kafka_bootstrap, unique_name, tmp_path)
    first = history("m-int", START, 45, Profile(orders_per_day=3))
    env.produce(first)
    proc = env.start(1)
    try:
        env.wait_for(lambda s: any(e["type"] == "loan_offer.created" for e in s)
                     and any(e["data"]["limit"]["amount"] > 0 for e in limits(s)), proc, 1)
        last_first = first[-1]["id"]
        env.wait_for(lambda s: any(e["data"]["trigger_event_id"] == last_first for e in limits(s))
                     or len(s) > 0 and proc.poll() is None, proc, 1)
        time.sleep(6)  # let the worker commit offsets and changelog
    finally:
        stop(proc)
    for e in env.seen:
        assert codec.validate(e) == [], e
    before = len(env.seen)
    # More sales after the restart: a merchant with no restored history would get no limit at all.
    second = history("m-int", START + timedelta(days=45), 2, Profile(orders_per_day=3), onboard=False, order_prefix="p2")
    env.produce(second)
    proc = env.start(2)
    second_ids = {e["id"] for e in second}
    try:
        env.wait_for(lambda s: any(e["data"]["trigger_event_id"] in second_ids and e["data"]["limit"]["amount"] > 0
                                   for e in limits(s[before:])), proc, 2)
    finally:
        stop(proc)
    by_id: dict[str, dict[str, Any]] = {}
    for e in env.seen:
        by_id.setdefault(e["id"], e)  # downstream dedupes by event id
    created = [e for e in by_id.values() if e["type"] == "loan_offer.created"]
    withdrawn = {e["data"]["offer_id"] for e in by_id.values() if e["type"] == "loan_offer.withdrawn"}
    offer_ids = [e["data"]["offer_id"] for e in created]
    assert len(offer_ids) == len(set(offer_ids))
    # One open offer per merchant: a new offer appears only once the older one was withdrawn or expired, or as
    # its replacement (the older one about to expire, or the merchant can borrow materially more).
    from services.underwriter.domain.policy import PolicySettings

    p = PolicySettings()
    created.sort(key=lambda e: e["time"])
    for older, newer in zip(created, created[1:], strict=False):
        gone = older["data"]["offer_id"] in withdrawn or older["data"]["expires_at"] <= newer["time"]
        left = (datetime.fromisoformat(older["data"]["expires_at"].replace("Z", "+00:00"))
                - datetime.fromisoformat(newer["time"].replace("Z", "+00:00"))).total_seconds()
        old_amt, new_amt = older["data"]["amount"]["amount"], newer["data"]["amount"]["amount"]
        grew = new_amt - old_amt >= p.offer_growth_min_minor and (new_amt - old_amt) * 10_000 >= p.offer_growth_bps * old_amt
        assert gone or left <= p.offer_refresh_hours * 3600 or grew, (older["data"], newer["data"])


def test_a_rebalance_flushes_the_debounced_merchants_of_revoked_partitions_before_giving_them_up(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    from floatbridge.stack import free_port

    env = Env(kafka_bootstrap, unique_name, tmp_path)
    merchants = [f"m-reb-{i}" for i in range(8)]
    events: list[dict[str, Any]] = []
    late: list[dict[str, Any]] = []
    for m in merchants:
        events += history(m, START, 3, Profile(orders_per_day=3))
        # Non-material events: with a 400-day debounce they wait in the debounce, undecided. Sent only after
        # the history was handled, so no batch holds them together with material events (decided at once).
        late += [e for e in history(m, START + timedelta(days=3), 1, Profile(orders_per_day=3), onboard=False,
                                    order_prefix="late") if e["type"] == "order.placed"]
    env.produce(events)
    slow = {"FLOATBRIDGE_UNDERWRITER_DEBOUNCE_SECONDS": str(400 * 86400)}
    port = free_port()
    first = env.start(1, slow | {"FLOATBRIDGE_UNDERWRITER_METRICS_PORT": str(port)})
    second = None
    try:
        produce_late_after_history(env, first, port, len(events), late)
        second = env.start(2, slow)  # joins the group: the first worker gives up one of the two partitions
        log = tmp_path / "worker1.log"
        deadline = time.monotonic() + 90
        flushed = None
        # Every rebalance logs a line (one at start-up may report 0); wait for the one the join causes.
        while time.monotonic() < deadline and not flushed:
            counts = [int(line.split("revoked: flushed ", 1)[1].split()[0])
                      for line in log.read_text(errors="replace").splitlines() if "revoked: flushed" in line]
            flushed = max(counts) if counts else None
            time.sleep(0.5)
    finally:
        stop(first)
        if second is not None:
            stop(second)
    assert flushed is not None, (tmp_path / "worker1.log").read_text(errors="replace")[-4000:]
    assert flushed >= 1  # merchants of the revoked partition were decided before the partition moved


def produce_late_after_history(env: Env, worker: subprocess.Popen[bytes], port: int, handled: int,
                               late: list[dict[str, Any]]) -> None:
    """Wait until the worker counted the `handled` history events, produce `late`, wait until it counted them:
    no batch holds late events together with the history's material events (those are decided at once)."""
    for expected in (handled, handled + len(late)):
        deadline = time.monotonic() + 90
        while events_counted(port) < expected and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.2)
        assert events_counted(port) >= expected, "the worker did not consume its input"
        if expected == handled:
            env.produce(late)


def committed(kafka: str, group: str, topic: str) -> int:
    """Sum of the committed input offsets of the worker's group on `topic` (records it will not read again)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka, client_id="test-underwriter-offsets")
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_a_debounced_merchant_is_decided_by_the_next_worker_after_a_stop_before_its_flush(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path, store: str
) -> None:
    from floatbridge.stack import free_port

    if store == "rocksdb://":
        pytest.importorskip("rocksdict")  # the production store (its batches and offers run outside any event)
    kind = {"FLOATBRIDGE_UNDERWRITER_STORE": store}

    env = Env(kafka_bootstrap, unique_name, tmp_path)
    events = history("m-pend", START, 30, Profile(orders_per_day=3))
    # A big order placed, paid and shipped after the history: non-material events, which only debounce.
    t = datetime.fromisoformat(events[-1]["time"].replace("Z", "+00:00")) + timedelta(hours=1)
    brl = {"amount": 400_000, "currency": "BRL"}
    late = [
        codec.new_event("order.placed", "m-pend", {"order_id": "big", "buyer_id": "b-big", "amount": brl}, t,
                        "test", id="m-pend-big-placed"),
        codec.new_event("order.paid", "m-pend", {"order_id": "big", "amount": brl, "method": "card"},
                        t + timedelta(minutes=1), "test", id="m-pend-big-paid"),
        codec.new_event("order.shipped", "m-pend", {"order_id": "big", "carrier": "c",
                                                    "expected_delivery_at": _rfc(t + timedelta(days=3))},
                        t + timedelta(minutes=2), "test", id="m-pend-big-shipped"),
    ]
    for e in late:
        assert codec.validate(e) == [], e
    trigger = late[-1]["id"]  # a debounced decision names the merchant's latest pending event
    env.produce(events)
    port = free_port()
    # The first worker debounces for 400 days (its flush never decides the late events) and is stopped once
    # their input offsets are committed: the decision now waits only in the state it saved.
    first = env.start(1, kind | {"FLOATBRIDGE_UNDERWRITER_DEBOUNCE_SECONDS": str(400 * 86400),
                                 "FLOATBRIDGE_UNDERWRITER_METRICS_PORT": str(port)})
    try:
        produce_late_after_history(env, first, port, len(events), late)
        deadline = time.monotonic() + 60
        while committed(env.kafka, env.app_id, env.topics["market"]) < len(events) + len(late) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert committed(env.kafka, env.app_id, env.topics["market"]) == len(events) + len(late)
        env.wait_for(lambda s: any(e["type"] == "credit_limit.updated" for e in s), first, 1)
    finally:
        stop(first)
    env.wait_for(lambda s: True, first, 1, timeout=2)  # read what the first worker emitted
    assert not any(e["data"]["trigger_event_id"] in {x["id"] for x in late} for e in env.seen)
    # A new worker with a short debounce: nothing new arrives, yet the restored merchant gets its decision.
    second = env.start(2, kind | {"FLOATBRIDGE_UNDERWRITER_DEBOUNCE_SECONDS": "1"})
    try:
        env.wait_for(lambda s: any(e["data"]["trigger_event_id"] == trigger for e in limits(s)), second, 2)
    finally:
        stop(second)
    decided = [e for e in limits(env.seen) if e["data"]["trigger_event_id"] == trigger]
    assert codec.validate(decided[0]) == [] and decided[0]["subject"] == "m-pend"


def _rfc(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_backlog_is_taken_in_full_batches_and_every_record_is_handled_once_with_its_offset_committed(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    from floatbridge.stack import free_port

    env = Env(kafka_bootstrap, unique_name, tmp_path)
    events: list[dict[str, Any]] = []
    for i in range(6):
        events += history(f"m-backlog-{i}", START, 30, Profile(orders_per_day=3), seed=i)
    env.produce(events)  # the whole backlog is on the broker before the worker starts
    port = free_port()
    # A 5 ms batch window and small fetches (4 KB per partition, a dozen records): a worker that cut batches by
    # time alone hands the core ~100 records at a time here; records already waiting on the broker must keep
    # filling the batch towards batch_max instead.
    proc = env.start(1, {"FLOATBRIDGE_UNDERWRITER_METRICS_PORT": str(port),
                         "FLOATBRIDGE_UNDERWRITER_BATCH_WITHIN_SECONDS": "0.005",
                         "FLOATBRIDGE_UNDERWRITER_BATCH_MAX": "500", "FLOATBRIDGE_UNDERWRITER_FETCH_MAX_BYTES": "4096"})
    try:
        deadline = time.monotonic() + 120
        while events_counted(port) < len(events) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        handled = events_counted(port)
        batches = metric_sum(port, "floatbridge_underwriter_batch_records_count ")
        records = metric_sum(port, "floatbridge_underwriter_batch_records_sum ")
        deadline = time.monotonic() + 30
        while committed(env.kafka, env.app_id, env.topics["market"]) < len(events) and time.monotonic() < deadline:
            time.sleep(0.2)
        done = committed(env.kafka, env.app_id, env.topics["market"])
    finally:
        stop(proc)
    assert handled == len(events)  # each record counted once (applied, duplicate or replayed: never twice)
    assert records == len(events)
    assert batches and records / batches >= 200, f"{records:.0f} records in {batches:.0f} batches"
    assert done == len(events)


def test_poison_records_on_the_input_topic_are_dead_lettered_and_the_worker_keeps_deciding(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    env = Env(kafka_bootstrap, unique_name, tmp_path)
    rejected = env.topics["market"] + ".rejected"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="test-underwriter")
    admin.create_topics([_new_topic(rejected)])
    admin.close()
    events = history("m-poison", START, 20, Profile(orders_per_day=3))
    float_money = codec.new_event("order.placed", "m-poison", {
        "order_id": "o-float", "buyer_id": "raw.buyer@example.com", "amount": {"amount": 99.5, "currency": "BRL"}},
        events[10]["time"], "marketplace", id="ev-float")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for i, e in enumerate(events):
        producer.send(env.topics["market"], key=b"m-poison", value=codec.encode(e))
        if i == 10:  # poison in the middle of the merchant's own partition
            for value in (b"[1, 2, 3]", b"{not json", codec.encode(float_money)):
                producer.send(env.topics["market"], key=b"m-poison", value=value)
    producer.flush(timeout=30)
    producer.close()
    proc = env.start(1, {"FLOATBRIDGE_UNDERWRITER_REJECTED_TOPIC": rejected})
    last = events[-1]["id"]
    try:
        env.wait_for(lambda s: any(e["data"].get("trigger_event_id") == last for e in limits(s)), proc, 1)
        dead: list[dict[str, Any]] = []
        reader = KafkaConsumer(rejected, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                               group_id=None, consumer_timeout_ms=1000)
        deadline = time.monotonic() + 30
        while len(dead) < 3 and time.monotonic() < deadline:
            dead += [json.loads(m.value) for m in reader]
        reader.close()
    finally:
        stop(proc)
    assert len(dead) == 3, dead
    for ev in dead:
        assert codec.validate(ev) == [], ev
        assert "raw.buyer@example.com" not in json.dumps(ev)
        assert ev["data"]["source"] == f"kafka:{env.topics['market']}"
    offsets = sorted(ev["data"]["offset"] for ev in dead)
    assert offsets == list(range(offsets[0], offsets[0] + 3))  # the three consecutive poison records
    assert {ev["data"].get("event_id") for ev in dead} == {None, "ev-float"}


def test_a_worker_restarted_with_the_kill_switch_withdraws_every_open_offer_without_waiting_for_events(
    kafka_bootstrap: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    env = Env(kafka_bootstrap, unique_name, tmp_path)
    env.produce(history("m-ks", START, 45, Profile(orders_per_day=3)))
    proc = env.start(1)
    try:
        env.wait_for(lambda s: any(e["type"] == "loan_offer.created" for e in s), proc, 1)
        time.sleep(6)  # let the worker commit offsets and changelog
    finally:
        stop(proc)
    created = {e["data"]["offer_id"] for e in env.seen if e["type"] == "loan_offer.created"}
    withdrawn_before = {e["data"]["offer_id"] for e in env.seen if e["type"] == "loan_offer.withdrawn"}
    open_offers = created - withdrawn_before
    assert open_offers, "the merchant holds an open offer before the switch"
    before = len(env.seen)
    # No new event at all: only the restart with the switch on.
    proc = env.start(2, {"FLOATBRIDGE_UNDERWRITER_KILL_SWITCH": "true"})
    try:
        env.wait_for(lambda s: {e["data"]["offer_id"] for e in s[before:] if e["type"] == "loan_offer.withdrawn"}
                     >= open_offers, proc, 2)
    finally:
        stop(proc)
    swept = [e for e in env.seen[before:] if e["type"] == "loan_offer.withdrawn"]
    assert all(e["data"]["reasons"][0]["code"] == "KILL_SWITCH" for e in swept)
    assert all(codec.validate(e) == [] for e in swept)
    assert not any(e["type"] == "loan_offer.created" for e in env.seen[before:]), "no new offer under the switch"
