"""`floatbridge underwriter ...` subcommands."""

from __future__ import annotations

import argparse
import os
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("underwriter", help="credit limits and offers from marketplace events (Faust)",
                              description="The underwriter: merchant state, features, LightGBM scoring, credit policy.")
    sub = p.add_subparsers(dest="underwriter_command", metavar="SUBCOMMAND")
    w = sub.add_parser("worker", help="run a Faust worker (settings from FLOATBRIDGE_UNDERWRITER_*)",
                       description="Consume marketplace.events.v1 and loans.v1, emit credit.limits.v1 and loan.offers.v1.")
    w.add_argument("--loglevel", default=os.environ.get("FLOATBRIDGE_UNDERWRITER_LOGLEVEL", "warning"),
                   help="Faust log level (default FLOATBRIDGE_UNDERWRITER_LOGLEVEL or warning)")
    w.set_defaults(func=_worker)
    b = sub.add_parser("bench", help="measure throughput, latency and memory per merchant")
    b.add_argument("--events", type=int, default=60_000, help="events for the throughput run")
    b.add_argument("--merchants", type=int, default=100_000, help="merchants for the memory run")
    b.add_argument("--kafka", action="store_true", help="also run the Faust worker against the broker")
    b.set_defaults(func=_bench)
    t = sub.add_parser("train-bootstrap", help="train the synthetic bootstrap champion into a registry folder")
    t.add_argument("--out", default=None, help="registry folder (default settings' model registry)")
    t.add_argument("--version", default="bootstrap-1")
    t.add_argument("--promote", action="store_true", help="make it the champion")
    t.set_defaults(func=_train)
    pr = sub.add_parser("promote", help="make a registry version the champion")
    pr.add_argument("version")
    pr.add_argument("--registry", default=None, help="registry folder (default settings' model registry)")
    pr.set_defaults(func=_promote)


def _worker(args: argparse.Namespace) -> int:
    from services.underwriter.adapters.faust_app import run_worker
    from services.underwriter.settings import load

    return run_worker(load(), loglevel=args.loglevel)


def _bench(args: argparse.Namespace) -> int:
    from services.underwriter import bench

    return bench.main(["--events", str(args.events), "--merchants", str(args.merchants)] + (["--kafka"] if args.kafka else []))


def _train(args: argparse.Namespace) -> int:
    from services.underwriter import train_bootstrap
    from services.underwriter.settings import load

    out = args.out or load().model_registry
    return train_bootstrap.main(["--out", out, "--version", args.version] + (["--promote"] if args.promote else []))


def _promote(args: argparse.Namespace) -> int:
    from services.underwriter.adapters.registry import promote
    from services.underwriter.settings import load

    promote(args.registry or load().model_registry, args.version)
    print(f"champion is now {args.version}")
    return 0
