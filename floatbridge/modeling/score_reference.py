"""The PD reference distribution the underwriter's PSI gauge compares served scores against.

`score_reference(pds, population)` builds metadata's `score_reference` block (10 quantile bins of
calibrated PDs, binned exactly as serving bins them). train.py stores it for new versions; for
versions trained before it existed, run

    python -m floatbridge.modeling.score_reference --events sim.ndjson.gz models/registry/<version> ...

which scores the training-window snapshots of an event file (e.g. `floatbridge simulate --merchants
300 --days 180`) through the real feature code and writes the block into each version's metadata.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from services.underwriter.domain.psi import reference_from_scores

BINS = 10


def score_reference(pds: Iterable[float], population: str, bins: int = BINS) -> dict[str, Any]:
    ref = reference_from_scores(pds, bins)
    return {"edges": list(ref.edges), "shares": list(ref.shares), "bins": "quantiles of calibrated PD",
            "population": population}


def _events(path: str) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def backfill(version_dirs: list[str], events_path: str, population: str) -> None:
    from floatbridge.modeling.dataset import build_dataset, time_split
    from services.underwriter.adapters.lightgbm_scorer import LightGBMScorer
    from services.underwriter.adapters.registry import load_version

    dataset = build_dataset(_events(events_path))
    rows = time_split(dataset.labelled())["train"]
    for folder in version_dirs:
        path = Path(folder)
        scorer = LightGBMScorer(load_version(path.parent, path.name))
        pds = [scorer.pd_only(list(s.features)) for s in rows]
        meta_file = path / "metadata.json"
        raw = meta_file.read_text("utf-8")
        meta = json.loads(raw)
        meta["score_reference"] = score_reference(pds, f"{population}; {len(pds)} training-window snapshots")
        meta_file.write_text(_dump_like(meta, raw), "utf-8")
        print(f"{path.name}: {len(pds)} scores -> {len(meta['score_reference']['shares'])} bins")


def _dump_like(meta: dict[str, Any], original: str) -> str:
    """Re-serialise in the file's own layout so the diff is the added block only."""
    old = json.loads(original)
    for indent in (2, 1, 4):
        for sort in (True, False):
            if json.dumps(old, indent=indent, sort_keys=sort).strip() == original.strip():
                return json.dumps(meta, indent=indent, sort_keys=sort, allow_nan=True) + "\n"
    return json.dumps(meta, indent=2, sort_keys=True, allow_nan=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Add a score_reference (PSI baseline) to registry versions")
    ap.add_argument("versions", nargs="+", help="registry version folders")
    ap.add_argument("--events", required=True, help="event file (gzip NDJSON) whose training window is scored")
    ap.add_argument("--population", required=True, help="description of the event file, stored in metadata")
    args = ap.parse_args(argv)
    backfill(args.versions, args.events, args.population)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
