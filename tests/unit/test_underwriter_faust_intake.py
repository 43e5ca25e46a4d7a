"""The worker's fetch path under Faust: what a fetch in flight may take, and the gated fetch wait."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.consumer.fetcher import Fetcher, FetchResult
from aiokafka.structs import TopicPartition
from faust.types import TP

from services.underwriter.adapters import faust_intake

pytestmark = pytest.mark.unit

CHANGELOG = TP("app-merchant-state-changelog", 2)
INPUT = TP("marketplace.events.v1", 0)


class _Consumer:
    def __init__(self) -> None:
        self.flow_active = True
        self._active_partitions: set[TP] | None = {INPUT}


def test_a_fetch_in_flight_takes_nothing_once_a_rebalance_paused_every_partition() -> None:
    # To aiokafka an empty set of partitions means all of them: a fetch in flight would take the changelog
    # records of a recovery's seek position, and Faust would drop them.
    consumer = _Consumer()
    live = faust_intake.LiveActive(consumer)
    consumer.flow_active = False
    consumer._active_partitions.clear()  # Faust pauses every partition in place (the same set object)
    assert bool(live) is True
    assert TopicPartition(CHANGELOG.topic, CHANGELOG.partition) not in live
    assert TopicPartition(INPUT.topic, INPUT.partition) not in live


def test_a_fetch_in_flight_takes_a_partition_only_while_faust_reads_it() -> None:
    consumer = _Consumer()
    live = faust_intake.LiveActive(consumer)
    assert TopicPartition(INPUT.topic, INPUT.partition) in live  # aiokafka's own tuple type
    assert CHANGELOG not in live
    consumer._active_partitions.add(CHANGELOG)  # the recovery resumes it after its seek
    assert CHANGELOG in live
    consumer.flow_active = False  # a rebalance started: nothing until the flow resumes
    assert CHANGELOG not in live and INPUT not in live
    consumer.flow_active = True
    consumer._active_partitions = None  # nothing paused yet: every assigned partition
    assert CHANGELOG in live


def test_fetched_records_leaves_the_records_of_a_declined_partition_buffered() -> None:
    # aiokafka's own fetched_records with the live view: nothing taken (positions untouched) while flow stops.
    consumer = _Consumer()
    live = faust_intake.LiveActive(consumer)

    class _Subscriptions:
        reassignment_in_progress = False

        @staticmethod
        def is_assigned(tp: Any) -> bool:
            return True

    taken: list[Any] = []
    result = FetchResult.__new__(FetchResult)  # aiokafka checks the exact type
    result.getall = lambda max_records=None: taken.append(max_records) or [1]  # type: ignore[method-assign]
    result.has_more = lambda: True  # type: ignore[method-assign]

    fetcher = Fetcher.__new__(Fetcher)
    fetcher._subscriptions = _Subscriptions()
    fetcher._records = {TopicPartition(CHANGELOG.topic, CHANGELOG.partition): result}
    assert asyncio.run(fetcher.fetched_records(set(), timeout=0))  # the hazard: an empty set takes everything
    taken.clear()
    consumer.flow_active = False
    got = asyncio.run(fetcher.fetched_records(live, timeout=0))
    assert got == {} and taken == []
    consumer.flow_active = True
    consumer._active_partitions = {CHANGELOG}
    got = asyncio.run(fetcher.fetched_records(live, timeout=0))
    assert list(got.values()) == [[1]] and len(taken) == 1


class _Thread:
    def __init__(self, fetcher: Any) -> None:
        self._consumer = type("Client", (), {"_fetcher": fetcher})()


def test_the_short_fetch_wait_holds_only_while_no_rebalance_is_under_way() -> None:
    fetcher = Fetcher.__new__(Fetcher)
    fetcher._fetch_max_wait_ms = faust_intake.FAUST_FETCH_MAX_WAIT_MS
    consumer = type("C", (), {})()
    consumer._thread = _Thread(fetcher)
    state = {"rebalancing": True}
    assert faust_intake.gate_fetch_wait(consumer, 20, lambda: not state["rebalancing"])
    assert isinstance(fetcher, Fetcher)
    assert fetcher._fetch_max_wait_ms == 1500  # recovery: Faust's value
    state["rebalancing"] = False
    assert fetcher._fetch_max_wait_ms == 20
    state["rebalancing"] = True  # the next rebalance: asked again for every request
    assert fetcher._fetch_max_wait_ms == 1500
    assert faust_intake.gate_fetch_wait(consumer, 30, lambda: True)  # idempotent; the client's own value kept
    assert fetcher._fetch_max_wait_ms == 30 and fetcher._fb_wait_ms == 1500


def test_no_fetch_wait_is_changed_before_the_kafka_client_exists() -> None:
    consumer = type("C", (), {})()
    consumer._thread = type("T", (), {})()
    assert faust_intake.gate_fetch_wait(consumer, 20, lambda: True) is False
