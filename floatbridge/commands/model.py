"""Risk-model lifecycle: `floatbridge train`, `floatbridge backtest`, `floatbridge model promote|shadow`.

See docs/model.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from services.underwriter.settings import DEFAULT_REGISTRY


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    t = sub.add_parser("train", help="train, calibrate and evaluate a LightGBM PD model from an event history",
                       description="Replay events through the underwriter's state and features, label weekly "
                       "decision points from the future (30+ days past due), split by time, train LightGBM with "
                       "monotone constraints, calibrate (isotonic) and write a registry version.")
    t.add_argument("--events", required=True, help="events file (NDJSON, .gz allowed), time-ordered")
    t.add_argument("--out", default=DEFAULT_REGISTRY, help="model registry folder (default models/registry)")
    t.add_argument("--seed", type=int, default=7, help="training seed (same data + seed = same model)")
    t.add_argument("--version", help="version name (default lgbm-<data hash>-s<seed>)")
    t.add_argument("--truth", help="simulator truth file: adds per-archetype test results to the model card")
    t.add_argument("--promote", action="store_true", help="make the new version the champion")
    t.set_defaults(func=run_train)

    b = sub.add_parser("backtest", help="replay a history through the real underwriter and disbursement cores",
                       description="Every offer is accepted through the disbursement accept API; loans, "
                       "repayments, aging and charge-offs run on in-memory SQLite. Reports approval, volume, loss "
                       "and fee yield by archetype, with charts (SVG/HTML).")
    b.add_argument("--events", required=True, help="events file (NDJSON, .gz allowed), time-ordered")
    b.add_argument("--model-version", help="registry version to score with (default: the champion)")
    b.add_argument("--registry", default=DEFAULT_REGISTRY, help="model registry folder")
    b.add_argument("--truth", help="simulator truth file (per-archetype results)")
    b.add_argument("--out", default="backtest-report", help="folder for report.json, report.html and charts")
    b.add_argument("--limit", type=int, help="stop after this many events")
    b.set_defaults(func=run_backtest)

    m = sub.add_parser("model", help="model registry: promote a version, shadow-score a challenger")
    msub = m.add_subparsers(dest="model_command", metavar="ACTION")
    p = msub.add_parser("promote", help="make VERSION the champion the underwriter loads")
    p.add_argument("version")
    p.add_argument("--registry", default=DEFAULT_REGISTRY, help="model registry folder")
    p.set_defaults(func=run_promote)
    s = msub.add_parser("shadow", help="score a challenger beside the champion over an event file")
    s.add_argument("--challenger", required=True, help="registry version to compare with the champion")
    s.add_argument("--events", required=True, help="events file (NDJSON, .gz allowed)")
    s.add_argument("--registry", default=DEFAULT_REGISTRY, help="model registry folder")
    s.set_defaults(func=run_shadow)
    m.set_defaults(func=lambda a: (m.print_help(), 2)[1])


def _read(path: str):  # type: ignore[no-untyped-def]
    from floatbridge.simulator.output import read_ndjson

    if not os.path.isfile(path):
        raise SystemExit(f"floatbridge: no such events file: {path}")
    return read_ndjson(path)


def run_train(args: argparse.Namespace) -> int:
    from floatbridge.modeling.dataset import build_dataset
    from floatbridge.modeling.train import TrainConfig, train, write_version

    started = time.perf_counter()
    ds = build_dataset(_read(args.events))
    print(f"replayed {ds.events:,} events: {len(ds.snapshots):,} snapshots, {len(ds.labelled()):,} labelled "
          f"({time.perf_counter() - started:.0f}s)")
    try:
        result = train(ds, TrainConfig(seed=args.seed, version=args.version))
    except ValueError as exc:
        print(f"floatbridge train: {exc}", file=sys.stderr)
        return 2
    extra = ""
    if args.truth:
        extra = _archetype_card(ds, result, args.truth)
    folder = write_version(args.out, result, extra)
    t = result["metadata"]["metrics"]["test"]
    print(f"wrote {folder}: test AUC {t['auc']:.3f} KS {t['ks']:.3f} Brier {t['brier']:.4f} ECE {t['ece']:.4f}")
    if args.promote:
        from services.underwriter.adapters.registry import promote

        promote(args.out, result["version"])
        print(f"promoted {result['version']} to champion")
    return 0


def _archetype_card(ds, result, truth_path: str) -> str:  # type: ignore[no-untyped-def]
    from floatbridge.modeling.card import archetype_table
    from floatbridge.modeling.dataset import time_split
    from floatbridge.modeling.train import arrays

    with open(truth_path, encoding="utf-8") as fh:
        merchants = json.load(fh)["merchants"]
    test = time_split(ds.labelled())["test"]
    pds = result["pd_of"](arrays(test)[0])
    return archetype_table([(merchants.get(s.merchant_id, {}).get("archetype", "unknown"), int(s.label), float(p))
                            for s, p in zip(test, pds, strict=True)])


def run_backtest(args: argparse.Namespace) -> int:
    from floatbridge.modeling import backtest, report
    from services.underwriter.adapters.registry import RegistryError, champion_version

    try:
        version = args.model_version or champion_version(args.registry)
    except RegistryError as exc:
        print(f"floatbridge backtest: {exc}", file=sys.stderr)
        return 2
    truth = None
    if args.truth:
        with open(args.truth, encoding="utf-8") as fh:
            truth = json.load(fh)
    started = time.perf_counter()
    out = backtest.run(_read(args.events), version, args.registry, limit=args.limit)
    summary = backtest.summarise(out, truth)
    summary["_run"].update(model_version=version, seconds=round(time.perf_counter() - started, 1))
    paths = report.write(summary, args.out)
    a = summary.get("all", {})
    # Both approval measures, named (backtest.summarise): the share of eligible merchant-days with an offer made
    # or open reads low while most merchants already have an advance out; docs/model.md reports the first.
    print(f"backtest {version}: eligible merchant-days with an approved limit {a.get('eligible_approved_rate', 0):.1%} "
          f"(with an offer made or open {a.get('approval_rate', 0):.1%}), volume {a.get('principal', 0) / 100:,.2f}, "
          f"loss {a.get('loss_rate', 0):.2%}, fee yield {a.get('fee_yield', 0):.2%} -> {', '.join(paths)}")
    return 0


def run_promote(args: argparse.Namespace) -> int:
    from services.underwriter.adapters.lightgbm_scorer import LightGBMScorer
    from services.underwriter.adapters.registry import RegistryError, promote

    try:
        LightGBMScorer.version_of(args.registry, args.version)  # refuses mismatched features before promoting
        promote(args.registry, args.version)
    except RegistryError as exc:
        print(f"floatbridge model promote: {exc}", file=sys.stderr)
        return 2
    print(f"champion is now {args.version}")
    return 0


def run_shadow(args: argparse.Namespace) -> int:
    from floatbridge.modeling.shadow import shadow
    from services.underwriter.adapters.registry import RegistryError

    try:
        result = shadow(_read(args.events), args.registry, args.challenger)
    except RegistryError as exc:
        print(f"floatbridge model shadow: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0
