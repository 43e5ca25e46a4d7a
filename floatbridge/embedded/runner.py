"""Drive the embedded engine: demo (simulator), replay (any NDJSON file), Olist replay; summary + report."""

from __future__ import annotations

import contextlib
import gc
import gzip
import json
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from floatbridge.embedded.engine import EmbeddedEngine, EngineOptions, numbered

MANIPULATION_CODES = frozenset({"GMV_SPIKE", "BUYER_CONCENTRATION", "REFUND_SURGE", "CANCEL_SURGE", "CHARGEBACKS"})
BATCH = 500
# Cyclic-GC thresholds while a run goes: the youngest generation waits for 100,000 new container objects (not
# 700), the older ones for 50 and 100 collections of the one below (not 10 and 10).
RUN_GC_THRESHOLDS = (100_000, 50, 100)


@dataclass
class RunResult:
    engine: EmbeddedEngine
    seconds: float
    events: int
    truth: dict[str, Any] | None = None
    title: str = "Floatbridge"
    notes: list[str] = field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def _progress(total: int | None, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="ev", unit_scale=True, disable=not enabled, file=sys.stderr,
                mininterval=0.5)


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """Keep the cyclic garbage collector off the heap the run starts with and out of the run's way, then put
    it back as it was.

    gc.freeze() moves everything alive when the run starts (modules, the LightGBM model, the database and
    metric objects, a replay's whole list of events) to a generation the collector never walks; the raised
    thresholds stop it from walking the growing merchant states and tallies again and again. The collector's
    own CPU time: Olist slice (15,000 orders) ~2.2 s with the defaults, ~0.45 s so; demo 200 x 90 ~1.8 s,
    ~0.35 s. Cycles are still collected, only less often; what the run computes does not depend on when."""
    thresholds = gc.get_threshold()
    freeze = gc.get_freeze_count() == 0  # someone else froze the heap already: theirs to undo, not ours
    if freeze:
        gc.collect()
        gc.freeze()
    gc.set_threshold(*RUN_GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if freeze:
            gc.unfreeze()


def run_events(engine: EmbeddedEngine, items: Iterable[tuple[int, Any]], total: int | None = None,
               desc: str = "events", progress: bool = True) -> float:
    started = time.perf_counter()  # the collection and freeze below are part of the run's time
    with quiet_gc():
        _run_events(engine, items, total, desc, progress)
    return time.perf_counter() - started


def _run_events(engine: EmbeddedEngine, items: Iterable[tuple[int, Any]], total: int | None, desc: str,
                progress: bool) -> None:
    bar = _progress(total, desc, progress)
    batch: list[tuple[int, Any]] = []
    for item in items:
        batch.append(item)
        if len(batch) >= BATCH:
            engine.feed(batch)
            bar.update(len(batch))
            batch = []
    engine.feed(batch)
    bar.update(len(batch))
    engine.finish()
    bar.close()


def open_events(path: Path) -> Iterator[bytes]:
    """The file's lines as bytes (gzip when it ends in .gz), split at line feeds only: `numbered` decodes each one as
    ingest decodes a record, so a line that is not valid UTF-8 is reported by its number and skipped rather than
    read with replacement characters (which ingest never sees in a record it accepts)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        yield from fh


def demo(merchants: int, days: int, seed: int, out: Path, progress: bool = True,
         metrics_registry: Any = None, accept: str = "one") -> RunResult:
    from floatbridge.simulator.config import SimConfig
    from floatbridge.simulator.engine import Simulation

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "emitted.ndjson", "w", encoding="utf-8") as emitted:
        engine = EmbeddedEngine(EngineOptions(db_path=out / "disbursement.sqlite", emitted=emitted, accept=accept,
                                              metrics_registry=metrics_registry))
        # withheld is filled by the engine's settlement system from collections.v1 (financed orders first)
        sim = Simulation(SimConfig(merchants=merchants, days=days, seed=seed))
        items = ((n, ev) for n, ev in enumerate(sim.events(), 1))
        seconds = run_events(engine, items, desc="demo", progress=progress)
    return RunResult(engine, seconds, engine.events_in, truth=sim.truth(),
                     title=f"Floatbridge demo: {merchants} merchants x {days} days, seed {seed}")


def replay_file(path: Path, out: Path, accept: str = "all", progress: bool = True,
                as_of: datetime | None = None) -> RunResult:
    """Replay a file of CloudEvents. Events dated after `as_of` (default: the wall clock now, as ingest
    checks) plus ingest's future skew are rejected as future-dated and do not move the replay clock."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "emitted.ndjson", "w", encoding="utf-8") as emitted:
        engine = EmbeddedEngine(EngineOptions(db_path=out / "disbursement.sqlite", accept=accept, emitted=emitted,
                                              as_of=as_of or datetime.now(UTC)))
        seconds = run_events(engine, numbered(open_events(path)), desc=path.name, progress=progress)
    return RunResult(engine, seconds, engine.events_in, title=f"Floatbridge replay of {path.name}")


def replay_olist(data: Path, out: Path, accept: str = "all", limit_orders: int | None = None,
                 progress: bool = True, as_of: datetime | None = None) -> RunResult:
    from floatbridge.embedded.olist import CREDIT, OlistOptions, olist_events

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    events = olist_events(data, OlistOptions(limit_orders=limit_orders))
    convert = time.perf_counter() - t0
    with open(out / "emitted.ndjson", "w", encoding="utf-8") as emitted:
        engine = EmbeddedEngine(EngineOptions(db_path=out / "disbursement.sqlite", accept=accept, emitted=emitted,
                                              as_of=as_of or datetime.now(UTC)))
        seconds = run_events(engine, enumerate(events, 1), total=len(events), desc="olist", progress=progress)
    result = RunResult(engine, seconds + convert, engine.events_in, title="Floatbridge replay of real Olist data")
    result.notes.append(f"Data: {CREDIT}. Conversion to events took {convert:.1f} s.")
    return result


def _money(minor: int, currency: str) -> str:
    """Minor units shown in major units with the currency's own exponent (JPY 0, BRL 2, KWD 3), exactly."""
    from services.common.money import CURRENCY_EXPONENTS

    exp = CURRENCY_EXPONENTS.get(currency, 2)
    if exp == 0:
        return f"{minor:,} {currency}"
    sign, whole, frac = "-" if minor < 0 else "", *divmod(abs(minor), 10 ** exp)
    return f"{sign}{whole:,}.{frac:0{exp}d} {currency}"


def summary(result: RunResult) -> list[tuple[str, str]]:
    e, t = result.engine, result.engine.tally
    cur = t.currency or "BRL"
    currencies = sorted(t.money) or [cur]

    def total(key: str) -> str:  # one figure per currency: amounts in different currencies are not added
        return "; ".join(_money(t.money[c][key] if c in t.money else 0, c) for c in currencies)

    def ratio(key: str, digits: str = ".2%") -> str:
        parts = [(c, t.money[c][key] / t.money[c]["disbursed"]) for c in currencies
                 if c in t.money and t.money[c]["disbursed"]]
        if not parts:
            return f"{0:{digits}}" if key == "charged_off_principal" else "n/a"
        return "; ".join(f"{v:{digits}}" + (f" {c}" if len(currencies) > 1 else "") for c, v in parts)

    rows = [
        ("events in", f"{result.events:,}"),
        ("events rejected by ingest", f"{t.rejected:,}"),
        ("throughput", f"{result.events_per_second:,.0f} events/s over {result.seconds:.1f} s"),
        ("merchants", f"{len(t.merchants):,}"),
        ("merchants with a limit > 0", f"{sum(1 for v in t.limits.values() if v > 0):,}"
         + (f" (limits in {cur})" if len(currencies) > 1 else "")),
        ("offers", f"{t.offers:,} to {len(t.offered_merchants):,} merchants"),
        ("acceptances (loans disbursed)", f"{t.accepted:,}"),
        ("acceptances refused", ", ".join(f"{k}: {v}" for k, v in sorted(t.refused_accepts.items())) or "0"),
        ("disbursed principal", total("disbursed")),
        ("fees charged", total("fees")),
        ("repaid loans", f"{t.repaid:,}"),
        ("repayments collected", total("repaid_amount")),
        ("outstanding", "; ".join(_money(t.outstanding(c), c) for c in currencies)),
        ("loans ever delinquent", f"{len(t.delinquent):,}"),
        ("charged off", f"{t.charged_off:,} loans, {total('charged_off_principal')} principal"),
        ("loss rate (charged-off principal / disbursed)", ratio("charged_off_principal")),
        ("fee yield (fees / disbursed)", ratio("fees")),
        ("webhooks verified by merchants", f"{e.fleet.verified:,} (refused {e.fleet.refused})"),
        ("ledger balanced", "yes" if e.ledger_balanced() else "NO"),
    ]
    if result.truth:
        for arche in ("brushing", "bust_out"):
            ids = [m for m, v in _truth_merchants(result.truth).items() if v.get("archetype") == arche]
            if not ids:
                continue
            flagged = sum(1 for m in ids if t.reasons_by_merchant.get(m, set()) & MANIPULATION_CODES)
            lost = {t.loans[k]["merchant"] for k in t.loans if t.loans[k]["state"] == "charged_off"}
            no_loss = sum(1 for m in ids if m not in lost)
            rows.append((f"{arche} merchants caught", f"{flagged}/{len(ids)} flagged by a guard; "
                         f"{no_loss}/{len(ids)} cost nothing"))
    return rows


def _truth_merchants(truth: dict[str, Any]) -> dict[str, dict[str, Any]]:
    merchants = truth.get("merchants", truth)
    if isinstance(merchants, list):
        return {m["merchant_id"]: m for m in merchants}
    return dict(merchants)


def print_summary(result: RunResult) -> None:
    rows = summary(result)
    width = max(len(k) for k, _ in rows)
    print(f"\n{result.title}\n" + "-" * (width + 40))
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for note in result.notes:
        print(note)


def write_outputs(result: RunResult, out: Path) -> Path:
    from floatbridge.embedded.report import render

    rows = summary(result)
    (out / "summary.json").write_text(json.dumps(dict(rows), indent=2), encoding="utf-8")
    errors = result.engine.line_errors
    if errors:
        with open(out / "rejected_lines.ndjson", "w", encoding="utf-8") as fh:
            for line, eid, errs in errors:
                fh.write(json.dumps({"line": line, "id": eid, "errors": errs}) + "\n")
    path = out / "report.html"
    path.write_text(render(result, rows), encoding="utf-8")
    return path
