"""`floatbridge demo`, `floatbridge replay`: the whole engine in one process (no servers)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEFAULT_OLIST = Path("../shared/data/olist")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole engine in one process on a simulated marketplace (no servers)",
        description="Simulator -> ingest -> underwriter (champion LightGBM) -> disbursement (SQLite) with signed "
        "webhooks to simulated merchants who accept through the real acceptance API -> collections -> aging. "
        "Prints a summary and writes an HTML report.",
    )
    # Sized to finish well under two minutes on two cores: about 72,000 events, ~43 s of wall time at
    # ~1,800 events/s measured on a busy 2-core machine (500 x 180 is about 9x the events).
    p.add_argument("--merchants", type=int, default=80, help="number of simulated merchants (default 80)")
    p.add_argument("--days", type=int, default=120, help="simulated days (default 120)")
    p.add_argument("--seed", type=int, default=7, help="simulation seed (default 7)")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    p.add_argument("--accept", choices=("one", "all", "none"), default="one",
                   help="simulated merchants take an offer while none of their advances is open (one, default), "
                   "every offer (all), or none")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--metrics-port", type=int, default=0,
                   help="serve every service's Prometheus metrics on this port while running (0 = off)")
    p.add_argument("--hold", type=float, default=0.0,
                   help="with --metrics-port: keep serving metrics this many seconds after the run (for scrapes)")
    p.set_defaults(func=_demo)

    r = sub.add_parser(
        "replay",
        help="run a file of canonical CloudEvents (or the real Olist data) through the embedded engine",
        description="EVENTS is an NDJSON file (optionally .gz) of CloudEvents, or the word 'olist' to convert and "
        "replay the Olist marketplace data. Writes every emitted event to OUT/emitted.ndjson, invalid lines with "
        "their line numbers and errors to OUT/rejected_lines.ndjson, a summary and an HTML report.",
    )
    r.add_argument("events", help="path to NDJSON(.gz) of CloudEvents, or 'olist'")
    r.add_argument("--out", type=Path, default=Path("out/replay"), help="output folder (default out/replay)")
    r.add_argument("--accept", choices=("all", "one", "none"), default="all",
                   help="merchants accept every offer (all), one while none of their advances is open, or none")
    r.add_argument("--data", type=Path, default=DEFAULT_OLIST, help="Olist data folder (for 'olist')")
    r.add_argument("--limit-orders", type=int, default=None, help="Olist: only the first N orders (a slice)")
    r.add_argument("--as-of", type=_rfc3339, default=None, metavar="RFC3339",
                   help="the time events are received at for the future-date check: an event dated more than "
                   "ingest's skew (FLOATBRIDGE_INGEST_MAX_FUTURE_SKEW_SECONDS) after it is rejected and does not "
                   "move the replay clock (default: the wall clock now, as ingest does)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=_replay)


def _rfc3339(text: str) -> Any:
    from services.common.timeutil import parse_rfc3339

    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time with an offset: {exc}") from None


def _serve_metrics(port: int) -> Any:
    if not port:
        return None
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    start_http_server(port, addr="127.0.0.1", registry=registry)
    return registry


def _demo(args: argparse.Namespace) -> int:
    from floatbridge.embedded.runner import demo, print_summary, write_outputs

    result = demo(args.merchants, args.days, args.seed, args.out, progress=not args.no_progress,
                  metrics_registry=_serve_metrics(args.metrics_port), accept=args.accept)
    print_summary(result)
    print(f"report: {write_outputs(result, args.out)}")
    if args.metrics_port and args.hold > 0:
        import time

        time.sleep(args.hold)
    return 0


def _replay(args: argparse.Namespace) -> int:
    from floatbridge.embedded.runner import print_summary, replay_file, replay_olist, write_outputs

    if args.events == "olist":
        if not (args.data / "olist_orders_dataset.csv.gz").exists():
            print(f"floatbridge: Olist data not found in {args.data}", file=sys.stderr)
            return 2
        result = replay_olist(args.data, args.out, args.accept, args.limit_orders, progress=not args.no_progress,
                              as_of=args.as_of)
    else:
        path = Path(args.events)
        if not path.exists():
            print(f"floatbridge: no such file {path}", file=sys.stderr)
            return 2
        result = replay_file(path, args.out, args.accept, progress=not args.no_progress, as_of=args.as_of)
    print_summary(result)
    for line, eid, errors in result.engine.line_errors[:20]:
        first = "; ".join(f"{e['pointer'] or '/'}: {e['message']}" for e in errors[:3])
        print(f"line {line} ({eid or 'no id'}) rejected: {first}", file=sys.stderr)
    if len(result.engine.line_errors) > 20:
        print(f"... {len(result.engine.line_errors) - 20} more in {args.out / 'rejected_lines.ndjson'}", file=sys.stderr)
    print(f"report: {write_outputs(result, args.out)}")
    return 0
