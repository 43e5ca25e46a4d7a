"""Bounded soak: the distributed stack under a fixed event rate through HTTP ingest, sampling every
process's RSS, the consumer lag and the underwriter's merchants in state every few seconds; reports
memory growth (whole run, warm-up and steady state), lag (max and 95th percentile) and the audit.

Every run is isolated so that the audit reconciles only its own traffic: a run id prefixes every event
id, the topics, consumer groups and Faust app id (`soak-<run>.`), and the ingest dedupe table and the
disbursement tables live in a fresh PostgreSQL schema (`soak_<run>`). After a clean run the schema and
topics are dropped; after a failed run (or with keep=True) they are kept for inspection, named by run id."""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

INGEST_KEY = "soak-marketplace-key-0123456789"
DEFAULT_DB = "postgresql+psycopg2://floatbridge:floatbridge@127.0.0.1:55432/floatbridge"


@dataclass
class SoakOptions:
    minutes: float = 10.0
    rate: int = 500
    sample_seconds: float = 10.0
    kafka: str | None = None
    database_url: str | None = None
    workdir: Path = Path(".local/soak")
    workers: int = 2
    merchants: int = 50  # bounded: the underwriter's state should plateau at this many merchants
    keep: bool = False  # keep the run's schema and topics even when the audit is clean
    drain_seconds: float = 180.0  # after the last event, wait up to this long for the consumers to catch up


@dataclass(frozen=True)
class SoakRun:
    """The names that isolate one soak run from every other (earlier soaks, tests, developers)."""

    run_id: str
    topic_prefix: str
    schema: str
    database_url: str  # the base URL pinned to `schema` (search_path)

    def event_id(self, kind: str, n: int) -> str:
        return f"{self.run_id}-{kind}{n}"


def new_run_id(now: datetime | None = None) -> str:
    """`soak<UTC yyyymmddHHMMSS><6 hex>`: sortable by start time, unique across concurrent runs."""
    now = now or datetime.now(UTC)
    return f"soak{now:%Y%m%d%H%M%S}{uuid.uuid4().hex[:6]}"


def plan_run(base_url: str, run_id: str | None = None) -> SoakRun:
    run_id = run_id or new_run_id()
    if not re.fullmatch(r"[a-z0-9]{1,50}", run_id):
        raise ValueError(f"run id must be 1-50 lowercase letters/digits, got {run_id!r}")
    schema = f"soak_{run_id}"
    return SoakRun(run_id=run_id, topic_prefix=f"soak-{run_id}.", schema=schema,
                   database_url=with_search_path(base_url, schema))


def with_search_path(url: str, schema: str) -> str:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    query = dict(parsed.query)
    query["options"] = f"-csearch_path={schema}"
    return parsed.set(query=query).render_as_string(hide_password=False)


def base_url_of(url: str) -> str:
    """`url` without a search_path option (for creating and dropping the run's schema)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    query = {k: v for k, v in parsed.query.items() if k != "options"}
    return parsed.set(query=query).render_as_string(hide_password=False)


def create_schema(base_url: str, schema: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))  # fails if it exists: a run never reuses one
    finally:
        engine.dispose()


def drop_schema(base_url: str, schema: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        engine.dispose()


def delete_topics(kafka: str, prefix: str) -> int:
    """Delete every topic whose name starts with the run's prefix (catalog, changelog, repartition)."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka, request_timeout_ms=30000)
    try:
        names = [n for n in admin.list_topics() if n.startswith(prefix)]
        if names:
            admin.delete_topics(names, timeout_ms=30000)
        return len(names)
    finally:
        admin.close()


def _slope(pts: list[tuple[float, float]]) -> float:
    n = len(pts)
    mx, my = sum(p[0] for p in pts) / n, sum(p[1] for p in pts) / n
    den = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / den if den else 0.0


