"""Real Faust underwriter workers on the broker (1 and 2 workers) next to a raw kafka-python consumer."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from floatbridge.bench import infra
from floatbridge.bench.core import NotRun, Sizes
from schemas import codec

PARTITIONS = 6
COUNTER = "floatbridge_underwriter_events_total{"


def _produce(bootstrap: str, topic: str, raw: list[bytes]) -> None:
    import orjson
    from kafka import KafkaProducer

    from services.ingest.adapters.kafka_sink import producer_config

    producer = KafkaProducer(**producer_config(bootstrap, 60.0))
    for value in raw:
        producer.send(topic, value=value, key=orjson.loads(value)["subject"].encode())
    producer.flush(120)
    producer.close()


def raw_consumer_rate(bootstrap: str, topic: str, n: int) -> float:
    """A bare consumer that fetches and decodes every record: the ceiling of a worker."""
    from kafka import KafkaConsumer

    from schemas import codec

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap.split(","), auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, consumer_timeout_ms=30_000)
    seen = 0
    start = 0.0
    for rec in consumer:
        if not seen:
            start = time.perf_counter()
        codec.decode(rec.value)
        seen += 1
        if seen >= n:
            break
    elapsed = time.perf_counter() - start
    consumer.close()
    if seen < n:
        raise RuntimeError(f"raw consumer saw {seen} of {n} records")
    return (n - 1) / elapsed


def metric_sum(port: int, prefix: str) -> float:
    """The sum of a worker's /metrics samples whose line starts with `prefix` (0 while it is not up yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def events_counted(port: int) -> float:
    """Events a worker has handled, read from its metrics endpoint (0 while it is not up yet)."""
    return metric_sum(port, COUNTER)


def _start_workers(bootstrap: str, app_id: str, topics: dict[str, str], workers: int,
                   work: Path) -> list[tuple[subprocess.Popen[bytes], int]]:
    from floatbridge.stack import free_ports

    env = dict(os.environ)
    env.update({
        "FLOATBRIDGE_UNDERWRITER_KAFKA_BOOTSTRAP": bootstrap, "FLOATBRIDGE_UNDERWRITER_APP_ID": app_id,
        "FLOATBRIDGE_UNDERWRITER_STORE": "memory://", "FLOATBRIDGE_UNDERWRITER_PARTITIONS": str(PARTITIONS),
        "FLOATBRIDGE_UNDERWRITER_MARKETPLACE_TOPIC": topics["events"],
        "FLOATBRIDGE_UNDERWRITER_LOANS_TOPIC": topics["loans"],
        "FLOATBRIDGE_UNDERWRITER_LIMITS_TOPIC": topics["limits"],
        "FLOATBRIDGE_UNDERWRITER_OFFERS_TOPIC": topics["offers"],
    })
    procs: list[tuple[subprocess.Popen[bytes], int]] = []
    ports = free_ports(2 * workers)  # distinct: two separate picks could return the same port
    for i in range(workers):
        port = ports[2 * i]
        wenv = env | {"FLOATBRIDGE_UNDERWRITER_METRICS_PORT": str(port),
                      "FLOATBRIDGE_UNDERWRITER_WEB_PORT": str(ports[2 * i + 1]),
                      "FLOATBRIDGE_UNDERWRITER_DATA_DIR": str(work / f"w{i}")}
        log = open(work / f"w{i}.log", "wb")  # noqa: SIM115 - closed with the process
        procs.append((subprocess.Popen([sys.executable, "-m", "floatbridge.cli", "underwriter", "worker"],
                                       env=wenv, stdout=log, stderr=subprocess.STDOUT, cwd=infra.ROOT), port))
    return procs


def _check_alive(procs: list[tuple[subprocess.Popen[bytes], int]], work: Path) -> None:
    for p, _ in procs:
        if p.poll() is not None:
            lines = [ln for ln in (work / "w0.log").read_text(errors="replace").splitlines() if ln.strip()]
            raise RuntimeError(f"worker exited with {p.returncode}: {lines[-1] if lines else 'no output'}")


def _stop_workers(procs: list[tuple[subprocess.Popen[bytes], int]]) -> None:
    for p, _ in procs:
        p.terminate()
    for p, _ in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def workers_rate(bootstrap: str, rid: str, topics: dict[str, str], n: int, workers: int) -> float:
    """Start `workers` processes on a topic already holding n events; events/s from the moment every worker has
    handled records to the last record counted."""
    work = Path(tempfile.mkdtemp(prefix="fb-bench-uw-"))
    procs = _start_workers(bootstrap, f"{rid}-w{workers}", topics, workers, work)
    started = time.perf_counter()
    try:
        first = last = 0.0
        first_count = 0.0
        deadline = time.monotonic() + 120 + n / 500
        while time.monotonic() < deadline:
            _check_alive(procs, work)
            counts = [events_counted(port) for _, port in procs]
            total = sum(counts)
            now = time.perf_counter()
            # Counting starts once every worker handles records: the rebalance that a joining worker triggers
            # (and the records one worker takes alone before it) stays out of the measured window.
            if all(counts) and not first:
                first, first_count = now, total
            if total >= n:
                last = now
                break
            # A scrape renders every metric and takes CPU from the workers: once counting started, poll once a
            # second while the end is far (by the rate so far), every 20 ms when it is near.
            if not first:
                time.sleep(0.02)
            else:
                rate = (total - first_count) / (now - first) if now > first else 0.0
                time.sleep(0.02 if rate <= 0 or (n - total) / rate < 1.5 else 1.0)
        if not last:
            raise RuntimeError(f"workers handled {total:.0f} of {n} events in time")
        if first and last > first:
            return (n - first_count) / (last - first)
        # All handled between two polls, or before every worker took part (a tiny run): a lower bound, start-up
        # included.
        return n / (last - started)
    finally:
        _stop_workers(procs)


