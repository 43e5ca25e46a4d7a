"""The benchmark catalog: every figure with its limit from the issues."""

from __future__ import annotations

from floatbridge.bench import ingest, pipeline, underwriter, underwriter_kafka
from floatbridge.bench.core import Benchmark
from floatbridge.bench.core import Figure as F

BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("ingest", "Ingest HTTP batch -> broker", ingest.run, (
        F("http_eps", "POST /v1/events -> broker (acks=all, PG dedupe, 1 process)", "ev/s", 20_000),
        F("ratio_to_raw", "HTTP / raw tuned producer", "x", 0.5),
        F("raw_tuned_eps", "raw kafka-python producer, ingest settings", "ev/s"),
        F("raw_naive_eps", "raw kafka-python producer, library defaults", "ev/s"),
        F("core_eps", "ingest core in process (no HTTP/broker/DB)", "ev/s"),
    ), notes="batches of 500 order.placed events from 4 concurrent HTTP clients into one uvicorn process "
             "(PostgreSQL dedupe store, 6 partitions); the raw producers send the same canonical payloads."),
    Benchmark("underwriter", "Underwriter per-worker core", underwriter.throughput, (
        F("worker_eps", "decode + handle + score + encode, per worker", "ev/s", 10_000),
        F("ratio_to_raw", "worker / raw decode loop", "x", 0.5),
        F("raw_decode_eps", "raw consumer decode loop", "ev/s"),
    ), notes="in process, the core a Faust worker runs, champion LightGBM model, debounce 30 s."),
    Benchmark("underwriter_kafka", "Underwriter Faust workers on the broker", underwriter_kafka.run, (
        F("eps_1_worker", "1 worker, events/s", "ev/s", 10_000),
        F("eps_2_workers", "2 workers, events/s (total)", "ev/s", 20_000),
        F("eps_per_worker_2", "2 workers, events/s per worker", "ev/s", 10_000),
        F("raw_consumer_eps", "raw kafka-python consumer + decode", "ev/s"),
        F("ratio_to_raw_1", "1 worker / raw consumer", "x", 0.5),
        F("broker_p50_ms_2k", "1 worker, event produced -> credit_limit.updated consumed, p50 at 2,000 ev/s", "ms"),
        F("broker_p99_ms_2k", "1 worker, event produced -> credit_limit.updated consumed, p99 at 2,000 ev/s", "ms",
          200, higher_is_better=False),
        F("broker_updates_2k", "credit_limit.updated measured at 2,000 ev/s", "updates"),
    ), max_repeat=1,
        notes="events pre-produced to a fresh topic (6 partitions), then `floatbridge underwriter worker` "
              "processes (memory:// tables) consume them; rate = events counted from the moment every worker "
              "handles records (the start-up rebalance stays out of the window) until the workers' events "
              "counters reach the total. Latency: a fresh worker, events produced at a steady 2,000/s, from "
              "each event's scheduled send time to its credit_limit.updated read back from the broker."),
    Benchmark("latency", "Event -> credit_limit.updated", underwriter.latency, (
        F("p50_ms_1k", "p50 at 1,000 ev/s", "ms"), F("p99_ms_1k", "p99 at 1,000 ev/s", "ms"),
        F("p999_ms_1k", "p99.9 at 1,000 ev/s", "ms"),
        F("p50_ms_2k", "p50 at 2,000 ev/s", "ms"),
        F("p99_ms_2k", "p99 at 2,000 ev/s", "ms", 200, higher_is_better=False),
        F("p999_ms_2k", "p99.9 at 2,000 ev/s", "ms"),
        F("p50_ms_5k", "p50 at 5,000 ev/s", "ms"), F("p99_ms_5k", "p99 at 5,000 ev/s", "ms"),
        F("p999_ms_5k", "p99.9 at 5,000 ev/s", "ms"),
    ), notes="events offered at a fixed rate to one in-process worker core for 10 s; latency from each "
             "event's scheduled arrival (queueing included) to its credit_limit.updated being encoded."),
    Benchmark("accept", "Acceptance -> loan.disbursed", pipeline.accept, (
        F("p99_ms", "accept -> loan.disbursed published, p99", "ms", 100, higher_is_better=False),
        F("p50_ms", "accept -> loan.disbursed published, p50", "ms"),
        F("outbox_p99_ms", "accept -> loan.disbursed committed, p99", "ms"),
    ), notes="real FastAPI app under uvicorn, PostgreSQL, outbox relayed to Kafka; 300 sequential acceptances."),
    Benchmark("scoring", "Single-merchant scoring", underwriter.scoring, (
        F("score_us", "LightGBMScorer.score (PD + reason codes)", "µs", higher_is_better=False),
        F("bare_predict_us", "bare LightGBM single-row predict", "µs", higher_is_better=False),
        F("bare_contrib_us", "bare LightGBM single-row pred_contrib", "µs", higher_is_better=False),
        F("ratio_to_bare", "score / bare predict", "x", higher_is_better=False),
    ), notes="champion model of models/registry; one row per call."),
    Benchmark("memory", "Memory per merchant", underwriter.memory, (
        F("held_bytes_100k", "held per merchant, 100k merchants", "bytes", 4096, higher_is_better=False),
        F("held_bytes_1m", "held per merchant, 1M merchants", "bytes", 4096, higher_is_better=False),
        F("state_bytes_100k", "serialised MerchantState, 100k", "bytes"),
        F("state_bytes_1m", "serialised MerchantState, 1M", "bytes"),
    ), max_repeat=1, warmup=False,
        notes="tracemalloc over a dict of serialised states as the table store holds them (60-90 day histories)."),
    Benchmark("embedded", "Embedded demo (200 merchants x 90 days)", pipeline.demo, (
        F("events_per_second", "embedded engine throughput", "ev/s", 50_000),
        F("seconds", "demo wall time", "s", 120, higher_is_better=False),
        F("events", "events", "events"),
    ), notes="`floatbridge demo` path: simulator + underwriter + disbursement (SQLite) in one process."),
    Benchmark("olist", "Olist replay (full data set)", pipeline.olist, (
        F("seconds", "replay_olist wall time", "s", 60, higher_is_better=False),
        F("events", "events", "events"),
        F("events_per_second", "events/s", "ev/s"),
    ), max_repeat=1, warmup=False, notes="conversion of the Olist CSVs to events plus the embedded run."),
    Benchmark("training", "Training on 1M rows", pipeline.training, (
        F("seconds", "LightGBM training (project params, early stopping)", "s"),
        F("rounds", "boosting rounds", "rounds"),
        F("rows", "rows", "rows"),
    ), max_repeat=1, warmup=False,
        notes="synthetic feature rows of the real FEATURE_NAMES width, 80/20 split, lgb_params(TrainConfig())."),
)


def select(only: list[str] | None) -> tuple[Benchmark, ...]:
    if not only:
        return BENCHMARKS
    known = {b.name: b for b in BENCHMARKS}
    unknown = [n for n in only if n not in known]
    if unknown:
        raise ValueError(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(known)}")
    return tuple(known[n] for n in only)