def _percentile(values: list[int], q: float) -> int:
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class SoakResult:
    run_id: str = ""
    duration_s: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)
    sent: int = 0
    accepted: int = 0
    duplicates: int = 0  # run-unique ids: only a resend after a lost answer can come back duplicate
    rejected: int = 0
    errors: int = 0  # batches that failed for good (a non-200/503 answer or not final after the retries)
    http_errors: dict[int, int] = field(default_factory=dict)  # status (0 = connection) -> count, retried
    client_accepted_missing: int = 0  # accepted per the client, not marked done in the run's dedupe table
    drained_after_s: float | None = None  # seconds after the last event until the lag was 0 (None: never)
    lag_final: int = -1
    exited: dict[str, int | None] = field(default_factory=dict)  # process -> exit code, for those that died
    audit_ok: bool = False
    audit_text: str = ""
    cleanup: str = ""

    @property
    def ok(self) -> bool:
        return (self.audit_ok and self.sent > 0 and self.client_accepted_missing == 0 and not self.exited
                and self.drained_after_s is not None)

    def rss_series(self, name: str) -> list[tuple[float, float]]:
        return [(s["t"], s["rss_mib"][name]) for s in self.samples if s["rss_mib"].get(name)]

    def slopes_mib_per_min(self, since: float = 0.0) -> dict[str, float]:
        """Least-squares RSS slope per process over the samples at t >= `since` seconds."""
        out: dict[str, float] = {}
        for n in sorted({n for s in self.samples for n in s["rss_mib"]}):
            pts = [p for p in self.rss_series(n) if p[0] >= since]
            out[n] = round(_slope(pts) * 60, 3) if len(pts) > 1 else 0.0
        return out

    def half(self) -> float:
        return (self.samples[-1]["t"] / 2) if self.samples else 0.0

    def rss_at(self, name: str, which: str) -> float:
        pts = self.rss_series(name)
        if not pts:
            return 0.0
        if which == "first":
            return pts[0][1]
        if which == "last":
            return pts[-1][1]
        return max((p for p in pts if p[0] <= self.half()), key=lambda p: p[0], default=pts[0])[1]  # "mid"

    def lags(self) -> list[int]:
        return [s["lag"] for s in self.samples if s["lag"] >= 0]

    def max_lag(self) -> int:
        return max(self.lags(), default=0)

    def p95_lag(self) -> int:
        return _percentile(self.lags(), 0.95)

    def merchants_in_state(self) -> list[int]:
        return [s["merchants"] for s in self.samples if s.get("merchants", -1) >= 0]

    def summary(self) -> dict[str, Any]:
        names = sorted({n for s in self.samples for n in s["rss_mib"]})
        ms = self.merchants_in_state()
        return {
            "run_id": self.run_id, "duration_s": round(self.duration_s, 1), "sent": self.sent,
            "achieved_rate_per_s": round(self.sent / self.duration_s, 1) if self.duration_s else 0.0,
            "accepted": self.accepted, "duplicates": self.duplicates, "rejected": self.rejected,
            "errors": self.errors, "http_errors_retried": self.http_errors,
            "client_accepted_missing": self.client_accepted_missing,
            "samples": len(self.samples), "lag_max": self.max_lag(), "lag_p95": self.p95_lag(),
            "lag_final": self.lag_final, "drained_after_s": self.drained_after_s, "exited": self.exited,
            "merchants_in_state_first": ms[0] if ms else None, "merchants_in_state_last": ms[-1] if ms else None,
            "merchants_in_state_max": max(ms) if ms else None,
            "merchants_by_worker_last": self.samples[-1].get("merchants_by_worker") if self.samples else None,
            "rss_mib": {n: {"first": self.rss_at(n, "first"), "mid": self.rss_at(n, "mid"),
                            "last": self.rss_at(n, "last")} for n in names},
            "rss_slope_mib_per_min_all": self.slopes_mib_per_min(),
            "rss_slope_mib_per_min_second_half": self.slopes_mib_per_min(self.half()),
            "audit_ok": self.audit_ok, "cleanup": self.cleanup,
        }

    def to_text(self) -> str:
        sm = self.summary()
        rss = sm["rss_mib"]
        ms = self.merchants_in_state()
        return "\n".join([
            f"soak {self.run_id}: {sm['duration_s']} s, sent {self.sent} events ({sm['achieved_rate_per_s']}/s), "
            f"accepted {self.accepted} (of which duplicate {self.duplicates}), rejected {self.rejected}, "
            f"client errors {self.errors}, retried answers {self.http_errors or 'none'}",
            f"  accepted by the client but not done in the run's dedupe table: {self.client_accepted_missing}",
            f"  samples: {len(self.samples)}; consumer lag max {sm['lag_max']}, p95 {sm['lag_p95']}, "
            f"after the last event: {self.lag_final} records, "
            + (f"drained in {self.drained_after_s} s" if self.drained_after_s is not None else "NOT drained"),
            f"  processes that died during the run: {self.exited or 'none'}",
            f"  underwriter merchants in state (sum over workers, standby copies included): first {sm['merchants_in_state_first']}, "
            f"max {sm['merchants_in_state_max']}, last {sm['merchants_in_state_last']} "
            f"(per worker {sm['merchants_by_worker_last']}; {len(ms)} samples)",
            "  RSS first/mid/last (MiB): " + ", ".join(
                f"{k} {v['first']:.0f}/{v['mid']:.0f}/{v['last']:.0f}" for k, v in rss.items()),
            "  RSS slope, whole run (MiB/min): " + ", ".join(
                f"{k} {v:+}" for k, v in sm["rss_slope_mib_per_min_all"].items()),
            "  RSS slope, second half = steady state (MiB/min): " + ", ".join(
                f"{k} {v:+}" for k, v in sm["rss_slope_mib_per_min_second_half"].items()),
            f"  audit: {'OK' if self.audit_ok else 'DISCREPANCIES'}",
            *("    " + line for line in self.audit_text.splitlines()[:20]),
            f"  cleanup: {self.cleanup}",
        ])


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


