"""`floatbridge up`: ingest, two underwriter workers and disbursement as separate processes."""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "up",
        help="start ingest, two underwriter workers and disbursement against local Kafka and PostgreSQL",
        description="Starts every service as its own process (logs in WORKDIR/logs), creates the topics and "
        "migrates the database first. Broker and database from FLOATBRIDGE_KAFKA_BOOTSTRAP and "
        "FLOATBRIDGE_DATABASE_URL (start them with `bash deploy/local/infra.sh up`). Ctrl-C stops everything. "
        "Ports: ingest 8080, disbursement 8082, underwriter metrics 9101/9102.",
    )
    p.add_argument("--workdir", type=Path, default=Path(".local/up"), help="logs and worker data (default .local/up)")
    p.add_argument("--workers", type=int, default=2, help="underwriter workers (default 2)")
    p.add_argument("--partitions", type=int, default=4, help="partitions when creating topics (default 4)")
    p.set_defaults(func=_up)


def _up(args: argparse.Namespace) -> int:
    from floatbridge.stack import Stack, from_env

    cfg = from_env(args.workdir)
    cfg.underwriter_workers = args.workers
    cfg.topic_partitions = args.partitions
    stack = Stack(cfg)
    stack.prepare()
    stack.start()
    for p in stack.procs.values():
        print(f"{p.name:<16} pid {p.proc.pid if p.proc else '-':<8} log {p.log_path}")
    print("all services healthy; Ctrl-C stops them")
    stopping = False

    def _stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stopping:
            dead = [p.name for p in stack.procs.values() if not p.alive()]
            if dead:
                print("exited: " + ", ".join(dead))
                break
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
    return 0
