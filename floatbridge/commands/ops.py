"""Operations commands: `floatbridge report` (dashboards to HTML without Grafana) and
`floatbridge lag-exporter` (Kafka consumer lag for Prometheus)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    register_report(sub)
    register_lag_exporter(sub)


def register_report(sub: Any) -> None:
    from floatbridge.observability.queries import DASHBOARDS_DIR

    p = sub.add_parser(
        "report",
        help="render the Grafana dashboards' panels to HTML with SVG charts, from a Prometheus server",
        description="Runs every panel query of the committed Grafana dashboards as a Prometheus range query "
        "and writes one self-contained HTML page per dashboard (plus index.html) into --out. "
        "For machines without Grafana.",
    )
    p.add_argument("--prometheus", required=True, metavar="URL", help="Prometheus base URL, e.g. http://127.0.0.1:19090")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created)")
    p.add_argument("--range", dest="range_", default="1h", metavar="DURATION",
                   help="time range ending now, e.g. 15m, 1h, 6h, 2d (default 1h)")
    p.add_argument("--dashboards", type=Path, default=DASHBOARDS_DIR, metavar="DIR",
                   help=f"folder of dashboard JSON (default {DASHBOARDS_DIR})")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds per Prometheus request (default 15)")
    p.set_defaults(func=_report)


def register_lag_exporter(sub: Any) -> None:
    p = sub.add_parser(
        "lag-exporter",
        help="export Kafka consumer lag per group/topic/partition as Prometheus metrics",
        description="Polls committed offsets of every consumer group and the log end offsets, and serves "
        "floatbridge_kafka_consumer_lag_messages{group,topic,partition} on /metrics.",
    )
    p.add_argument("--bootstrap-servers", default=None, metavar="HOST:PORT",
                   help="Kafka bootstrap servers (default $FLOATBRIDGE_KAFKA_BOOTSTRAP or 127.0.0.1:19092)")
    p.add_argument("--port", type=int, default=9108, help="HTTP port for /metrics (default 9108)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between offset polls (default 5)")
    p.add_argument("--group", action="append", dest="groups", metavar="GROUP",
                   help="only these consumer groups (repeatable; default all)")
    p.set_defaults(func=_lag_exporter)


def _report(args: argparse.Namespace) -> int:
    from floatbridge.observability.promapi import PrometheusError
    from floatbridge.observability.report import parse_duration, render_report

    try:
        seconds = parse_duration(args.range_)
        pages = render_report(args.prometheus, args.out, seconds, args.dashboards, timeout=args.timeout)
    except (ValueError, FileNotFoundError, PrometheusError) as exc:
        print(f"floatbridge report: {exc}", file=sys.stderr)
        return 2
    for page in pages:
        print(page)
    return 0


def _lag_exporter(args: argparse.Namespace) -> int:
    import logging
    import os

    from floatbridge.observability.lag import KafkaOffsetSource, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO lines are per-poll noise
    if args.interval <= 0:
        print("floatbridge lag-exporter: --interval must be > 0", file=sys.stderr)
        return 2
    servers = args.bootstrap_servers or os.environ.get("FLOATBRIDGE_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    try:
        source = KafkaOffsetSource(servers)
    except Exception as exc:  # kafka-python raises NoBrokersAvailable and friends
        print(f"floatbridge lag-exporter: cannot connect to Kafka at {servers}: {exc}", file=sys.stderr)
        return 2
    print(f"lag exporter: Kafka {servers}, metrics on http://{args.host}:{args.port}/metrics", flush=True)
    serve(source, args.port, host=args.host, interval=args.interval,
          group_filter=set(args.groups) if args.groups else None)
    return 0
