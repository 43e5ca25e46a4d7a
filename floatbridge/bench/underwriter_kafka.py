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


def events_counted(port: int) -> float:
    """Events a worker has handled, read from its metrics endpoint (0 while it is not up yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(COUNTER))


def workers_rate(bootstrap: str, rid: str, topics: dict[str, str], n: int, workers: int) -> float:
    """Start `workers` processes on a topic already holding n events; events/s from first to last counted."""
    from floatbridge.stack import free_port

    work = Path(tempfile.mkdtemp(prefix="fb-bench-uw-"))
    procs: list[tuple[subprocess.Popen[bytes], int]] = []
    env = dict(os.environ)
    env.update({
        "FLOATBRIDGE_UNDERWRITER_KAFKA_BOOTSTRAP": bootstrap, "FLOATBRIDGE_UNDERWRITER_APP_ID": f"{rid}-w{workers}",
        "FLOATBRIDGE_UNDERWRITER_STORE": "memory://", "FLOATBRIDGE_UNDERWRITER_PARTITIONS": str(PARTITIONS),
        "FLOATBRIDGE_UNDERWRITER_MARKETPLACE_TOPIC": topics["events"],
        "FLOATBRIDGE_UNDERWRITER_LOANS_TOPIC": topics["loans"],
        "FLOATBRIDGE_UNDERWRITER_LIMITS_TOPIC": topics["limits"],
        "FLOATBRIDGE_UNDERWRITER_OFFERS_TOPIC": topics["offers"],
    })
    try:
        for i in range(workers):
            port = free_port()
            wenv = env | {"FLOATBRIDGE_UNDERWRITER_METRICS_PORT": str(port),
                          "FLOATBRIDGE_UNDERWRITER_WEB_PORT": str(free_port()),
                          "FLOATBRIDGE_UNDERWRITER_DATA_DIR": str(work / f"w{i}")}
            log = open(work / f"w{i}.log", "wb")  # noqa: SIM115 - closed with the process
            procs.append((subprocess.Popen([sys.executable, "-m", "floatbridge.cli", "underwriter", "worker"],
                                           env=wenv, stdout=log, stderr=subprocess.STDOUT, cwd=infra.ROOT), port))
        first = last = 0.0
        first_count = 0.0
        deadline = time.monotonic() + 120 + n / 500
        while time.monotonic() < deadline:
            for p, _ in procs:
                if p.poll() is not None:
                    lines = [ln for ln in (work / "w0.log").read_text(errors="replace").splitlines() if ln.strip()]
                    raise RuntimeError(f"worker exited with {p.returncode}: {lines[-1] if lines else 'no output'}")
            total = sum(events_counted(port) for _, port in procs)
            now = time.perf_counter()
            if total and not first:
                first, first_count = now, total
            if total >= n:
                last = now
                break
            time.sleep(0.2)  # a scrape renders every metric: polling faster takes CPU from the workers measured
        if not last:
            raise RuntimeError(f"workers handled {total:.0f} of {n} events in time")
        return (n - first_count) / (last - first)
    finally:
        for p, _ in procs:
            p.terminate()
        for p, _ in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


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
    finally:
        infra.delete_topics_with_prefix(bootstrap, rid)
    return {"eps_1_worker": one, "eps_2_workers": two, "eps_per_worker_2": two / 2,
            "raw_consumer_eps": raw_eps, "ratio_to_raw_1": one / raw_eps}