_GAUGE = re.compile(r"^floatbridge_underwriter_table_merchants\s+([0-9.eE+-]+)\s*$", re.M)


def merchants_in_state(ports: list[int]) -> list[int]:
    """Each worker's `floatbridge_underwriter_table_merchants` gauge (the merchants its table holds, active
    and standby partitions alike); -1 for a worker that did not answer."""
    import urllib.request

    out = []
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                m = _GAUGE.search(resp.read().decode("utf-8", "replace"))
        except OSError:
            m = None
        out.append(int(float(m.group(1))) if m else -1)
    return out


def merchant_id(k: int) -> str:
    return f"soak-m{k}"


def onboarding(run: SoakRun, merchants: int, now: datetime) -> list[dict[str, Any]]:
    from schemas.codec import new_event

    return [new_event("merchant.onboarded", merchant_id(k), {"category": "toys", "country": "BR", "currency": "BRL"},
                      now - timedelta(days=1), "https://marketplace.example/events", id=run.event_id("onb", k))
            for k in range(merchants)]


def order_event(run: SoakRun, i: int, merchants: int, now: datetime) -> dict[str, Any]:
    """The i-th order of the run: merchants cycle over a bounded set; ids are unique to the run."""
    from schemas.codec import new_event

    money = {"amount": 10_000 + i % 5_000, "currency": "BRL"}
    return new_event("order.placed", merchant_id(i % merchants),
                     {"order_id": f"{run.run_id}-so{i}", "buyer_id": f"buyer-{i % 997}", "amount": money},
                     now - timedelta(seconds=5), "https://marketplace.example/events", id=run.event_id("o", i))


