"""Bounded soak: the distributed stack under a fixed event rate through HTTP ingest, sampling every
process's RSS and the consumer lag every few seconds; reports memory slope and max lag."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

INGEST_KEY = "soak-marketplace-key-0123456789"


@dataclass
class SoakOptions:
    minutes: float = 10.0
    rate: int = 500
    sample_seconds: float = 10.0
    kafka: str | None = None
    database_url: str | None = None
    workdir: Path = Path(".local/soak")
    workers: int = 2


@dataclass
class SoakResult:
    samples: list[dict[str, Any]] = field(default_factory=list)
    sent: int = 0
    accepted: int = 0
    errors: int = 0
    audit_ok: bool = False
    audit_text: str = ""

    @property
    def ok(self) -> bool:
        return self.audit_ok and self.sent > 0

    def slopes_mib_per_min(self) -> dict[str, float]:
        out: dict[str, float] = {}
        names = {n for s in self.samples for n in s["rss_mib"]}
        for n in sorted(names):
            pts = [(s["t"], s["rss_mib"][n]) for s in self.samples if n in s["rss_mib"]]
            out[n] = round(_slope(pts) * 60, 3) if len(pts) > 1 else 0.0
        return out

    def max_lag(self) -> int:
        return max((s["lag"] for s in self.samples), default=0)

    def to_text(self) -> str:
        return "\n".join([
            f"soak: sent {self.sent} events, accepted {self.accepted}, client errors {self.errors}",
            f"  samples: {len(self.samples)}; max consumer lag: {self.max_lag()} records",
            "  RSS slope (MiB/min): " + ", ".join(f"{k} {v:+}" for k, v in self.slopes_mib_per_min().items()),
            "  RSS last (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in (self.samples[-1]["rss_mib"]
                                                                      if self.samples else {}).items()),
            f"  audit: {'OK' if self.audit_ok else 'DISCREPANCIES'}",
        ])


def _slope(pts: list[tuple[float, float]]) -> float:
    n = len(pts)
    mx, my = sum(p[0] for p in pts) / n, sum(p[1] for p in pts) / n
    den = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / den if den else 0.0


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def consumer_lag(kafka: str, groups: list[str]) -> int:
    """Total records behind the committed offsets of `groups` (the observability lag adapter)."""
    from floatbridge.observability.lag import KafkaOffsetSource, compute_lag

    source = KafkaOffsetSource(kafka)
    try:
        total = 0
        for g in groups:
            committed = source.committed(g)
            if committed:
                total += sum(x.lag for x in compute_lag(g, committed, source.end_offsets(committed.keys())))
        return total
    finally:
        source.close()


def _events(i: int, merchants: int, now: datetime) -> list[dict[str, Any]]:
    from schemas.codec import new_event

    mid = f"soak-m{i % merchants}"
    when = now - timedelta(seconds=5)
    money = {"amount": 10_000 + i % 5_000, "currency": "BRL"}
    return [new_event("order.placed", mid, {"order_id": f"so-{i}", "buyer_id": f"buyer-{i % 997}", "amount": money},
                      when, "https://marketplace.example/events", id=f"soak-{i}")]


def run(opts: SoakOptions) -> SoakResult:
    from floatbridge.audit.sources import audit
    from floatbridge.audit.traffic import Marketplace
    from floatbridge.stack import Stack, StackConfig, free_port
    from schemas.codec import new_event

    prefix = f"soak-{int(time.time())}."
    kafka = opts.kafka or os.environ.get("FLOATBRIDGE_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    db = opts.database_url or os.environ.get(
        "FLOATBRIDGE_DATABASE_URL", "postgresql+psycopg2://floatbridge:floatbridge@127.0.0.1:55432/floatbridge")
    cfg = StackConfig(kafka=kafka, database_url=db, workdir=opts.workdir, ingest_api_key=INGEST_KEY,
                      admin_api_key="soak-admin-key-0123456789", buyer_hash_key="soak-buyer-hash-key",
                      topic_prefix=prefix, ingest_port=free_port(), disbursement_port=free_port(),
                      metrics_port_base=free_port(), web_port_base=free_port(), underwriter_workers=opts.workers)
    stack = Stack(cfg)
    stack.prepare()
    stack.start(wait=120)
    result = SoakResult()
    market = Marketplace(f"http://127.0.0.1:{cfg.ingest_port}", INGEST_KEY, attempts=20)
    groups = [prefix + "disbursement"] + ([prefix + cfg.app_id] if opts.workers else [])
    stop = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        while not stop.wait(opts.sample_seconds):
            try:
                lag = consumer_lag(kafka, groups)
            except Exception:  # a sample is best effort; a missing one shows as a gap
                lag = -1
            result.samples.append({"t": round(time.monotonic() - t0, 1), "lag": lag, "rss_mib": {
                n: round(rss_mib(p.proc.pid), 1) for n, p in stack.procs.items() if p.proc}})

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        merchants = 50
        now = datetime.now(UTC).replace(microsecond=0)
        batch = [new_event("merchant.onboarded", f"soak-m{k}", {"category": "toys", "country": "BR", "currency": "BRL"},
                           now - timedelta(days=1), "https://marketplace.example/events", id=f"soak-onb-{k}")
                 for k in range(merchants)]
        market.send(batch)
        i, end = 0, t0 + opts.minutes * 60
        per_tick = max(1, opts.rate // 10)  # ten batches a second
        while time.monotonic() < end:
            tick = time.monotonic()
            events = [e for j in range(per_tick) for e in _events(i + j, merchants, datetime.now(UTC))]
            i += per_tick
            try:
                market.send(events)
            except AssertionError:
                result.errors += 1
            result.sent += len(events)
            time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
        time.sleep(opts.sample_seconds)
    finally:
        stop.set()
        sampler.join(30)
        result.accepted = len(market.accepted_ids())
        report = audit(kafka, db, prefix, settle_seconds=60)
        result.audit_ok, result.audit_text = report.ok, report.to_text()
        stack.stop()
    opts.workdir.mkdir(parents=True, exist_ok=True)
    (opts.workdir / "soak-report.json").write_text(json.dumps({
        "sent": result.sent, "accepted": result.accepted, "errors": result.errors, "max_lag": result.max_lag(),
        "rss_slope_mib_per_min": result.slopes_mib_per_min(), "samples": result.samples,
        "audit": result.audit_text}, indent=2))
    return result
