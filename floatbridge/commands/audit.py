"""`floatbridge audit` (consistency checker) and `floatbridge soak` (bounded load run)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "audit", help="reconcile ingest, topics, decisions, loans, payouts, collections and the ledger",
        description="Reads the topics and the database and reports every discrepancy: accepted events lost, "
        "offers duplicated or overlapping, loans without an accepted offer, payouts missing or doubled, "
        "unbalanced journal entries, outstanding or collections disagreeing with the ledger. Exit 1 when any.")
    p.add_argument("--kafka", help="bootstrap servers HOST:PORT (omit to skip the topic checks)")
    p.add_argument("--database-url", help="SQLAlchemy URL of the ingest/disbursement database")
    p.add_argument("--topic-prefix", default="", help="prefix of the run's topics (tests isolate runs with one)")
    p.add_argument("--settle", type=float, default=0.0,
                   help="re-check for up to this many seconds until clean (lets outbox/recovery loops catch up)")
    p.add_argument("--json", dest="json_out", help="also write the JSON report to this file ('-' for stdout)")
    p.set_defaults(func=_audit)

    s = sub.add_parser(
        "soak", help="bounded load run at a fixed rate through HTTP ingest into the full stack",
        description="Starts the distributed stack, sends events at --rate per second for --minutes, samples "
        "every process's RSS, the consumer lag and the underwriter's merchants in state every --sample seconds, "
        "and reports memory slope (whole run and second half), max/p95 lag and the audit. Each run is isolated: "
        "a run id prefixes its event ids and topics, and its tables live in a fresh schema soak_<run id>, "
        "dropped with the topics after a clean run (kept after a failed one, or with --keep).")
    s.add_argument("--minutes", type=float, default=10.0)
    s.add_argument("--rate", type=int, default=500, help="events per second")
    s.add_argument("--sample", type=float, default=10.0, help="sampling interval in seconds")
    s.add_argument("--kafka", default=None, help="bootstrap servers (default FLOATBRIDGE_KAFKA_BOOTSTRAP or 127.0.0.1:19092)")
    s.add_argument("--database-url", default=None, help="database URL (default FLOATBRIDGE_DATABASE_URL or local)")
    s.add_argument("--workdir", default=".local/soak", help="logs and the report go here")
    s.add_argument("--workers", type=int, default=2, help="underwriter workers")
    s.add_argument("--merchants", type=int, default=50, help="merchants the orders cycle over (bounded state)")
    s.add_argument("--keep", action="store_true", help="keep the run's schema and topics after a clean run")
    s.add_argument("--drain", type=float, default=180.0,
                   help="seconds to wait after the last event for the consumer lag to reach 0")
    s.set_defaults(func=_soak)


def _audit(args: argparse.Namespace) -> int:
    from floatbridge.audit.sources import audit

    if not args.kafka and not args.database_url:
        print("floatbridge audit: give --kafka and/or --database-url", file=sys.stderr)
        return 2
    report = audit(args.kafka, args.database_url, args.topic_prefix, settle_seconds=args.settle)
    print(report.to_text())
    if args.json_out == "-":
        print(report.to_json())
    elif args.json_out:
        Path(args.json_out).write_text(report.to_json())
    return 0 if report.ok else 1


def _soak(args: argparse.Namespace) -> int:
    from floatbridge.soak import SoakOptions, run

    result = run(SoakOptions(minutes=args.minutes, rate=args.rate, sample_seconds=args.sample, kafka=args.kafka,
                             database_url=args.database_url, workdir=Path(args.workdir), workers=args.workers,
                             merchants=args.merchants, keep=args.keep,
                             drain_seconds=args.drain))
    print(result.to_text())
    return 0 if result.ok else 1
