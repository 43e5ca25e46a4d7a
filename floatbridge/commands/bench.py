"""`floatbridge bench`: every benchmark on the local stack, medians against their limits."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench", help="run the benchmark suite and write BENCHMARKS.md + benchmarks/results.json",
        description="Run every benchmark (a warm-up, then --repeat repetitions; the median is reported) on the "
        "local stack (Kafka and PostgreSQL from FLOATBRIDGE_TEST_* or the deploy/local defaults). A benchmark whose "
        "component is unavailable is reported as 'not run: <reason>'.")
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds, not minutes): checks the suite works")
    p.add_argument("--only", default="", metavar="NAME,...", help="comma-separated benchmark names to run; the other benchmarks' entries of an existing "
                   "results.json (same --quick mode) are kept")
    p.add_argument("--repeat", type=int, default=3, metavar="N", help="repetitions per benchmark (default 3)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for BENCHMARKS.md and benchmarks/results.json (default: the repository root)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import sys

    from floatbridge.bench import core, infra, suite

    if args.list:
        for b in suite.BENCHMARKS:
            print(f"{b.name:18} {b.title}")
        return 0
    if args.repeat < 1:
        print("floatbridge bench: --repeat must be at least 1", file=sys.stderr)
        return 2
    try:
        benches = suite.select([n.strip() for n in args.only.split(",") if n.strip()])
    except ValueError as exc:
        print(f"floatbridge bench: {exc}", file=sys.stderr)
        return 2
    sizes = core.Sizes(quick=args.quick)
    outcomes = core.run_suite(benches, sizes, args.repeat)
    doc = core.to_json(outcomes, sizes, args.repeat)
    command = "floatbridge bench" + (" --quick" if args.quick else "") + \
        (f" --only {args.only}" if args.only else "") + (f" --repeat {args.repeat}" if args.repeat != 3 else "")
    out = Path(args.out) if args.out else infra.ROOT
    if args.only:
        doc = core.merge_previous(doc, out / "benchmarks" / "results.json")
    notes = infra.ROOT / "benchmarks" / "NOTES.md"
    md, js = core.write(doc, out, command, notes.read_text(encoding="utf-8") if notes.exists() else "")
    print(core.to_markdown(doc, command))
    print(f"wrote {md} and {js}")
    return 0