def run(opts: SoakOptions) -> SoakResult:
    from floatbridge.audit.checks import Snapshot
    from floatbridge.audit.sources import audit, read_database
    from floatbridge.audit.traffic import Marketplace
    from floatbridge.stack import Stack, StackConfig, free_ports

    env = os.environ
    kafka = opts.kafka or env.get("FLOATBRIDGE_KAFKA_BOOTSTRAP") or env.get("FLOATBRIDGE_TEST_KAFKA") or "127.0.0.1:19092"
    base_db = base_url_of(opts.database_url or env.get("FLOATBRIDGE_DATABASE_URL")
                          or env.get("FLOATBRIDGE_TEST_DATABASE_URL") or DEFAULT_DB)
    soak = plan_run(base_db)
    workdir = opts.workdir / soak.run_id
    create_schema(base_db, soak.schema)
    ports = free_ports(2 + 2 * opts.workers)  # ingest, disbursement, then each worker's metrics and web port
    cfg = StackConfig(kafka=kafka, database_url=soak.database_url, workdir=workdir, ingest_api_key=INGEST_KEY,
                      admin_api_key="soak-admin-key-0123456789", buyer_hash_key="soak-buyer-hash-key",
                      topic_prefix=soak.topic_prefix, ingest_port=ports[0], disbursement_port=ports[1],
                      metrics_ports=ports[2:2 + opts.workers], web_ports=ports[2 + opts.workers:],
                      underwriter_workers=opts.workers,
                      extra_env={"FLOATBRIDGE_INGEST_DATABASE_SCHEMA": soak.schema})
    result = SoakResult(run_id=soak.run_id)
    print(f"soak {soak.run_id}: topics {soak.topic_prefix}*, schema {soak.schema}, logs {workdir}/logs", flush=True)
    stack = Stack(cfg)
    stack.prepare()
    market = Marketplace(f"http://127.0.0.1:{cfg.ingest_port}", INGEST_KEY, attempts=20)
    groups = [soak.topic_prefix + "disbursement"] + ([soak.topic_prefix + cfg.app_id] if opts.workers else [])
    metric_ports = [cfg.metrics_port_base + i for i in range(opts.workers)]
    stop = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        while not stop.wait(opts.sample_seconds):
            try:
                lag = consumer_lag(kafka, groups)
            except Exception:  # a sample is best effort; a missing one shows as -1 and is left out
                lag = -1
            result.samples.append({
                "t": round(time.monotonic() - t0, 1), "lag": lag, "sent": result.sent,
                "merchants_by_worker": (by_worker := merchants_in_state(metric_ports)),
                "merchants": sum(by_worker) if by_worker and min(by_worker) >= 0 else -1,
                "rss_mib": {n: round(rss_mib(p.proc.pid), 1) for n, p in stack.procs.items() if p.proc}})

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        stack.start(wait=120)
        t0 = time.monotonic()
        sampler.start()
        market.send(onboarding(soak, opts.merchants, datetime.now(UTC).replace(microsecond=0)))
        i, end = 0, t0 + opts.minutes * 60
        per_tick = max(1, opts.rate // 10)  # ten batches a second
        while time.monotonic() < end:
            tick = time.monotonic()
            now = datetime.now(UTC)
            events = [order_event(soak, i + j, opts.merchants, now) for j in range(per_tick)]
            i += per_tick
            try:
                market.send(events)
            except AssertionError:
                result.errors += 1
            result.sent += len(events)
            time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
        result.duration_s = time.monotonic() - t0
        last_event = time.monotonic()
        while time.monotonic() - last_event < opts.drain_seconds:  # bounded: consumers catch up, or not
            try:
                result.lag_final = consumer_lag(kafka, groups)
            except Exception:
                result.lag_final = -1
            if result.lag_final == 0:
                result.drained_after_s = round(time.monotonic() - last_event, 1)
                break
            if not all(p.alive() for p in stack.procs.values()):
                break  # a dead consumer will not catch up
            time.sleep(2.0)
    finally:
        stop.set()
        if sampler.is_alive():
            sampler.join(30)
        result.exited = {n: (p.proc.returncode if p.proc else None) for n, p in stack.procs.items()
                         if p.proc is not None and not p.alive()}
        statuses = list(market.statuses.values())
        result.accepted = statuses.count("accepted") + statuses.count("duplicate")
        result.duplicates, result.rejected = statuses.count("duplicate"), statuses.count("rejected")
        result.http_errors = dict(market.errors_seen)
        try:
            done = Snapshot()
            read_database(soak.database_url, done)
            result.client_accepted_missing = len(market.accepted_ids() - done.accepted_ids)
            report = audit(kafka, soak.database_url, soak.topic_prefix, settle_seconds=60)
            result.audit_ok, result.audit_text = report.ok, report.to_text()
        finally:
            stack.stop()
    if result.ok and not opts.keep:
        drop_schema(base_db, soak.schema)
        result.cleanup = f"dropped schema {soak.schema} and {delete_topics(kafka, soak.topic_prefix)} topics"
    else:
        result.cleanup = f"kept schema {soak.schema} and topics {soak.topic_prefix}* for inspection"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "soak-report.json").write_text(json.dumps({
        **result.summary(), "audit": result.audit_text, "samples": result.samples}, indent=2))
    return result
