"""Underwriter benchmark: throughput with scoring vs a raw decoder, paced latency, memory per merchant.

    python -m services.underwriter.bench [--events 60000] [--merchants 100000]

Throughput: the same encoded events (interleaved histories of many merchants) go through (a) a raw consumer
that only decodes them and (b) decode + Underwriter.handle (state load/apply/save, features, champion
LightGBM scoring, policy) + encoding of every emitted event. Latency: events paced at 2,000/s, time from
each event's scheduled arrival to its credit_limit.updated being encoded (queueing included). Memory:
tracemalloc over 100,000 merchants' stored states (the bytes the state table holds per merchant).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from datetime import UTC, datetime
from typing import Any

from schemas import codec
from services.underwriter.bootstrap import bootstrap
from services.underwriter.settings import load
from services.underwriter.synthetic import Profile, history

START = datetime(2025, 1, 1, tzinfo=UTC)


def workload(n_events: int) -> list[bytes]:
    merchants = max(1, n_events // 500)
    events: list[dict[str, Any]] = []
    for i in range(merchants):
        events += history(f"bench-{i}", START, 60, Profile(orders_per_day=2 + i % 4), seed=i)
    events.sort(key=lambda e: e["time"])
    return [codec.encode(e) for e in events[:n_events]]


def raw_rate(raw: list[bytes]) -> float:
    t = time.perf_counter()
    for r in raw:
        codec.decode(r)
    return len(raw) / (time.perf_counter() - t)


def core_rate(raw: list[bytes]) -> tuple[float, int]:
    uw = bootstrap(settings=load(debounce_seconds=30))
    emitted = 0
    t = time.perf_counter()
    for r in raw:
        for out in uw.handle(codec.decode(r)):
            codec.encode(out)
            emitted += 1
    return len(raw) / (time.perf_counter() - t), emitted


def batched_rate(raw: list[bytes], batch: int = 1000) -> tuple[float, int]:
    """As core_rate, in batches as the Faust worker takes them from a backlog (Underwriter.handle_batch: each
    merchant of a batch applied in order, saved once and scored at most once, as of its latest event)."""
    uw = bootstrap(settings=load(debounce_seconds=30))
    emitted = 0
    t = time.perf_counter()
    for i in range(0, len(raw), batch):
        out, _ = uw.handle_batch([codec.decode(r) for r in raw[i:i + batch]])
        for ev in out:
            codec.encode(ev)
            emitted += 1
    return len(raw) / (time.perf_counter() - t), emitted


def paced_latency(raw: list[bytes], rate: float = 2000.0) -> tuple[float, float, int]:
    lat = paced_latencies(raw, rate)
    if not lat:
        return 0.0, 0.0, 0
    return lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000, len(lat)


def paced_latencies(raw: list[bytes], rate: float = 2000.0) -> list[float]:
    """Events offered at `rate`/s; sorted seconds from each event's scheduled arrival to its credit_limit.updated."""
    uw = bootstrap(settings=load(debounce_seconds=30))
    lat: list[float] = []
    start = time.perf_counter()
    for i, r in enumerate(raw):
        due = start + i / rate
        now = time.perf_counter()
        if now < due:
            time.sleep(due - now)
        for out in uw.handle(codec.decode(r)):
            codec.encode(out)
            if out["type"] == "credit_limit.updated":
                lat.append(time.perf_counter() - due)
    lat.sort()
    return lat


def memory_per_merchant(n: int) -> tuple[float, float]:
    uw = bootstrap(settings=load(debounce_seconds=30))
    templates = []
    for i in range(20):  # typical: 60 to 90 days of 1-4 orders a day
        events = history("tmpl", START, 60 + i, Profile(orders_per_day=1 + i % 4), seed=i)
        # As the worker applies them: with input positions, so the state carries its position map too.
        for n, e in enumerate(events):
            uw.handle_batch([e], [(f"marketplace.events.v1:{i % 12}", 1_000_000 + n)])
        templates.append(uw.state("tmpl"))
        uw.store.clear()
    # Serialise each template once; every merchant then holds its own copy of those bytes (a distinct object
    # of the same size), so the store holds n real entries without n serialisations under tracemalloc.
    raws = [t.to_bytes() for t in templates]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    store: dict[str, bytes] = {}
    sizes = 0
    for i in range(n):
        raw = bytes(bytearray(raws[i % len(raws)]))
        sizes += len(raw)
        store[f"merchant-{i:07d}"] = raw
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return used / n, sizes / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--merchants", type=int, default=100_000)
    ap.add_argument("--kafka", action="store_true", help="(see tests/integration for the worker on a broker)")
    args = ap.parse_args(argv)
    raw = workload(args.events)
    r = raw_rate(raw)
    c, emitted = core_rate(raw)
    print(f"events: {len(raw)}  raw decode: {r:,.0f} ev/s  decode+handle+score+encode: {c:,.0f} ev/s "
          f"({c / r:.2f}x raw)  emitted: {emitted}")
    b, emitted_b = batched_rate(raw)
    print(f"batches of 1,000 (the worker from a backlog): {b:,.0f} ev/s ({b / r:.2f}x raw)  emitted: {emitted_b}")
    p50, p99, n = paced_latency(raw[: min(len(raw), 20_000)])
    print(f"latency at 2,000 ev/s, event to credit_limit.updated: p50 {p50:.2f} ms  p99 {p99:.2f} ms  ({n} updates)")
    per, size = memory_per_merchant(args.merchants)
    print(f"memory: {args.merchants:,} merchants, {per:,.0f} bytes per merchant held (state bytes {size:,.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
