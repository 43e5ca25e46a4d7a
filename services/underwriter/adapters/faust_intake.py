"""Direct intake: input records go from the consumer's fetch loop straight into the worker's batch.

Faust hands every record to an agent through its conductor, a channel queue and a stream: per record a task
pair (`Service.wait_first`), an Event, a queue put and get and four sensor calls, ~100 µs of CPU in all, which
made intake, not underwriting, the ceiling of a worker that processes records in batches anyway. This loop is
Faust's own `Consumer._drain_messages` (faust-streaming 0.15) with one change: a record of the worker's input
topics is tracked and counted exactly as the conductor does (`track_message`, one reference, the sensors' message
in/out), then appended to the batch by `take`; records of any other topic (table changelogs, Faust's own topics)
still go through the conductor. Everything else is Faust's: getmany (flow control, rebalance generation checks,
paused partitions), the read offsets and gaps Faust commits from, commit_every, acks (`ack` below, called once a
record's state and decisions are written), wait_empty before a rebalance. The agent stays subscribed to the input
topics (that is what subscribes the consumer) and simply receives nothing.

Two more changes, both about the Kafka client under Faust (see `LiveActive` and `gate_fetch_wait`): a fetch in
flight takes records only of partitions Faust reads at that moment, and the broker's wait for a fetch without new
records is short once the worker is past its rebalance and table recovery, Faust's 1,500 ms otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from faust.transport.consumer import CONSUMER_FETCHING

Take = Callable[[Any], Awaitable[None] | None]


class Record:
    """What the worker needs of a consumed record: the message (topic, partition, offset, tp) and its raw value.
    Also stands in for a Faust event as the current event of table writes (which read message.topic/partition)."""

    __slots__ = ("message", "value", "__weakref__")  # tables hold the current event by weak reference

    def __init__(self, message: Any) -> None:
        self.message = message
        self.value = message.value


def install(consumer: Any, topics: Collection[str], take: Callable[[Record], Awaitable[None]]) -> None:
    """Make `consumer` hand records of `topics` to `take` (an instance attribute shadows the class's method),
    and its fetches take records only of the partitions Faust reads when they take them (`LiveActive`)."""
    ours = frozenset(topics)

    async def drain(fetcher: Any) -> None:
        await _drain(consumer, fetcher, ours, take)

    live = LiveActive(consumer)

    async def getmany(active_partitions: Any, timeout: float) -> Any:
        return await consumer._thread.getmany(live if active_partitions is not None else None, timeout)

    consumer._drain_messages = drain
    consumer._getmany = getmany


class LiveActive:
    """The partitions a fetch in flight may take records of, asked when it takes them: those Faust reads (not
    paused), and none while Faust's flow is stopped (a rebalance).

    Faust hands the Kafka client's `fetched_records` its own set of active partitions, the very set that pause
    and resume change, and a call waits up to a second for records. When every partition is paused meanwhile
    (a rebalance pauses them all, and the table recovery resumes the changelog partitions only after it moved
    them to the offsets it reads from), the set is empty, and to aiokafka an empty set means *every* assigned
    partition: the call in flight takes the records just fetched of a changelog partition at its recovery
    offset, which moves the client's position past them, and Faust then drops them (its flow is stopped, the
    partition paused). The recovery waits for ever for offsets that are never fetched again ("No event received
    for active tp ... since recovery start"). A short fetch wait makes that fetch return inside the window, so
    that is when the hang showed. This view is never empty to aiokafka and asks Faust's live state, from the
    client's thread, for each partition it considers; records it declines stay buffered in the client (its
    position does not move) until Faust reads that partition again or seeks it."""

    __slots__ = ("_consumer",)

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer

    def __bool__(self) -> bool:
        return True

    def __contains__(self, tp: Any) -> bool:
        consumer = self._consumer
        if not consumer.flow_active:
            return False
        active = consumer._active_partitions
        return active is None or tp in active  # None: Faust has not paused anything yet (all assigned)


FAUST_FETCH_MAX_WAIT_MS = 1500  # what Faust 0.15 builds its Kafka client with


class _GatedFetchWait:
    """Mixed into the class of the Kafka client's fetcher: `_fetch_max_wait_ms`, which the fetcher reads each time it
    builds a fetch request (in the client's thread), is the short wait while `short()` holds, else the client's own."""

    _fb_short: Callable[[], bool]
    _fb_short_ms: int
    _fb_wait_ms: int

    @property
    def _fetch_max_wait_ms(self) -> int:
        return self._fb_short_ms if self._fb_short() else self._fb_wait_ms

    @_fetch_max_wait_ms.setter
    def _fetch_max_wait_ms(self, milliseconds: int) -> None:
        self._fb_wait_ms = milliseconds


def gate_fetch_wait(consumer: Any, milliseconds: int, short: Callable[[], bool]) -> bool:
    """From now on the running Kafka client's fetch requests ask the broker to wait at most `milliseconds` for new
    records while `short()` holds, Faust's own 1,500 ms otherwise; False if the client has no fetcher yet.

    Why: aiokafka keeps one fetch request in flight per broker and leaves out of the next request a partition
    whose records are still buffered. When the worker is busy for a moment, that next request can hold only
    partitions without new data (loans.v1, a quiet input partition, standby changelogs), and the broker answers
    it after the wait; until then no busy partition is fetched again: windows of up to 1.5 s with no input, then
    a burst. `short()` is asked for every request, so the short wait ends with the first request of a rebalance
    (Faust marks it in the client's thread before the client rejoins the group) and the table recovery runs with
    Faust's value, as in Faust. Idempotent."""
    client = getattr(consumer._thread, "_consumer", None)
    fetcher = getattr(client, "_fetcher", None)
    if fetcher is None:
        return False
    cls = type(fetcher)
    fetcher._fb_short_ms = milliseconds  # all set before the class changes: the client's thread may read it at once
    fetcher._fb_short = short
    if not issubclass(cls, _GatedFetchWait):
        fetcher._fb_wait_ms = fetcher.__dict__.get("_fetch_max_wait_ms", FAUST_FETCH_MAX_WAIT_MS)
        fetcher.__class__ = type(f"Gated{cls.__name__}", (_GatedFetchWait, cls), {})
    return True


def ack(consumer: Any, sensors: Any, records: list[Record]) -> None:
    """Mark records processed, as a stream's ack does: Faust commits up to the contiguous acked offsets."""
    for record in records:
        message = record.message
        if message.ack(consumer):
            sensors.on_message_out(message.tp, message.offset, message)


async def _drain(consumer: Any, fetcher: Any, ours: frozenset[str], take: Callable[[Record], Awaitable[None]]) -> None:
    callback = consumer.callback
    getmany = consumer.getmany
    consumer_should_stop = consumer._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    read_offset = consumer._read_offset
    set_flag, unset_flag = consumer.diag.set_flag, consumer.diag.unset_flag
    commit_every = consumer._commit_every
    acks_enabled_for = consumer.app.topics.acks_enabled_for
    track = consumer.track_message
    sleep = asyncio.sleep
    since_yield = 0
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(CONSUMER_FETCHING)
            ait = getmany(timeout=1.0)
            await consumer.sleep(0)  # getmany can run in a loop without releasing the event loop
            if not consumer.should_stop:
                async for tp, message in ait:
                    since_yield += 1
                    if since_yield > 100:
                        await sleep(0)
                        since_yield = 0
                    offset = message.offset
                    r_offset = read_offset[tp]
                    if r_offset is not None and offset < r_offset:
                        continue  # already delivered (Faust drops these too)
                    if offset - (r_offset or 0) > 1 and r_offset and acks_enabled_for(message.topic):
                        await consumer._add_gap(tp, r_offset + 1, offset)
                    if commit_every is not None and consumer._n_acked >= commit_every:
                        consumer._n_acked = 0
                        await consumer.commit()
                    if message.topic in ours:
                        track(message)  # pending ack (wait_empty, commits) + sensors' message in
                        message.incref()
                        await take(Record(message))
                    else:
                        await consumer.wait_first(callback(message), consumer.suspend_flow.wait())
                    read_offset[tp] = offset
                unset_flag(CONSUMER_FETCHING)
    except consumer.consumer_stopped_errors:
        if consumer.transport.app.should_stop:
            return
        raise
    except asyncio.CancelledError:
        if consumer.transport.app.should_stop:
            return
        raise
    finally:
        unset_flag(CONSUMER_FETCHING)
