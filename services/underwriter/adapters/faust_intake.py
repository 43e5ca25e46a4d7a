"""Direct intake: input records go from the consumer's fetch loop straight into the worker's batch.

Faust hands every record to an agent through its conductor, a channel queue and a stream: per record a task
pair (`Service.wait_first`), an Event, a queue put and get and four sensor calls, ~100 µs of CPU in all, which
made intake, not underwriting, the ceiling of a worker that processes records in batches anyway. This loop is
Faust's own `Consumer._drain_messages` (faust-streaming 0.15) with one change: a record of the worker's input
topics is tracked and counted exactly as the conductor does (`track_message`, one reference, the sensors' message
in/out), then appended to the batch by `take`; records of any other topic (table changelogs, Faust's own topics)
still go through the conductor. Everything else is Faust's: getmany (flow control, rebalance generation checks,
paused partitions), the read offsets and gaps Faust commits from, commit_every (its commit runs in a task
of its own instead of holding up the fetch loop), acks (`ack` below, called once a
record's state and decisions are written), wait_empty before a rebalance. The agent stays subscribed to the input
topics (that is what subscribes the consumer) and simply receives nothing.
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


def install(consumer: Any, topics: Collection[str], take: Callable[[Record], Awaitable[None]],
            drained: Callable[[], None] | None = None) -> None:
    """Make `consumer` hand records of `topics` to `take` (an instance attribute shadows the class's method);
    `drained()` is called each time the records of one fetch were all handed over (nothing more is buffered
    for the moment), so the worker can start a batch at once instead of on its next timer tick."""
    ours = frozenset(topics)

    async def drain(fetcher: Any) -> None:
        await _drain(consumer, fetcher, ours, take, drained)

    consumer._drain_messages = drain


FAUST_FETCH_MAX_WAIT_MS = 1500  # what Faust 0.15 builds its Kafka client with


def set_fetch_max_wait(consumer: Any, milliseconds: int) -> bool:
    """Make the running Kafka client's next fetch requests use `milliseconds` as fetch_max_wait_ms (Faust 0.15
    hard-codes 1,500 ms); False if the client has no fetcher yet.

    aiokafka keeps at most one fetch request in flight per broker, and a partition whose records are still
    buffered (not yet taken by getmany) is left out of the next request. When the worker is busy for a moment,
    that next request can hold only partitions without new data (loans.v1, a quiet input partition), and the
    broker answers it after fetch_max_wait_ms; until then no record of the busy partitions is fetched again.
    With 1,500 ms that is a window of up to 1.5 s in which the worker receives nothing, then a burst.

    The worker shortens it only while it processes its input: during a table recovery (changelog partitions
    read to their end) a short wait left a recovery without events for minutes in the two-worker takeover test,
    so a rebalance puts Faust's value back until the recovery completed. The fetcher reads the value each time
    it builds a request (from its own thread; an int assignment is atomic)."""
    client = getattr(consumer._thread, "_consumer", None)
    fetcher = getattr(client, "_fetcher", None)
    if fetcher is None:
        return False
    fetcher._fetch_max_wait_ms = milliseconds
    return True


def ack(consumer: Any, sensors: Any, records: list[Record]) -> None:
    """Mark records processed, as a stream's ack does: Faust commits up to the contiguous acked offsets."""
    for record in records:
        message = record.message
        if message.ack(consumer):
            sensors.on_message_out(message.tp, message.offset, message)


async def _drain(consumer: Any, fetcher: Any, ours: frozenset[str], take: Callable[[Record], Awaitable[None]],
                 drained: Callable[[], None] | None = None) -> None:
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
    commits: set[asyncio.Future[Any]] = set()

    def _settled(commit: asyncio.Future[Any]) -> None:
        commits.discard(commit)
        if not commit.cancelled() and commit.exception() is not None:  # the next commit takes these offsets
            consumer.log.warning("commit failed: %r", commit.exception())

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(CONSUMER_FETCHING)
            ait = getmany(timeout=1.0)
            await consumer.sleep(0)  # getmany can run in a loop without releasing the event loop
            if not consumer.should_stop:
                took = False
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
                        # In a task of its own (Faust awaits it here): a commit flushes the producer and waits for
                        # the broker, tens of ms in which no record would be taken. Commits are serialised by
                        # the consumer (a second one waits for the first), and only acked offsets are committed.
                        consumer._n_acked = 0
                        commits.add(commit := asyncio.ensure_future(consumer.commit()))
                        commit.add_done_callback(_settled)
                    if message.topic in ours:
                        track(message)  # pending ack (wait_empty, commits) + sensors' message in
                        message.incref()
                        await take(Record(message))
                        took = True
                    else:
                        await consumer.wait_first(callback(message), consumer.suspend_flow.wait())
                    read_offset[tp] = offset
                if took and drained is not None:
                    drained()
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
