"""Where simulated events go: a gzip NDJSON file, the ingest HTTP API, or a Kafka topic."""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import orjson

CHUNK = 2_000


def _batches(events: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    it = iter(events)
    while batch := list(islice(it, size)):
        yield batch


def write_ndjson_gz(events: Iterable[dict[str, Any]], path: str, level: int = 1) -> int:
    """Write one compact JSON event per line; byte-identical for identical events (gzip mtime 0, no name)."""
    n = 0
    dumps = orjson.dumps
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=level, mtime=0) as gz:
        buf = io.BufferedWriter(gz, buffer_size=1 << 20)  # type: ignore[arg-type]
        for batch in _batches(events, CHUNK):
            buf.write(b"\n".join(dumps(e) for e in batch) + b"\n")
            n += len(batch)
        buf.flush()
    return n


def read_ndjson(path: str) -> Iterator[dict[str, Any]]:
    """Events from an NDJSON file, gzip or plain (chosen by the .gz suffix)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        for line in fh:
            if line.strip():
                yield orjson.loads(line)


def post_to_ingest(events: Iterable[dict[str, Any]], url: str, api_key: str, batch: int = 500,
                   timeout: float = 30.0) -> tuple[int, int]:
    """POST batches (a JSON array) to the ingest API; returns (sent, rejected-or-failed)."""
    import httpx

    target = url.rstrip("/")
    if not target.endswith("/v1/events"):
        target += "/v1/events"
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    sent = bad = 0
    with httpx.Client(timeout=timeout) as client:
        for chunk in _batches(events, batch):
            resp = client.post(target, content=orjson.dumps(chunk), headers=headers)
            if resp.status_code >= 400 and resp.status_code != 422:
                raise RuntimeError(f"ingest answered {resp.status_code}: {resp.text[:300]}")
            sent += len(chunk)
            try:
                body = resp.json()
                results = body.get("results", []) if isinstance(body, dict) else []
                bad += sum(1 for r in results if isinstance(r, dict) and r.get("status") == "rejected")
            except ValueError:
                pass
    return sent, bad


def produce_to_kafka(events: Iterable[dict[str, Any]], bootstrap: str, topic: str) -> int:
    """Produce each event keyed by merchant id (subject) so a merchant's events stay in order."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                             compression_type="gzip", max_in_flight_requests_per_connection=1)
    n = 0
    try:
        for e in events:
            producer.send(topic, key=e["subject"].encode(), value=orjson.dumps(e),
                          headers=[("ce_id", e["id"].encode())])
            n += 1
        producer.flush()
    finally:
        producer.close()
    return n