def worker_latency(bootstrap: str, rid: str, raw: list[bytes], rate: float) -> list[float]:
    """One worker on empty topics; `raw` produced at `rate`/s; sorted seconds from each event's scheduled send
    time (producer queueing included) to its credit_limit.updated arriving at a consumer of the limits topic
    (the worker's batching, scoring, changelog and producer, and both broker hops)."""
    import threading

    import orjson
    from kafka import KafkaConsumer, KafkaProducer

    from services.ingest.adapters.kafka_sink import producer_config

    topics = {k: f"{rid}.lat.{k}" for k in ("events", "loans", "limits", "offers")}
    infra.create_topics(bootstrap, list(topics.values()), PARTITIONS)
    work = Path(tempfile.mkdtemp(prefix="fb-bench-uw-lat-"))
    procs = _start_workers(bootstrap, f"{rid}-lat", topics, 1, work)
    arrived: dict[str, float] = {}
    stop = threading.Event()
    consumer = KafkaConsumer(topics["limits"], bootstrap_servers=bootstrap.split(","), auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, fetch_max_wait_ms=5)

    def collect() -> None:
        while not stop.is_set():
            for records in consumer.poll(timeout_ms=50).values():
                now = time.perf_counter()
                for rec in records:
                    arrived.setdefault(orjson.loads(rec.value)["data"]["trigger_event_id"], now)

    reader = threading.Thread(target=collect, daemon=True)
    producer = KafkaProducer(**producer_config(bootstrap, 60.0))
    try:
        # Warm-up: a short history of one merchant, until its first credit_limit.updated is read back. The worker
        # is then up, owns its partitions, has scored and written to the limits topic (producer metadata and
        # connections made): the figures are the steady state, not the worker's first seconds.
        from datetime import UTC, datetime

        from services.underwriter.synthetic import Profile, history

        warm = history("lat-warm", datetime(2024, 6, 1, tzinfo=UTC), 20, Profile(orders_per_day=3), seed=1)
        reader.start()
        for ev in warm:
            producer.send(topics["events"], key=b"lat-warm", value=codec.encode(ev))
        producer.flush(30)
        warm_ids = {ev["id"] for ev in warm}
        deadline = time.monotonic() + 120
        while not any(i in arrived for i in warm_ids):  # the reader thread adds to `arrived` meanwhile
            _check_alive(procs, work)
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not decide the warm-up merchant in time")
            time.sleep(0.1)
        scheduled: dict[str, float] = {}
        keyed = [(orjson.loads(value), value) for value in raw]
        start = time.perf_counter() + 0.1
        for i, (ev, value) in enumerate(keyed):
            due = start + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            producer.send(topics["events"], key=ev["subject"].encode(), value=value)
            scheduled[ev["id"]] = due
        producer.flush(60)
        time.sleep(3)  # the last decisions (a batch window, a flush interval) reach the consumer
    finally:
        stop.set()
        if reader.is_alive():
            reader.join(5)
        consumer.close()
        producer.close()
        _stop_workers(procs)
        infra.delete_topics_with_prefix(bootstrap, f"{rid}.lat.")
    return sorted(arrived[i] - scheduled[i] for i in arrived if i in scheduled)


def _percentile_ms(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))] * 1000 if values else float("nan")


def run(sizes: Sizes) -> dict[str, float]:
    bootstrap = infra.kafka()
    if bootstrap is None:
        raise NotRun("no Kafka broker reachable")
    try:
        from services.underwriter import bench as ub
    except ImportError as exc:
        raise NotRun(f"underwriter not importable: {exc}") from None
    n = sizes.pick(60_000, 1_500)
    rid = infra.run_id("bench-uw")
    topics = {k: f"{rid}.{k}" for k in ("events", "loans", "limits", "offers")}
    infra.create_topics(bootstrap, list(topics.values()), PARTITIONS)
    try:
        raw = ub.workload(n)
        _produce(bootstrap, topics["events"], raw)
        raw_eps = raw_consumer_rate(bootstrap, topics["events"], len(raw))
        one = workers_rate(bootstrap, rid, topics, len(raw), 1)
        two = workers_rate(bootstrap, rid, topics, len(raw), 2)
        lat = worker_latency(bootstrap, rid, raw[: sizes.pick(20_000, 500)], 2000.0)
    finally:
        infra.delete_topics_with_prefix(bootstrap, rid)
    return {"eps_1_worker": one, "eps_2_workers": two, "eps_per_worker_2": two / 2,
            "raw_consumer_eps": raw_eps, "ratio_to_raw_1": one / raw_eps,
            "broker_p50_ms_2k": _percentile_ms(lat, 0.5), "broker_p99_ms_2k": _percentile_ms(lat, 0.99),
            "broker_updates_2k": float(len(lat))}
