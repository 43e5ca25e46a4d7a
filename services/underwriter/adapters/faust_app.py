"""The Faust worker: marketplace.events.v1 + loans.v1 in, credit.limits.v1 + loan.offers.v1 out.

Merchant state lives in a changelog-backed table (bytes from MerchantState.to_bytes), so a restarted or added
worker restores it; RocksDB in production (`store=rocksdb://`), memory in tests. Portfolio counters live in a
global table (every worker sees every counter; concurrent updates from several workers are last-writer-wins,
so portfolio caps are approximate across workers). A timer flushes debounced merchants; after every rebalance
(start-up included) the merchants whose saved state is still pending in the partitions this worker actively owns
are pending again (`restore_pending`), so a stop or a crash before a flush loses no debounced decision.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import time
import weakref
from collections.abc import Collection, Iterator, MutableMapping
from datetime import UTC, datetime
from typing import Any

import faust
from faust.streams import _current_event  # the context Faust tables read the current partition from

from schemas import codec, contract_check, dead_letter, topics
from services.underwriter.adapters import faust_intake
from services.underwriter.bootstrap import bootstrap
from services.underwriter.settings import UnderwriterSettings

log = logging.getLogger("floatbridge.underwriter")


class TableStore(MutableMapping[str, bytes]):
    """The state-store port over a Faust table.

    Every write goes through the table (its store and its changelog) in the context of an event of the
    merchant's own input partition, remembered by `remember` when the merchant's event was consumed: the
    table's store (RocksDB keeps one database per partition) and its changelog partition both follow the
    current event, and a batch holds events of several partitions while the flush timer runs outside any
    event. The changelog partition of a merchant is therefore always the partition of its input events.
    """

    # Values are base64 text in the table: Faust's changelog recovery decodes raw values as UTF-8.

    def __init__(self, table: Any) -> None:
        self.table = table
        self.partition_of: dict[str, int] = {}
        self._event_of_partition: dict[int, Any] = {}  # any one consumed record of each input partition
        self._last: dict[str, tuple[Any, bytes]] = {}  # keeps decoded identity stable for the core's cache

    def remember(self, key: str, event: Any) -> None:
        partition = event.message.partition
        self.partition_of[key] = partition
        self._event_of_partition[partition] = event

    def adopt(self, key: str, partition: int, topic: str) -> None:
        """Make a merchant writable before any of its partition's records was consumed here (a worker that
        restored a debounced merchant from the changelog decides it without waiting for new input): its writes
        go to `partition`, in the context of a stand-in event of that input partition if none was consumed yet."""
        self.partition_of[key] = partition
        if partition not in self._event_of_partition:
            self._event_of_partition[partition] = _PartitionEvent(topic, partition)  # type: ignore[assignment]

    def forget(self, partitions: set[int]) -> None:
        """Drop what is remembered of merchants of partitions this worker no longer owns."""
        for key in [k for k, p in self.partition_of.items() if p in partitions]:
            del self.partition_of[key]
            self._last.pop(key, None)
        for partition in partitions:
            self._event_of_partition.pop(partition, None)

    def __getitem__(self, key: str) -> bytes:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return bytes(value)

    def get(self, key: str, default: Any = None) -> Any:
        stored = self.table.get(key)
        if stored is None:
            return default
        last = self._last.get(key)
        if last is not None and last[0] is stored:
            return last[1]
        raw = base64.b64decode(stored.encode("ascii") if isinstance(stored, str) else stored)
        self._last[key] = (stored, raw)
        if len(self._last) > 10_000:
            self._last.pop(next(iter(self._last)))
        return raw

    def __setitem__(self, key: str, raw: bytes) -> None:
        value = base64.b64encode(raw).decode("ascii")
        partition = self.partition_of.get(key)
        event = self._event_of_partition.get(partition) if partition is not None else faust.current_event()
        if event is None:
            raise RuntimeError(f"no known input partition for merchant {key!r}")
        token = _current_event.set(weakref.ref(event))
        try:
            self.table[key] = value
        finally:
            _current_event.reset(token)
        self._last[key] = (value, raw)

    def __delitem__(self, key: str) -> None:
        del self.table[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.table.keys())

    def __len__(self) -> int:
        return len(self.table.data)


class _PartitionEvent:
    """Stands in for a consumed record of an input partition while a table write runs outside any event: the
    table reads only `message.topic` and `message.partition` of the current event to choose the store partition
    and the changelog partition of a write (`Table.partition_for_key`, the RocksDB store's `_set`)."""

    def __init__(self, topic: str, partition: int) -> None:
        self.message = _Message(topic, partition)


class _Message:
    def __init__(self, topic: str, partition: int) -> None:
        self.topic, self.partition = topic, partition


class CountersStore(MutableMapping[str, Any]):
    """The portfolio counters (a global table of one partition), always accessed in the context of a stand-in
    event of partition 0. The RocksDB store files every write (a read of a missing key writes its default) under
    the current event's partition and asserts there is one, but batches also run from the batch timer, outside
    any event, and the one changelog partition of this table is 0 whatever input partition is current."""

    def __init__(self, table: Any, topic: str) -> None:
        self.table = table
        self._event = _PartitionEvent(topic, 0)

    def _run(self, fun: Any, *args: Any) -> Any:
        token = _current_event.set(weakref.ref(self._event))  # type: ignore[arg-type]
        try:
            return fun(*args)
        finally:
            _current_event.reset(token)

    def __getitem__(self, key: str) -> Any:
        return self._run(self.table.__getitem__, key)

    def get(self, key: str, default: Any = None) -> Any:
        return self._run(self.table.get, key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        self._run(self.table.__setitem__, key, value)

    def __delitem__(self, key: str) -> None:
        self._run(self.table.__delitem__, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._run(lambda: list(self.table.keys())))

    def __len__(self) -> int:
        return int(self._run(len, self.table))


class _WorkerApp(faust.App):
    """The worker's app: its consumer hands input records straight to the batch (see faust_intake)."""

    intake: tuple[Collection[str], Any] | None = None

    def _new_consumer(self) -> Any:
        consumer = super()._new_consumer()
        if self.intake is not None:
            faust_intake.install(consumer, *self.intake)
        return consumer


def create_app(settings: UnderwriterSettings, **bootstrap_kwargs: Any) -> tuple[faust.App, Any]:
    # The batch timer ticks every few milliseconds by design and a batch often outlasts one tick; mode then
    # warns "Timer ... is overlapping" on each such tick (thousands per minute in the soak), drowning the log.
    logging.getLogger("mode.timers").setLevel(logging.ERROR)
    app = _WorkerApp(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        store=settings.store,
        datadir=settings.data_dir,
        topic_partitions=settings.partitions,
        web_port=settings.web_port or 6066,
        web_enabled=settings.web_port > 0,
        producer_acks=-1,
        # Throughput (faust-streaming settings): fetch and buffer whole batches rather than a few hundred
        # records at a time, and let the producer fill bigger requests (changelog writes and decisions).
        broker_max_poll_records=max(settings.batch_max, 500),
        consumer_max_fetch_size=settings.fetch_max_bytes,
        stream_buffer_maxsize=max(4 * settings.batch_max, 4096),
        producer_linger=settings.producer_linger_seconds,
        producer_max_batch_size=settings.producer_batch_bytes,
        # Default, and relied upon: a rebalance waits until every record handed to the agent is acked (the
        # batch timer keeps running meanwhile), so `pending` is empty when partitions are revoked.
        stream_wait_empty=True,
    )
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    source = app.topic(settings.marketplace_topic, settings.loans_topic, **raw)
    limits_topic = app.topic(settings.limits_topic, **raw)
    offers_topic = app.topic(settings.offers_topic, **raw)
    # JSON keys and values (the app default): state values are base64 text of MerchantState.to_bytes.
    table = app.Table("merchant-state", default=None, partitions=settings.partitions)
    counters = app.GlobalTable("portfolio-counters", default=int, partitions=1, use_partitioner=True)
    store = TableStore(table)
    from services.underwriter.service import MemoryPortfolio

    portfolio = MemoryPortfolio(CountersStore(counters, settings.marketplace_topic))
    uw = bootstrap(settings=settings, state_store=store, portfolio=portfolio, **bootstrap_kwargs)
    clock: dict[str, float] = {"event": 0.0, "wall": 0.0}

    rejected_topic = app.topic(settings.rejected_topic, **raw)
    route = {"credit_limit.updated": limits_topic, dead_letter.REJECTED_TYPE: rejected_topic}

    async def emit(events: list[dict[str, Any]]) -> None:
        # Topic.send only appends to the producer's buffer (no round trip per decision).
        for ev in events:
            topic = route.get(ev["type"], offers_topic)
            await topic.send(key=ev["subject"].encode("utf-8"), value=codec.encode(ev), key_serializer="raw",
                             value_serializer="raw")

    # Batches: records (taken from the fetch loop, see faust_intake) go to the core whenever batch_max of them
    # are collected; the batch timer (every batch_within_seconds / 2) hands over what is there at once when no
    # record arrived since the previous tick (the input ran dry), and once the oldest record has waited
    # batch_within_seconds unless the worker is behind: when even the newest record collected was produced
    # more than batch_max_wait_seconds ago (a backlog), the batch keeps taking records, up to batch_max or
    # batch_max_wait_seconds, since a batch cut by the time limit would only make the records behind it wait
    # for another batch, and every batch scores each of its merchants once, so small batches cost more per
    # record exactly when the worker is behind. One lock keeps batches (and
    # the debounce flush), their output and their acks in order. A record is acked
    # only after its state went to the table (changelog) and its decisions to the producer, and Faust flushes
    # the producer before it commits, so an offset is never committed ahead of the state; the reverse (state
    # ahead of the committed offsets after a kill) is made exact by the input positions.
    pending: list[faust_intake.Record] = []

    newest = {"ts": 0.0}  # Kafka timestamp (seconds) of the newest record of the batch being collected

    def behind() -> bool:
        """Whether the worker is behind its input: even the newest record it holds was produced longer ago than
        a batch may wait (a backlog; records that keep arriving fresh are not one, however many there are)."""
        return time.time() - newest["ts"] > settings.batch_max_wait_seconds

    lock = asyncio.Lock()
    arrivals = {"first": 0.0, "count": 0, "seen": 0, "committed": 0}  # time of pending's first record; records appended

    async def run_batch(commit: bool) -> None:
        async with lock:
            if not pending:
                return
            batch = pending[:]
            pending.clear()
            uw.metrics.batch(len(batch))
            await emit(process_batch(uw, store, batch, clock))
            faust_intake.ack(app.consumer, app.sensors, batch)  # no I/O: marks the offsets as processed
            if commit:
                await app.consumer.commit()

    committing: list[asyncio.Future[Any] | None] = [None]

    async def _commit() -> None:
        try:
            await app.consumer.commit()
        except Exception as exc:  # the next commit (ours or Faust's commit timer) takes these offsets
            log.warning("commit failed: %s", exc)

    def commit_soon() -> bool:
        """Commit the acked offsets in a task of its own; False while an earlier one still runs.

        When the queue runs dry the acked offsets are committed rather than left to Faust's commit timer
        (broker_commit_interval): a rebalance between the acks and the next timer tick drops the acked offsets of
        partitions that stay assigned, and they would stay uncommitted until new records arrive there. A commit
        flushes the producer and waits for the broker (several ms); batches must not wait for it, so it is not
        awaited under the batch lock. It commits only offsets acked before it started, whose state and decisions
        are in the producer it flushes first."""
        if committing[0] is not None and not committing[0].done():
            return False
        committing[0] = asyncio.ensure_future(_commit())
        return True

    async def take(record: faust_intake.Record) -> None:
        if not pending:
            arrivals["first"] = time.monotonic()
        pending.append(record)
        arrivals["count"] += 1
        stamp = record.message.timestamp or 0.0
        if stamp > newest["ts"] or len(pending) == 1:
            newest["ts"] = stamp
        if len(pending) >= settings.batch_max:
            # Shielded: this runs in Faust's fetch task, which a shutdown cancels; a batch cut off between its
            # state writes and its decisions and acks would leave decisions unsent for records whose state
            # already holds them. The batch finishes (and acks) in its own task; the fetch loop still stops.
            await asyncio.shield(run_batch(commit=False))

    source_topics = {settings.marketplace_topic, settings.loans_topic}
    app.intake = (source_topics, take)

    @app.agent(source)
    async def underwrite(stream: Any) -> None:
        # Subscribes the consumer to the input topics; their records go to take() from the fetch loop
        # (faust_intake). Should one come this way all the same (its conductor already tracked it and holds
        # the one reference our ack releases), it joins the batch like any other; the stream never acks it.
        async for event in stream.noack().events():
            await take(faust_intake.Record(event.message))

    @app.timer(interval=settings.batch_within_seconds / 2)
    async def batch_due() -> None:
        if not pending:
            # The queue is dry: commit the tail once, so the last records' offsets never wait for new traffic
            # (a batch cut by the time limit commits nothing, and a rebalance can drop uncommitted acks).
            if arrivals["count"] != arrivals["committed"] and commit_soon():
                arrivals["committed"] = arrivals["count"]
            return
        dry = arrivals["count"] == arrivals["seen"]
        arrivals["seen"] = arrivals["count"]
        waited = time.monotonic() - arrivals["first"]
        if dry or (waited >= settings.batch_within_seconds and not behind()) or waited >= settings.batch_max_wait_seconds:
            await run_batch(commit=False)
            if dry:
                commit_soon()

    @app.timer(interval=settings.flush_interval_seconds)
    async def flush_pending() -> None:
        if not clock["wall"]:
            return
        # Event-time "now": the latest event time seen, advanced by the wall time since it was consumed.
        now = datetime.fromtimestamp(clock["event"] + (time.time() - clock["wall"]), UTC)
        async with lock:  # after the batch in progress, so a merchant's decisions stay in order
            await emit(uw.flush(now))

    @table.on_recover
    async def restore_pending() -> None:
        # Faust calls this after every rebalance, once the table's changelog recovery completed and before the
        # input partitions resume. The debounce marker is saved in each state (MerchantState.pending), and the
        # input offsets of debounced events were committed before their decision: without this, a worker that
        # stopped or crashed with merchants pending would leave them undecided until their next event. Only
        # merchants of changelog partitions this worker actively owns are taken (not standby replicas: deciding
        # writes the changelog); the flush timer then decides them within the debounce as usual.
        if settings.fetch_max_wait_ms:
            # From the first recovery on (the Kafka client exists by then), for good: the short fetch wait applies
            # whenever no rebalance is under way, asked for each fetch request (see faust_intake.gate_fetch_wait).
            faust_intake.gate_fetch_wait(app.consumer, settings.fetch_max_wait_ms, lambda: not app.rebalancing)
        changelog = table.changelog_topic.get_topic_name()
        actives = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == changelog}
        if not actives:
            return

        def accept(state: Any) -> bool:
            parts = {int(src.rsplit(":", 1)[1]) for src in state.positions if src.rsplit(":", 1)[0] in source_topics}
            if len(parts) != 1 or next(iter(parts)) not in actives:
                return False
            store.adopt(state.merchant_id, next(iter(parts)), settings.marketplace_topic)
            return True

        async with lock:
            # Reading a saved state costs a decompress (~40 us): chunks, so the loop (heartbeats) keeps running.
            keys, restored = list(store), []
            for start in range(0, len(keys), 2000):
                restored += uw.restore_pending(keys[start:start + 2000], accept=accept)
                await asyncio.sleep(0)
            if restored:
                latest = max(int(s.pending[1]) for s in restored)
                if latest > clock["event"]:  # the flush timer's event-time "now" starts from what was restored
                    clock["event"], clock["wall"] = float(latest), time.time()
            swept: list[dict[str, Any]] = []
            if uw.policy.kill_switch:
                # Turning the kill switch on is a restart with it set: every open offer of the partitions this
                # worker owns is withdrawn now, not at its merchant's next event (a quiet merchant could accept
                # it until it expires).
                for start in range(0, len(keys), 2000):
                    swept += uw.withdraw_open_offers(keys[start:start + 2000], accept=accept)
                    await asyncio.sleep(0)
                await emit(swept)
        if swept:
            await app.producer.flush()
            log.warning("kill switch on: %d open offers withdrawn", len(swept))
        log.info("table recovered (active partitions %s): %d debounced merchants pending again", sorted(actives),
                 len(restored))

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # mode types the receiver loosely
    async def on_revoked(sender: Any, revoked: set[Any], *args: Any, **kwargs: Any) -> None:
        # Faust sends this signal after it drained the streams (stream_wait_empty: every record handed to the
        # agent was batched and acked, and committed) and flushed the producer, and before the consumer rejoins
        # the group, so no other worker owns these partitions yet. What is left of them here is the debounce:
        # merchants whose decision waits in uw.pending. Flushing them later (the flush timer) would write their
        # state into a changelog partition another worker owns by then, over its newer state; leaving them to the
        # new owner (it restores the saved marker, see restore_pending) would delay them by its recovery. So they are scored
        # now, their decisions and state written, and the producer flushed before we return: the new owner's
        # changelog recovery then starts from a state that already holds them. Records still in `pending`
        # (only if the wait above was cut short) are processed, acked and committed first for the same reason.
        # The group protocol is eager: every partition of this worker is revoked, also those it gets back;
        # deciding a few merchants earlier than the debounce would is harmless, a stale write is not.
        parts = {tp.partition for tp in revoked if tp.topic in source_topics}
        if not parts:
            return
        await run_batch(commit=True)
        async with lock:
            gone = [m for m in uw.pending if store.partition_of.get(m) in parts]
            out: list[dict[str, Any]] = []
            for merchant_id in gone:
                out.extend(uw.flush_merchant(merchant_id))
            await emit(out)
            store.forget(parts)
        await app.producer.flush()
        log.info("partitions %s revoked: flushed %d debounced merchants (%d decisions)", sorted(parts), len(gone),
                 len(out))

    app.underwriter = uw  # type: ignore[attr-defined]
    return app, uw


def process(uw: Any, event: Any, clock: dict[str, float], store: TableStore | None = None) -> list[dict[str, Any]]:
    """Decode and handle one record (a batch of one)."""
    return process_batch(uw, store, [event], clock)


def process_batch(uw: Any, store: TableStore | None, batch: list[Any],
                  clock: dict[str, float]) -> list[dict[str, Any]]:
    """Decode and handle a batch of records; returns the events to emit.

    A record that cannot be applied (not JSON, not a JSON object, a type that does not belong on its topic, a
    time more than max_future_skew_seconds ahead of the wall clock, a marketplace event that breaks the contract
    ingest checks (schemas.contract_check: stage "contract", every error kept), or refused by the core) is logged,
    counted and kept: its dead letter (`ingest.rejected`, see schemas.dead_letter) is among the events returned,
    so it is produced before the record is acked.

    Each record's input position ("topic:partition", offset) goes with it, so records that the restored
    state already holds are skipped exactly (see Underwriter.handle_batch)."""
    evs: list[dict[str, Any]] = []
    kept: list[Any] = []
    positions: list[tuple[str, int]] = []
    times: list[float | None] = []
    dead: list[dict[str, Any]] = []
    skew = getattr(uw.settings, "max_future_skew_seconds", -1)
    horizon = time.time() + skew if skew >= 0 else float("inf")
    market = getattr(uw.settings, "marketplace_topic", topics.MARKETPLACE_EVENTS)
    for event in batch:
        msg = event.message
        try:
            ev = codec.decode(event.value)
        except codec.EventInvalid as exc:
            dead.append(_dead_letter(uw, event, "decode", str(exc)))
            continue
        if not isinstance(ev, dict):
            dead.append(_dead_letter(uw, event, "decode", f"not a CloudEvent: a JSON {type(ev).__name__}, not an object"))
            continue
        allowed = topics.types_on(msg.topic)
        if allowed is not None and (type(ev.get("type")) is not str or ev.get("type") not in allowed):
            dead.append(_dead_letter(uw, event, "type", f"type {str(ev.get('type'))[:64]!r} does not belong on {msg.topic}", ev))
            continue
        try:
            ts: float | None = datetime.fromisoformat(ev["time"].replace("Z", "+00:00")).timestamp()
        except (KeyError, TypeError, ValueError, AttributeError):
            ts = None  # the core refuses it with the precise reason
        if ts is not None and ts > horizon:
            # Ingest refuses these; a record produced straight to the topic is not trusted either: one event
            # dated years ahead would roll a merchant's whole history out of its windows.
            dead.append(_dead_letter(uw, event, "time", f"time {str(ev.get('time'))[:40]!r} is more than {skew} s "
                                     "ahead of the clock", ev))
            continue
        if msg.topic == market or msg.topic.endswith(topics.MARKETPLACE_EVENTS):
            # Past ingest (a marketplace may produce straight to the topic): the contract ingest checks, checked
            # here before the core sees the event (schemas.contract_check; the future skew is the check above).
            problems = contract_check.marketplace_errors(ev, key=getattr(msg, "key", contract_check.UNCHECKED),
                                                         size=len(event.value))
            if problems:
                dead.append(_dead_letter(uw, event, "contract", _summary(problems), ev, problems))
                continue
        subject = ev.get("subject")
        if store is not None and isinstance(subject, str) and subject:
            store.remember(subject, event)
        times.append(ts)
        evs.append(ev)
        kept.append(event)
        positions.append((f"{msg.topic}:{msg.partition}", msg.offset))
    out: list[dict[str, Any]]
    out, errors = uw.handle_batch(evs, positions)
    for index, error in errors:
        dead.append(_dead_letter(uw, kept[index], "apply", str(error), evs[index]))
    latest = None
    failed = {index for index, _ in errors}  # a refused event must not move the clock
    for index, stamp in enumerate(times):
        if stamp is not None and index not in failed:
            latest = stamp if latest is None else max(latest, stamp)
    if latest is not None and latest >= clock["event"]:
        clock["event"], clock["wall"] = latest, time.time()
    return out + dead if dead else out


def _summary(problems: list[codec.FieldError]) -> str:
    """The first errors in one line (the log's; the dead letter keeps them all)."""
    more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
    return "; ".join(f"{p.pointer or '/'}: {p.message}" for p in problems[:3]) + more


def _dead_letter(uw: Any, record: Any, stage: str, error: str, event: dict[str, Any] | None = None,
                 problems: list[codec.FieldError] | None = None) -> dict[str, Any]:
    msg = record.message
    log.warning("dead-lettering record at %s[%s]@%s (%s): %s", msg.topic, msg.partition, msg.offset, stage, error)
    count = getattr(uw.metrics, "rejected_record", None)
    if count is not None:
        count(stage)
    ev = event or {}
    return dead_letter.consumer_rejection(
        record.value, error, consumer="underwriter", topic=msg.topic, partition=msg.partition, offset=msg.offset,
        received_at=datetime.now(UTC), subject=ev.get("subject"), event_id=ev.get("id"), event_type=ev.get("type"),
        errors=[(p.pointer, p.message) for p in problems] if problems else None,
        reason=contract_check.reason(problems) if problems else "unprocessable")


class _LabelCache:
    """A labelled prometheus_client metric whose children are looked up once per label set: Faust's sensor asks
    for `.labels(...)` on every message, event, table read and send, which costs more than the update itself."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[Any, Any] = {}

    def labels(self, *args: Any, **kwargs: Any) -> Any:
        key = (args, tuple(kwargs.items()))
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._metric.labels(*args, **kwargs)
        return child

    def __getattr__(self, name: str) -> Any:
        return getattr(self._metric, name)


def attach_faust_sensor(app: Any, registry: Any) -> None:
    """Faust's own Prometheus sensor (messages, events, commit/send latency, rebalances, table ops) into the
    service's registry, named floatbridge_underwriter_faust_*."""
    from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor

    metrics = FaustMetrics.create(registry, "floatbridge_underwriter_faust")  # a NamedTuple of metrics
    metrics = metrics._replace(**{name: _LabelCache(getattr(metrics, name)) for name in metrics._fields
                                  if getattr(getattr(metrics, name), "_labelnames", ())})
    app.monitor = PrometheusMonitor(metrics=metrics)


def use_event_loop(choice: str) -> str:
    """Install the worker's event loop policy before the app and its loop exist: uvloop (libuv) runs Faust's
    and aiokafka's many small callbacks and futures at a fraction of the stdlib loop's cost."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
            return "asyncio"
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        return "uvloop"
    return "asyncio"


def run_worker(settings: UnderwriterSettings, loglevel: str = "warning") -> int:
    loop = use_event_loop(settings.event_loop)
    app, uw = create_app(settings)
    attach_faust_sensor(app, uw.metrics.registry)
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, registry=uw.metrics.registry)
    worker = faust.Worker(app, loglevel=loglevel)
    # No terminal progress spinner: its log handler sets the root logger to DEBUG, so every debug call of
    # aiokafka, Faust and mode (several per fetch and per message) built a log record only to drop it.
    worker.spinner = None
    log.info("event loop: %s", loop)
    # The ~150,000 objects of start-up (modules, Faust, aiokafka, the model) never become garbage, yet every full
    # collection walked them all: 130-310 ms pauses of the worker, straight into the decision latency tail.
    # Collected once, then moved out of the collector's sight; full collections then take ~35 ms.
    gc.collect()
    gc.freeze()
    worker.execute_from_commandline()
    return 0


__all__ = ["TableStore", "attach_faust_sensor", "create_app", "process", "process_batch", "run_worker"]
