"""Backtest: replay a marketplace history through the real underwriting and disbursement cores.

No second implementation: decisions come from `services.underwriter.bootstrap` (state, features,
the registry model, the policy) and loans, repayments, aging and charge-offs from
`services.disbursement.bootstrap` on an in-memory SQLite database. The harness only plays the
outside world: it accepts every offer through the accept API, and acts as the marketplace's
settlement system, withholding what the latest collection.instruction asks from each payout
(a replayed file says withheld = 0 because no loans existed when it was recorded).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.common.timeutil import parse_rfc3339

DAY = 86_400
DISBURSEMENT_TYPES = frozenset({"merchant.onboarded", "merchant.updated", "settlement.paid", "order.refunded",
                                "order.cancelled"})
LOAN_TYPES = frozenset({"loan_offer.accepted", "loan.disbursed", "loan.repayment_applied", "loan.repaid",
                        "loan.delinquent", "loan.charged_off"})


class _Bus:
    """In-process publisher the disbursement core writes its outbox to."""

    def __init__(self) -> None:
        self.queue: list[dict[str, Any]] = []

    def publish(self, topic: str, key: str, event: dict[str, Any]) -> None:
        self.queue.append(event)


@dataclass
class Outcome:
    merchants_scored: set[str] = field(default_factory=set)
    merchants_eligible: set[str] = field(default_factory=set)
    merchants_offered: set[str] = field(default_factory=set)
    offers: int = 0
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    loans: dict[str, dict[str, Any]] = field(default_factory=dict)  # loan id -> merchant, principal, fee, state
    limits: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))  # merchant -> (ts, limit)
    placed: dict[str, dict[int, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    events: int = 0
    last_ts: int = 0


class Backtest:
    def __init__(self, underwriter: Any, disbursement: Any, bus: _Bus, clock: list[datetime]) -> None:
        self.uw, self.ds, self.bus, self._clock = underwriter, disbursement, bus, clock
        self.instruction: dict[str, tuple[int, int]] = {}  # merchant -> (owed, withhold bps)
        self.out = Outcome()
        self._day = -1

    # The marketplace's settlement system: withhold per the latest instruction, never more than owed.
    def _withhold(self, event: dict[str, Any]) -> dict[str, Any]:
        owed, bps = self.instruction.get(event["subject"], (0, 0))
        if not owed:
            return event
        data = dict(event["data"])
        available = data["gross"]["amount"] - data["fees"]["amount"]
        withheld = max(0, min(owed, available * bps // 10_000))
        cur = data["gross"]["currency"]
        data["withheld"] = {"amount": withheld, "currency": cur}
        data["net"] = {"amount": available - withheld, "currency": cur}
        return {**event, "data": data}

    def _new_day(self, ts: int) -> None:
        day = ts // DAY
        if day == self._day:
            return
        self._day = day
        now = datetime.fromtimestamp(day * DAY, UTC)
        self._clock[0] = now
        self._dispatch(self.uw.flush(now))
        self.ds.age(now)
        self._drain()

    def feed(self, event: dict[str, Any]) -> None:
        ts = int(parse_rfc3339(event["time"]).timestamp())
        self._new_day(ts)
        self._clock[0] = datetime.fromtimestamp(ts, UTC)
        etype = event["type"]
        o = self.out
        o.events += 1
        o.last_ts = ts
        if etype == "order.placed":
            o.placed[event["subject"]][ts // DAY] += event["data"]["amount"]["amount"]
        if etype == "settlement.paid":
            event = self._withhold(event)
        if etype in DISBURSEMENT_TYPES:
            self.ds.handle(event)
        self._dispatch(self.uw.handle(event))
        self._drain()

    def _dispatch(self, emitted: list[dict[str, Any]]) -> None:
        from services.disbursement.service import AcceptOffer

        for e in emitted:
            self.ds.handle(e)
            mid, data = e["subject"], e["data"]
            if e["type"] == "credit_limit.updated":
                self.out.merchants_scored.add(mid)
                if data["eligible_receivables"]["amount"] > 0:
                    self.out.merchants_eligible.add(mid)
                self.out.limits[mid].append((int(parse_rfc3339(e["time"]).timestamp()), data["limit"]["amount"]))
            elif e["type"] == "loan_offer.created":
                self.out.offers += 1
                self.out.merchants_offered.add(mid)
                res = self.ds.accept(AcceptOffer(offer_id=data["offer_id"], merchant_id=mid,
                                                 idempotency_key=f"bt-{data['offer_id']}", now=self._clock[0]))
                if res.ok:
                    self.out.accepted += 1
                else:
                    self.out.refused[res.code or str(res.status_code)] += 1

    def _drain(self) -> None:
        while self.bus.queue:
            batch, self.bus.queue = self.bus.queue, []
            for e in batch:
                etype, mid, data = e["type"], e["subject"], e["data"]
                if etype == "collection.instruction":
                    self.instruction[mid] = (data["owed"]["amount"], data["withhold_rate_bps"])
                elif etype in LOAN_TYPES:
                    self._track(e)
                    self._dispatch(self.uw.handle(e))

    def _track(self, e: dict[str, Any]) -> None:
        data = e["data"]
        loan = self.out.loans.get(data.get("loan_id", ""))
        if e["type"] == "loan.disbursed":
            self.out.loans[data["loan_id"]] = {"merchant": e["subject"], "principal": data["principal"]["amount"],
                                               "fee": data["fee"]["amount"], "state": "open", "charged_off": 0}
        elif loan is not None and e["type"] == "loan.repaid":
            loan["state"] = "repaid"
        elif loan is not None and e["type"] == "loan.charged_off":
            loan["state"] = "charged_off"
            loan["charged_off"] = data["amount"]["amount"]


def build(model_version: str | None, registry: str, scorer: Any = None) -> Backtest:
    """Wire both real cores with in-process adapters (SQLite in memory, sandbox rail, no webhooks)."""
    from prometheus_client import CollectorRegistry

    from services.disbursement.bootstrap import bootstrap as disbursement_bootstrap
    from services.underwriter.bootstrap import bootstrap as underwriter_bootstrap

    if scorer is None and model_version:
        from services.underwriter.adapters.lightgbm_scorer import LightGBMScorer

        scorer = LightGBMScorer.version_of(registry, model_version)
    uw = underwriter_bootstrap(scorer=scorer, registry=registry, metrics_registry=CollectorRegistry())
    clock = [datetime(1970, 1, 1, tzinfo=UTC)]
    bus = _Bus()
    ds = disbursement_bootstrap(db_url="sqlite://", bus=bus, transport=lambda url, headers, body: 200,
                                clock=lambda: clock[0], registry=CollectorRegistry())
    return Backtest(uw, ds, bus, clock)


def run(events: Iterable[dict[str, Any]], model_version: str | None, registry: str, scorer: Any = None,
        limit: int | None = None) -> Outcome:
    bt = build(model_version, registry, scorer)
    for e in itertools.islice(events, limit):
        bt.feed(e)
    return bt.out


def summarise(out: Outcome, truth: dict[str, Any] | None = None) -> dict[str, Any]:
    """Approval, volume, loss and fee yield, overall and by archetype (when the truth is known)."""
    arche = {m: r["archetype"] for m, r in (truth or {}).get("merchants", {}).items()}
    groups: dict[str, dict[str, Any]] = defaultdict(lambda: {"eligible": 0, "offered": 0, "loans": 0, "principal": 0,
                                                            "resolved_principal": 0, "charged_off": 0, "fees": 0,
                                                            "open_loans": 0})

    def add(key: str, fn: Any) -> None:
        fn(groups[key])
        fn(groups["all"])

    for m in out.merchants_eligible:
        add(arche.get(m, "unknown"), lambda g: g.__setitem__("eligible", g["eligible"] + 1))
    for m in out.merchants_offered & out.merchants_eligible:
        add(arche.get(m, "unknown"), lambda g: g.__setitem__("offered", g["offered"] + 1))
    for loan in out.loans.values():
        def upd(g: dict[str, Any], loan: dict[str, Any] = loan) -> None:
            g["loans"] += 1
            g["principal"] += loan["principal"]
            if loan["state"] == "open":
                g["open_loans"] += 1
                return
            g["resolved_principal"] += loan["principal"]
            if loan["state"] == "charged_off":
                g["charged_off"] += min(loan["principal"], loan["charged_off"])
            else:
                g["fees"] += loan["fee"]
        add(arche.get(loan["merchant"], "unknown"), upd)
    report: dict[str, Any] = {}
    for key, g in sorted(groups.items()):
        rp = g["resolved_principal"]
        report[key] = {**g,
                       "approval_rate": g["offered"] / g["eligible"] if g["eligible"] else 0.0,
                       "loss_rate": g["charged_off"] / rp if rp else 0.0,
                       "fee_yield": g["fees"] / rp if rp else 0.0}
    report["_run"] = {"events": out.events, "offers": out.offers, "accepted": out.accepted,
                      "refused": dict(out.refused)}
    report["_brushing"] = brushing_limits(out, truth)
    return report


def brushing_limits(out: Outcome, truth: dict[str, Any] | None) -> dict[str, Any]:
    """For brushing merchants: placed GMV growth vs limit growth, 30 days before the first campaign vs after."""
    if not truth:
        return {}
    start = int(parse_rfc3339(truth["start"]).timestamp()) // DAY
    rows = []
    for m, r in truth["merchants"].items():
        if r["archetype"] != "brushing" or "first_campaign_day" not in r:
            continue
        c = start + r["first_campaign_day"]
        placed = out.placed.get(m, {})
        before = sum(v for d, v in placed.items() if c - 30 <= d < c)
        after = max((sum(placed.get(d, 0) for d in range(s, s + 30)) for s in range(c, out.last_ts // DAY - 29, 7)),
                    default=0)
        lim = out.limits.get(m, [])
        lim_before = max([v for ts, v in lim if ts // DAY < c] or [0])
        lim_after = max([v for ts, v in lim if ts // DAY >= c] or [0])
        if before > 0 and lim_before > 0:
            rows.append((after / before, lim_after / lim_before))
    if not rows:
        return {"merchants": 0}
    rows.sort()
    tripled = [lr for g, lr in rows if g >= 3]
    med = lambda xs: xs[len(xs) // 2] if xs else float("nan")  # noqa: E731
    return {"merchants": len(rows), "median_gmv_growth": med(sorted(g for g, _ in rows)),
            "median_limit_growth": med(sorted(lr for _, lr in rows)),
            "tripled_gmv_merchants": len(tripled), "median_limit_growth_when_tripled": med(sorted(tripled))}
