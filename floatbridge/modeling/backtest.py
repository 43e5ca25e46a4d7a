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
from services.underwriter.domain.features import INDEX, compute_features
from services.underwriter.domain.policy import PolicySettings, eligible_receivables
from services.underwriter.domain.state import MerchantState

DAY = 86_400
DISBURSEMENT_TYPES = frozenset({"merchant.onboarded", "merchant.updated", "settlement.paid", "order.refunded",
                                "order.cancelled", "order.chargeback"})
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
    # Decision points: merchant-days with eligible (unfinanced) receivables and the policy's minimum history.
    # merchant -> [eligible days, of which an offer was made or open, of which an advance was outstanding,
    # of which an offer was made or open while no advance was outstanding, of which the merchant held an approved
    # limit (>= the smallest offer, not frozen by a delinquency)]
    points: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0, 0, 0]))
    # merchant -> day -> (limit in effect at the end of the day, frozen by a delinquency)
    daily: dict[str, dict[int, tuple[int, bool]]] = field(default_factory=lambda: defaultdict(dict))
    history_from: dict[str, int] = field(default_factory=dict)  # merchant -> first day with the minimum history
    offer_days: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    open_offers: dict[str, str] = field(default_factory=dict)  # merchant -> offer id not yet accepted/withdrawn
    loans: dict[str, dict[str, Any]] = field(default_factory=dict)  # loan id -> merchant, principal, fee, state
    limits: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: defaultdict(list))  # merchant -> (ts, limit)
    placed: dict[str, dict[int, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    events: int = 0
    last_ts: int = 0


class Backtest:
    def __init__(self, underwriter: Any, disbursement: Any, bus: _Bus, clock: list[datetime]) -> None:
        self.uw, self.ds, self.bus, self._clock = underwriter, disbursement, bus, clock
        # merchant -> (owed, withhold bps, financed order ids) from the latest collection.instruction
        self.instruction: dict[str, tuple[int, int, frozenset[str]]] = {}
        self.out = Outcome()
        self._day = -1
        self._to_accept: dict[str, str] = {}  # merchant -> latest offer id, accepted once the cores are idle

    # The marketplace's settlement system, per the latest collection.instruction (collections.v1): the payouts of
    # the financed orders (`financed_order_ids`) go to the loans first, in full; the rest of the payout at the
    # withhold rate; never more than owed.
    def _withhold(self, event: dict[str, Any]) -> dict[str, Any]:
        owed, bps, financed = self.instruction.get(event["subject"], (0, 0, frozenset()))
        if not owed:
            return event
        data = dict(event["data"])
        withheld = withhold_amount(data, owed, bps, financed)
        available = data["gross"]["amount"] - data["fees"]["amount"]
        cur = data["gross"]["currency"]
        data["withheld"] = {"amount": withheld, "currency": cur}
        data["net"] = {"amount": available - withheld, "currency": cur}
        return {**event, "data": data}

    def _new_day(self, ts: int) -> None:
        day = ts // DAY
        if day == self._day:
            return
        now = datetime.fromtimestamp(day * DAY, UTC)
        self._clock[0] = now
        self._dispatch(self.uw.flush(now))
        self._drain()
        if self._day >= 0:
            self._sample(self._day)
        self._day = day
        self.ds.age(now)
        self._drain()

    def _sample(self, day: int) -> None:
        """Count day `day` as a decision point for every merchant eligible at its end (see `is_eligible`)."""
        as_of = (day + 1) * DAY - 1
        p = self.uw.policy
        for mid, raw in self.uw.store.items():
            state = raw if isinstance(raw, MerchantState) else MerchantState.from_bytes(raw)
            limit, frozen = (int(state.last[0]) if state.last else 0), state.delinquent()
            self.out.daily[mid][day] = (limit, frozen)
            history, eligible = eligibility(state, as_of, p)
            if history:
                self.out.history_from.setdefault(mid, day)
            if not eligible:
                continue
            pts = self.out.points[mid]
            offered = day in self.out.offer_days.get(mid, ()) or mid in self.out.open_offers
            outstanding = state.outstanding(as_of) > 0
            pts[0] += 1
            pts[1] += offered
            pts[2] += outstanding
            pts[3] += offered and not outstanding
            pts[4] += limit >= p.min_offer_minor and not frozen

    def finish(self) -> None:
        """Score what is still pending and count the last day."""
        if self._day >= 0:
            self._new_day((self._day + 1) * DAY)

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
        for e in emitted:
            self.ds.handle(e)
            mid, data = e["subject"], e["data"]
            if e["type"] == "credit_limit.updated":
                self.out.merchants_scored.add(mid)
                if data["eligible_receivables"]["amount"] > 0:
                    self.out.merchants_eligible.add(mid)
                self.out.limits[mid].append((int(parse_rfc3339(e["time"]).timestamp()), data["limit"]["amount"]))
            elif e["type"] == "loan_offer.withdrawn":
                if self.out.open_offers.get(mid) == data["offer_id"]:
                    self.out.open_offers.pop(mid)
                if self._to_accept.get(mid) == data["offer_id"]:
                    self._to_accept.pop(mid)
            elif e["type"] == "loan_offer.created":
                self.out.offers += 1
                self.out.merchants_offered.add(mid)
                self.out.offer_days[mid].add(int(parse_rfc3339(e["time"]).timestamp()) // DAY)
                self.out.open_offers[mid] = data["offer_id"]
                self._to_accept[mid] = data["offer_id"]

    def _accept_pending(self) -> None:
        """The merchant accepts the offer it is shown: the latest one once both cores have taken in what
        happened at this instant. Accepting each offer inside the event that created it, while the underwriter
        still had queued loan events of the same instant to read (repayments of one payout), let it replace an
        offer that had already been accepted and finance the same orders twice."""
        from services.disbursement.service import AcceptOffer

        pending, self._to_accept = self._to_accept, {}
        for mid, offer_id in pending.items():
            res = self.ds.accept(AcceptOffer(offer_id=offer_id, merchant_id=mid,
                                             idempotency_key=f"bt-{offer_id}", now=self._clock[0]))
            self.out.open_offers.pop(mid, None)  # accepted, or refused and so no longer usable
            if res.ok:
                self.out.accepted += 1
            else:
                self.out.refused[res.code or str(res.status_code)] += 1

    def _drain(self) -> None:
        while self.bus.queue or self._to_accept:
            if not self.bus.queue:
                self._accept_pending()
                continue
            batch, self.bus.queue = self.bus.queue, []
            for e in batch:
                etype, mid, data = e["type"], e["subject"], e["data"]
                if etype == "collection.instruction":
                    self.instruction[mid] = (data["owed"]["amount"], data["withhold_rate_bps"],
                                             frozenset(data.get("financed_order_ids", ())))
                elif etype in LOAN_TYPES:
                    self._track(e)
                    self._dispatch(self.uw.handle(e))

    def _track(self, e: dict[str, Any]) -> None:
        data = e["data"]
        loan = self.out.loans.get(data.get("loan_id", ""))
        if e["type"] == "loan.disbursed":
            self.out.loans[data["loan_id"]] = {"merchant": e["subject"], "principal": data["principal"]["amount"],
                                               "fee": data["fee"]["amount"], "state": "open", "charged_off": 0,
                                               "order_ids": tuple(data.get("order_ids", ())), "delinquent": False}
        elif loan is not None and e["type"] == "loan.delinquent":
            loan["delinquent"] = True
        elif loan is not None and e["type"] == "loan.repaid":
            loan["state"] = "repaid"
        elif loan is not None and e["type"] == "loan.charged_off":
            loan["state"] = "charged_off"
            loan["charged_off"] = data["amount"]["amount"]


def withhold_amount(data: dict[str, Any], owed: int, bps: int, financed: frozenset[str]) -> int:
    """What the settlement system withholds from one `settlement.paid` payout: the financed orders' share of
    the net (gross - fees) in full, the rest at `bps`, at most `owed` and the net."""
    gross, net = int(data["gross"]["amount"]), int(data["gross"]["amount"]) - int(data["fees"]["amount"])
    financed_gross = sum(int(o["amount"]["amount"]) for o in data.get("orders", ()) if o["order_id"] in financed)
    financed_net = financed_gross * net // gross if gross else 0
    take = financed_net + (net - financed_net) * max(0, min(bps, 10_000)) // 10_000
    return max(0, min(owed, take, net))


def is_eligible(state: MerchantState, as_of: int, p: PolicySettings) -> bool:
    """A decision point: an active merchant with the policy's minimum history (tenure, settled orders) and
    eligible receivables not yet financed. Risk, guards, delinquency and caps are what the approval rate
    measures, so they do not make a point ineligible."""
    return eligibility(state, as_of, p)[1]


def eligibility(state: MerchantState, as_of: int, p: PolicySettings) -> tuple[bool, bool]:
    """(active with the policy's minimum history, and also a decision point: see `is_eligible`)."""
    if not state.currency or state.status != "active":
        return False, False
    f = compute_features(state, datetime.fromtimestamp(as_of, UTC))
    if f[INDEX["tenure_days"]] < p.min_tenure_days or f[INDEX["settled_orders_90d"]] < p.min_settled_orders:
        return False, False
    receivables = eligible_receivables(state, as_of, p, f[INDEX["settlement_lag_days_90d"]])
    return True, any(not r.financed for r in receivables)


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
    bt.finish()
    return bt.out


def summarise(out: Outcome, truth: dict[str, Any] | None = None) -> dict[str, Any]:
    """Approval, volume, loss and fee yield, overall and by archetype (when the truth is known).

    approval_rate = eligible decision points (merchant-days, see `is_eligible`) at which an offer was made or
    open / all eligible decision points; merchants_offered_rate = merchants ever offered / merchants ever eligible.
    """
    arche = {m: r["archetype"] for m, r in (truth or {}).get("merchants", {}).items()}
    groups: dict[str, dict[str, Any]] = defaultdict(lambda: {
        "eligible": 0, "offered": 0, "points": 0, "points_offered": 0, "points_outstanding": 0,
        "points_clear_offered": 0, "points_approved": 0, "loans": 0, "loans_past_due": 0,
        "principal": 0, "resolved_principal": 0, "charged_off": 0, "fees": 0, "open_loans": 0})

    def add(key: str, fn: Any) -> None:
        fn(groups[key])
        fn(groups["all"])

    for m, pts in out.points.items():
        def upd_points(g: dict[str, Any], pts: list[int] = pts, ever: bool = m in out.merchants_offered) -> None:
            g["eligible"] += 1
            g["offered"] += int(ever)
            for key, n in zip(("points", "points_offered", "points_outstanding", "points_clear_offered",
                               "points_approved"), pts, strict=True):
                g[key] += n
        add(arche.get(m, "unknown"), upd_points)
    for loan in out.loans.values():
        def upd(g: dict[str, Any], loan: dict[str, Any] = loan) -> None:
            g["loans"] += 1
            g["loans_past_due"] += int(loan.get("delinquent", False))  # ever 1+ day past due
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
                       "approval_rate": g["points_offered"] / g["points"] if g["points"] else 0.0,
                       # share of eligible merchants approved: eligible merchant-days on which the merchant held an
                       # approved limit (at least the smallest offer, not frozen), i.e. the daily share of eligible
                       # merchants with credit available to them, averaged over the days
                       "eligible_approved_rate": g["points_approved"] / g["points"] if g["points"] else 0.0,
                       "merchants_offered_rate": g["offered"] / g["eligible"] if g["eligible"] else 0.0,
                       # points with neither an offer nor an advance outstanding at the end of the day: declines
                       # that are not explained by the merchant already drawing on its limit
                       "idle_rate": (g["points"] - g["points_outstanding"] - g["points_clear_offered"]) / g["points"]
                       if g["points"] else 0.0,
                       "loss_rate": g["charged_off"] / rp if rp else 0.0,
                       "fee_yield": g["fees"] / rp if rp else 0.0}
    report["_run"] = {"events": out.events, "offers": out.offers, "accepted": out.accepted,
                      "refused": dict(out.refused)}
    report["_brushing"] = brushing_limits(out, truth)
    return report


def daily_limits(series: list[tuple[int, int]], first: int, last: int) -> dict[int, int]:
    """The limit in effect at the end of each day first..last (0 before the first credit_limit.updated)."""
    out, i, current = {}, 0, 0
    ordered = sorted(series)
    for d in range(first, last + 1):
        while i < len(ordered) and ordered[i][0] // DAY <= d:
            current = ordered[i][1]
            i += 1
        out[d] = current
    return out


MIN_BASE_DAYS = 7  # a brushing merchant needs this many baseline days with the minimum history


def _mean(values: list[int]) -> float | None:
    return sum(values) / len(values) if values else None


def brushing_row(placed: dict[int, int], limits: list[tuple[int, int]], c: int, end: int,
                 frozen: set[int] | None = None, history_from: int | None = None) -> dict[str, Any]:
    """One brushing merchant, campaign starting on day `c`.

    Placed GMV: baseline = the 30 days before `c`; the window runs from `c` to the first day whose trailing 30-day
    placed GMV reaches 3x the baseline (the end of the history when it never does).

    Limit (the measure of the goal): baseline = mean daily limit over the 30 days before `c`, counting only days on
    which the merchant had the policy's minimum history (`history_from`) and its limit was not frozen by a
    delinquency (a frozen limit is a stale number, nothing can be drawn on it); at least `MIN_BASE_DAYS` such days,
    else there is no baseline (`no_baseline`). Window level = mean daily limit over the same 30-day span the
    placed-GMV figure covers (the 30 days ending at the window's end, from `c` on), unfrozen days only.
    limit_growth = window level / baseline level: both figures are 30-day levels, like placed GMV.
    Also reported, for comparison with earlier runs: peak_limit_growth = highest limit in the window / the limit
    the day before `c` (else the highest of the 30 days before): noisy, as limits move with the weekly payouts."""
    frozen = frozen or set()
    base_gmv = sum(placed.get(d, 0) for d in range(c - 30, c))
    lim = daily_limits(limits, c - 30, end)
    trailing = {d: sum(placed.get(k, 0) for k in range(d - 29, d + 1)) for d in range(c, end + 1)}
    tripled = next((d for d in range(c, end + 1) if base_gmv and trailing[d] >= 3 * base_gmv), None)
    stop = tripled if tripled is not None else end
    peak_gmv = trailing[stop] if tripled is not None else max(trailing.values(), default=0)

    def usable(d: int) -> bool:
        return d not in frozen and (history_from is None or d >= history_from)

    base_days = [d for d in range(c - 30, c) if usable(d)]
    base_level = _mean([lim[d] for d in base_days]) if len(base_days) >= MIN_BASE_DAYS else None
    window_level = _mean([lim[d] for d in range(max(c, stop - 29), stop + 1) if usable(d)])
    old_base = lim.get(c - 1, 0) or max(lim.get(d, 0) for d in range(c - 30, c))
    peak_limit = max(lim[d] for d in range(c, stop + 1)) if stop >= c else 0
    row: dict[str, Any] = {
        "campaign_day": c, "window_end_day": stop, "tripled": tripled is not None,
        "history_from_day": history_from, "base_days": len(base_days), "no_baseline": base_level is None,
        "base_placed_gmv_30d": base_gmv, "placed_gmv_30d_at_end": peak_gmv,
        "gmv_growth": peak_gmv / base_gmv if base_gmv else None,
        "base_limit_level": base_level, "window_limit_level": window_level,
        "limit_growth": window_level / base_level if base_level and window_level is not None else None,
        "base_limit": old_base, "peak_limit": peak_limit,
        "peak_limit_growth": peak_limit / old_base if old_base else None,
        "peak_limit_whole_history": max((lim[d] for d in range(c, end + 1)), default=0),
    }
    row["goal_met"] = bool(row["limit_growth"] is not None and row["limit_growth"] <= 1.2)
    return row


def brushing_limits(out: Outcome, truth: dict[str, Any] | None) -> dict[str, Any]:
    """Per brushing merchant and in aggregate: the 30-day limit level while placed GMV tripled against the level
    before the campaign (goal: <= 1.2x), versus placed-GMV growth (see `brushing_row`). Aggregate = sum of window
    levels / sum of baseline levels over the merchants with a baseline."""
    if not truth:
        return {}
    start = int(parse_rfc3339(truth["start"]).timestamp()) // DAY
    end = out.last_ts // DAY
    rows = {}
    for m, r in sorted(truth["merchants"].items()):
        if r["archetype"] != "brushing" or "first_campaign_day" not in r or start + r["first_campaign_day"] >= end:
            continue
        frozen = {d for d, (_, f) in out.daily.get(m, {}).items() if f}
        rows[m] = brushing_row(out.placed.get(m, {}), out.limits.get(m, []), start + r["first_campaign_day"], end,
                               frozen, out.history_from.get(m, end + 1))
    measured = [r for r in rows.values() if r["limit_growth"] is not None and r["gmv_growth"] is not None]
    tripled = [r for r in measured if r["tripled"]]
    base_l = sum(r["base_limit_level"] for r in measured)
    peak_l = sum(r["window_limit_level"] for r in measured)
    base_g, peak_g = sum(r["base_placed_gmv_30d"] for r in measured), sum(r["placed_gmv_30d_at_end"] for r in measured)
    growths = sorted(r["limit_growth"] for r in measured)
    old = [r for r in rows.values() if r["peak_limit_growth"] is not None and r["gmv_growth"] is not None]
    return {"merchants": len(rows), "measured": len(measured), "no_baseline": sum(r["no_baseline"] for r in rows.values()),
            "tripled": len(tripled), "goal_met": sum(r["goal_met"] for r in measured),
            "goal_met_of_tripled": sum(r["goal_met"] for r in tripled),
            "aggregate_limit_growth": peak_l / base_l if base_l else None,
            "aggregate_limit_growth_tripled": (sum(r["window_limit_level"] for r in tripled)
                                               / sum(r["base_limit_level"] for r in tripled))
            if tripled and sum(r["base_limit_level"] for r in tripled) else None,
            "median_limit_growth": growths[len(growths) // 2] if growths else None,
            "aggregate_gmv_growth": peak_g / base_g if base_g else None,
            "aggregate_peak_limit_growth": sum(r["peak_limit"] for r in old) / sum(r["base_limit"] for r in old)
            if old and sum(r["base_limit"] for r in old) else None,
            "per_merchant": rows}
