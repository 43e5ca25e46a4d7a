"""The `floatbridge` command. Each area registers its own subcommands lazily,
so `floatbridge --help` never imports Kafka, Faust or LightGBM."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# (module, attribute): each module exposes register(subparsers) adding its subcommands.
REGISTRARS: tuple[str, ...] = (
    "floatbridge.commands.topics",
    "services.ingest.cli",
    "services.underwriter.cli",
    "services.disbursement.cli",
    "floatbridge.commands.simulate",
    "floatbridge.commands.model",
    "floatbridge.commands.run",
    "floatbridge.commands.stack",
    "floatbridge.commands.ops",
    "floatbridge.commands.bench",
    "floatbridge.commands.audit",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="floatbridge",
        description="Floatbridge: streaming credit limits and settlement advances for marketplace merchants. "
        "Configuration is read from FLOATBRIDGE_* environment variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in REGISTRARS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # area not built into this distribution
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from services.common.settings import SettingsError

    try:
        rc = args.func(args)
    except SettingsError as exc:
        print(f"floatbridge: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
