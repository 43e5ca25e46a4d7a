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
    """Make `consumer` hand records of `topics` to `take` (an instance attribute shadows the class's method)."""
    ours = frozenset(topics)

    async def drain(fetcher: Any) -> None:
        await _drain(consumer, fetcher, ours, take)

    consumer._drain_messages = drain


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
