"""Underwriter faults on real processes: kill -9 of a worker mid-stream (restarted), and two workers on
4 partitions with one killed for good: the survivor takes over its partitions with state restored from
the changelog, and the final limits equal a single-worker run on the same input."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from floatbridge.audit.sources import audit, read_topic
from floatbridge.audit.traffic import Marketplace, chunks, interleave
from floatbridge.stack import Stack
from schemas import topics as t
from tests.e2e.test_faults_kill import INGEST_KEY, histories, make_stack

pytestmark = pytest.mark.e2e


def _final_limits(kafka: str, prefix: str) -> dict[str, tuple[int, int]]:
    records, _ = read_topic(kafka, prefix + t.CREDIT_LIMITS)
    out: dict[str, tuple[int, int]] = {}
    for _, ev in records:
        if isinstance(ev, dict) and ev.get("type") == "credit_limit.updated":
            out[ev["subject"]] = (ev["data"]["limit"]["amount"], ev["data"]["available"]["amount"])
    return out


def _input_lag(kafka: str, group: str, topics: list[str], partitions: int) -> int:
    """Records of the input topics not yet committed by `group`, over EVERY partition: a partition the group
    never committed counts in full (a killed worker's partitions stay uncommitted until the survivor takes
    them over; the group's committed offsets alone would not show them)."""
    from floatbridge.observability.lag import KafkaOffsetSource

    source = KafkaOffsetSource(kafka)
    try:
        committed = source.committed(group)
        end = source.end_offsets([(topic, p) for topic in topics for p in range(partitions)])
    finally:
        source.close()
    return sum(max(0, n - committed.get(tp, 0)) for tp, n in end.items())


def _quiesce(stack: Stack, timeout: float = 90) -> None:
    """Until the underwriter group has committed every input record and the limits topic stopped growing."""
    cfg = stack.cfg
    inputs = [cfg.topic_prefix + t.MARKETPLACE_EVENTS, cfg.topic_prefix + t.LOANS]
    deadline, last, stable, lag = time.monotonic() + timeout, -1, 0, -1
    while time.monotonic() < deadline and stable < 3:
        n = len(read_topic(cfg.kafka, cfg.topic_prefix + t.CREDIT_LIMITS)[0])
        lag = _input_lag(cfg.kafka, cfg.topic_prefix + cfg.app_id, inputs, cfg.topic_partitions)
        stable = stable + 1 if (n == last and lag == 0) else 0
        last = n
        time.sleep(2)
    assert stable >= 3, f"underwriter did not settle within {timeout}s (input lag {lag})"


def _sibling_schema(url: str) -> str:
    """Another empty schema next to the fixture's (dropped with the database's test schemas by name)."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    schema = parsed.query["options"].split("=", 1)[1] + "_b"
    engine = sa.create_engine(parsed.set(query={}), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    engine.dispose()
    return url.replace(parsed.query["options"].split("=", 1)[1], schema)


def _start(kafka: str, db: str, prefix: str, workdir: Path, workers: int) -> Stack:
    s = make_stack(kafka, db, prefix, workdir, workers=workers)
    s.prepare()
    s.start(wait=120)
    return s


def _send(stack: Stack, events: list[dict[str, Any]]) -> None:
    market = Marketplace(f"http://127.0.0.1:{stack.cfg.ingest_port}", INGEST_KEY)
    for b in chunks(events, 200):
        market.send(b)


def test_kill9_of_an_underwriter_worker_mid_stream_loses_and_duplicates_nothing(
        kafka_bootstrap: str, pg_schema_url: str, fresh_topic_prefix: str, tmp_path: Path) -> None:
    stack = _start(kafka_bootstrap, pg_schema_url, fresh_topic_prefix, tmp_path, workers=2)
    try:
        events = interleave([ev for _, _, ev in histories(4, days=20)])
        half = len(events) // 2
        _send(stack, events[:half])
        stack.procs["underwriter-0"].kill9()
        _send(stack, events[half:])
        stack.restart("underwriter-0", wait=120)
        _quiesce(stack)
        report = audit(kafka_bootstrap, pg_schema_url, fresh_topic_prefix, settle_seconds=60)
        print(report.to_text())
        assert report.ok, report.to_text()
        assert report.counts["limit_updates"] > 0
    finally:
        stack.stop()


@pytest.mark.soak  # two stack runs back to back: over 3 minutes on 2 cores
def test_survivor_takes_over_with_changelog_state_and_limits_equal_single_worker_run(
        kafka_bootstrap: str, pg_schema_url: str, fresh_topic_prefix: str, tmp_path: Path) -> None:
    events = interleave([ev for _, _, ev in histories(6, days=20)])
    half = len(events) // 2
    single = _start(kafka_bootstrap, pg_schema_url, fresh_topic_prefix + "one.", tmp_path / "one", workers=1)
    try:
        _send(single, events)
        _quiesce(single)
        expected = _final_limits(kafka_bootstrap, fresh_topic_prefix + "one.")
    finally:
        single.stop()
    assert len(expected) == 6, expected

    second_db = _sibling_schema(pg_schema_url)  # a fresh dedupe store: the same events must be new again
    pair = _start(kafka_bootstrap, second_db, fresh_topic_prefix + "two.", tmp_path / "two", workers=2)
    try:
        _send(pair, events[:half])
        _quiesce(pair)
        pair.procs["underwriter-1"].kill9()  # for good: underwriter-0 must take over its partitions
        _send(pair, events[half:])
        _quiesce(pair, timeout=120)
        got = _final_limits(kafka_bootstrap, fresh_topic_prefix + "two.")
        report = audit(kafka_bootstrap, None, fresh_topic_prefix + "two.")
    finally:
        pair.stop()
    assert got == expected
    assert report.ok, report.to_text()
