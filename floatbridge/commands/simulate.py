"""`floatbridge simulate`: generate a marketplace's event history (see docs/simulator.md)."""

from __future__ import annotations

import argparse
import json
import sys
import time

MARKETPLACE_TOPICS = ("marketplace.raw.v1", "marketplace.events.v1")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "simulate",
        help="simulate a marketplace: N merchants over D days as canonical CloudEvents",
        description="Simulate merchants of known archetypes (steady, growing, seasonal, declining, brushing, "
        "bust-out) and write their marketplace events in time order. The ground truth (archetype, latent "
        "health, who would default) goes to a separate --truth file. Same seed, same bytes.",
    )
    p.add_argument("--merchants", type=int, default=100, help="number of merchants (default 100)")
    p.add_argument("--days", type=int, default=180, help="days to simulate (default 180)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.add_argument("--start", default="2024-01-01", help="first day, UTC (default 2024-01-01)")
    p.add_argument("--orders-per-day", type=float, default=1.6, help="mean genuine orders per merchant-day")
    p.add_argument("--out", help="write gzip NDJSON here (e.g. events.ndjson.gz)")
    p.add_argument("--truth", help="write the ground truth JSON here")
    p.add_argument("--to-ingest", metavar="URL", help="POST batches of 500 events to this ingest base URL")
    p.add_argument("--api-key", help="marketplace API key for --to-ingest")
    p.add_argument("--to-kafka", metavar="HOST:PORT", help="produce straight to Kafka")
    p.add_argument("--topic", default="marketplace.raw.v1", choices=MARKETPLACE_TOPICS,
                   help="Kafka topic for --to-kafka (default marketplace.raw.v1: validated by ingest)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from floatbridge.simulator import SimConfig, SimConfigError, Simulation, output

    targets = [t for t in (args.out, args.to_ingest, args.to_kafka) if t]
    if len(targets) != 1:
        print("floatbridge simulate: give exactly one of --out, --to-ingest, --to-kafka", file=sys.stderr)
        return 2
    if args.to_ingest and not args.api_key:
        print("floatbridge simulate: --to-ingest needs --api-key", file=sys.stderr)
        return 2
    cfg = SimConfig(merchants=args.merchants, days=args.days, seed=args.seed, start=args.start,
                    mean_orders_per_day=args.orders_per_day)
    try:
        sim = Simulation(cfg)
    except SimConfigError as exc:
        print(f"floatbridge simulate: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    if args.out:
        n = output.write_ndjson_gz(sim.events(), args.out)
        where = args.out
    elif args.to_ingest:
        n, bad = output.post_to_ingest(sim.events(), args.to_ingest, args.api_key)
        where = f"{args.to_ingest} ({bad} rejected)"
    else:
        n = output.produce_to_kafka(sim.events(), args.to_kafka, args.topic)
        where = f"kafka {args.to_kafka} topic {args.topic}"
    elapsed = time.perf_counter() - started
    if args.truth:
        with open(args.truth, "w", encoding="utf-8") as fh:
            json.dump(sim.truth(), fh, separators=(",", ":"))
    rate = n / elapsed * 60 if elapsed > 0 else 0.0
    print(f"simulated {cfg.merchants} merchants x {cfg.days} days: {n} events "
          f"({sim.stats['orders']} orders) -> {where} in {elapsed:.1f}s ({rate:,.0f} events/min)")
    return 0
