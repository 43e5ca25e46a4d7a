"""The product contract (DESIGN.md) as invariants over one replay: the input events and what the engine emitted.

`check(inputs, emitted)` returns every violation it finds, each naming the rule, the event or loan concerned and
what was wrong; an empty list means the run kept the contract as far as these rules see it. It is a pure function
of its arguments (no engine, no database): `inputs` are the canonical CloudEvents in the order they were fed
(invalid ones may be included, they are skipped: ingest rejects them), `emitted` the records of
`DIR/emitted.ndjson` in order (each with its `topic`). The numbers (offer TTL, term, grace, fee band, charge-off
threshold, kill switch) come from the services' settings objects, passed in or loaded from the environment as the
services load them.

What the rules need to know about the engine's inner timing is kept conservative: an order event "counts" against
an offer only when it is dated before the offer and arrived no later than the offer's trigger event (an event
dated earlier but arriving later could not have been known to the engine).
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from services.underwriter.domain.policy import DEFAULT_CURRENCY_LIMITS, currency_rows

DAY = 86_400
DECISIONS = frozenset({"credit_limit.updated", "loan_offer.created", "loan_offer.withdrawn", "loan_offer.expired"})
APR = re.compile(r"^\d+\.\d{4}$")
BUCKETS = ((1, 7, "1-7"), (8, 30, "8-30"), (31, 60, "31-60"))
# DESIGN.md's "What Floatbridge emits": the topic of each type and the `data` fields it carries at least
EMITS: dict[str, tuple[str, tuple[str, ...]]] = {
    "credit_limit.updated": ("credit.limits.v1", ("limit", "available", "outstanding", "eligible_receivables", "pd",
                                                  "model_version", "reasons", "trigger_event_id")),
    "loan_offer.created": ("loan.offers.v1", ("offer_id", "amount", "fee", "apr", "due_at", "expires_at", "order_ids",
                                              "pd", "model_version", "reasons")),
    "loan_offer.withdrawn": ("loan.offers.v1", ("offer_id", "reasons")),
    "loan_offer.expired": ("loan.offers.v1", ("offer_id", "reasons")),
    "loan_offer.accepted": ("loans.v1", ("offer_id", "loan_id", "accepted_at")),
    "loan.disbursed": ("loans.v1", ("loan_id", "offer_id", "principal", "fee", "due_at", "payout_id")),
    "loan.repayment_applied": ("loans.v1", ("loan_id", "settlement_id", "amount", "remaining")),
    "loan.repaid": ("loans.v1", ("loan_id", "repaid_at")),
    "loan.delinquent": ("loans.v1", ("loan_id", "days_past_due", "bucket", "remaining")),
    "loan.charged_off": ("loans.v1", ("loan_id", "amount")),
    "collection.instruction": ("collections.v1", ("owed", "withhold_rate_bps", "loan_ids")),
}


@dataclass(frozen=True)
class Violation:
    rule: str  # e.g. "offer.amount_above_available"
    subject: str  # event id, offer id or loan id
    detail: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.subject}: {self.detail}"


@dataclass(frozen=True)
class Terms:
    """The configured numbers the contract is checked against."""

    offer_ttl_hours: int = 24
    max_term_days: int = 60
    grace_days: int = 3
    fee_min_ppm_per_day: int = 300
    fee_max_ppm_per_day: int = 800
    fee_pd_ceiling: float = 0.10
    receivable_max_age_days: int = 60
    kill_switch: bool = False
    charge_off_dpd: int = 60
    merchant_cap_minor: int = 5_000_000
    min_offer_minor: int = 10_000
    min_tenure_days: int = 14
    limits_currency: str = "BRL"  # the currency of merchant_cap_minor and min_offer_minor ...
    currency_limits: str = DEFAULT_CURRENCY_LIMITS  # ... unless listed here (the underwriter's setting)

    def caps(self, currency: str) -> tuple[int, int]:
        """(per-merchant cap, smallest offer) in `currency`: a currency with no limits configured gets no limit
        (cap 0, and no offer is small enough); a merchant whose currency is unknown is held to the flat numbers."""
        row = currency_rows(self.currency_limits).get(currency)
        if row is not None:
            return row[0], row[1]
        if not currency or currency == self.limits_currency:
            return self.merchant_cap_minor, self.min_offer_minor
        return 0, 1 << 62

    @classmethod
    def from_settings(cls) -> Terms:
        from services.disbursement.settings import load_settings as disbursement_settings
        from services.underwriter.settings import load_policy

        p, d = load_policy(), disbursement_settings()
        return cls(p.offer_ttl_hours, p.max_term_days, p.grace_days, p.fee_min_ppm_per_day, p.fee_max_ppm_per_day,
                   p.fee_pd_ceiling, p.receivable_max_age_days, p.kill_switch, d.charge_off_dpd, p.merchant_cap_minor,
                   p.min_offer_minor, p.min_tenure_days, p.limits_currency, p.currency_limits)


def _ts(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt.astimezone(UTC) if dt.tzinfo else None


def _day(dt: datetime) -> int:
    return int(dt.timestamp() // DAY)


@dataclass
class _Order:
    first_pos: int = 1 << 60
    placed: datetime | None = None
    paid: datetime | None = None
    shipped: datetime | None = None
    amount: int = 0
    refunded: int = 0
    # (time, input position, what, amount, refund id) of each event that closes the receivable, fully or in part
    closing: list[tuple[datetime, int, str, int, str]] = field(default_factory=list)


@dataclass
class _Merchant:
    onboarded: tuple[datetime, int] | None = None
    currency: str = ""
    status: list[tuple[datetime, int, str]] = field(default_factory=list)
    orders: dict[str, _Order] = field(default_factory=lambda: defaultdict(_Order))
    ids: dict[str, int] = field(default_factory=dict)  # input event id -> position
    settlements: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # settlement id -> gross paid out
    times: list[tuple[int, datetime]] = field(default_factory=list)  # (input position, event time) of each event

    def first_known(self, pos: int) -> datetime | None:
        """The earliest event time among the merchant's events at input positions up to `pos`."""
        return min((at for p, at in self.times if p <= pos), default=None)


def _inputs(events: Iterable[Any], skip: Collection[int]) -> tuple[dict[str, _Merchant], list[tuple[float, int]]]:
    """Per merchant what it sent; and the engine's clock along the stream: (latest event time so far, position)
    each time it moved (the engine runs an hourly tick only once every event before it in the file is in)."""
    merchants: dict[str, _Merchant] = defaultdict(_Merchant)
    seen: set[str] = set()
    clock: list[tuple[float, int]] = []
    for pos, e in enumerate(events):
        if pos in skip or not isinstance(e, Mapping) or not isinstance(e.get("id"), str) or e["id"] in seen:
            continue
        at, mid, data = _ts(e.get("time")), e.get("subject"), e.get("data")
        if at is None or not isinstance(mid, str) or not isinstance(data, Mapping):
            continue
        seen.add(e["id"])
        if not clock or at.timestamp() > clock[-1][0]:
            clock.append((at.timestamp(), pos))
        m = merchants[mid]
        m.ids[e["id"]] = pos
        m.times.append((pos, at))
        etype = e.get("type")
        if etype == "merchant.onboarded":
            if m.onboarded is None:
                m.onboarded = (at, pos)
                m.currency = str(data.get("currency", ""))
            continue
        if etype == "merchant.updated":
            if isinstance(data.get("status"), str):
                m.status.append((at, pos, data["status"]))
            continue
        if etype == "settlement.paid":
            m.settlements[str(data.get("settlement_id"))] += _amount(data, "gross")
            for o in data.get("orders") or ():
                if isinstance(o, Mapping) and isinstance(o.get("order_id"), str):
                    m.orders[o["order_id"]].closing.append((at, pos, "settled", 0, ""))
            continue
        oid = data.get("order_id")
        if not isinstance(oid, str) or not isinstance(etype, str):
            continue
        o = m.orders[oid]
        o.first_pos = min(o.first_pos, pos)
        amount = data.get("amount", {}).get("amount", 0) if isinstance(data.get("amount"), Mapping) else 0
        if etype == "order.placed":
            o.placed, o.amount = at, max(o.amount, int(amount))
        elif etype == "order.paid":  # fully refunded only once refunds reach the larger of both amounts
            o.paid, o.amount = at, max(o.amount, int(amount))
        elif etype == "order.shipped":
            o.shipped = at
        elif etype == "order.delivered":  # a delivered order was shipped, whether or not its shipping was sent
            o.shipped = at if o.shipped is None else min(o.shipped, at)
        elif etype in ("order.cancelled", "order.chargeback"):
            o.closing.append((at, pos, etype.split(".")[1], 0, ""))
        elif etype == "order.refunded":
            o.closing.append((at, pos, "refunded", int(amount), str(data.get("refund_id"))))
    return merchants, clock


def _amount(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    return int(value["amount"]) if isinstance(value, Mapping) and isinstance(value.get("amount"), int) else 0


def _money_problems(data: Any, currency: str, path: str = "") -> Iterable[str]:
    if isinstance(data, Mapping):
        if set(data) >= {"amount", "currency"}:
            amount = data["amount"]
            if not isinstance(amount, int) or isinstance(amount, bool):
                yield f"{path or '/'}: amount {amount!r} is not integer minor units"
            elif amount < 0:
                yield f"{path or '/'}: negative amount {amount}"
            if currency and data["currency"] != currency:
                yield f"{path or '/'}: currency {data['currency']!r}, merchant's is {currency!r}"
            return
        for k, v in data.items():
            yield from _money_problems(v, currency, f"{path}/{k}")
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _money_problems(v, currency, f"{path}/{i}")


def _status_at(m: _Merchant, at: datetime, pos: int) -> str:
    status = "active"
    for t, p, s in sorted(m.status, key=lambda x: (x[0], x[1])):
        if t <= at and p <= pos:
            status = s
    return status


def _expected_fee(amount: int, pd: float, days: int, t: Terms) -> tuple[int, str]:
    share = min(1.0, max(0.0, pd / t.fee_pd_ceiling))
    ppm = round(t.fee_min_ppm_per_day + share * (t.fee_max_ppm_per_day - t.fee_min_ppm_per_day))
    fee = -(-amount * ppm * days // 1_000_000)
    return fee, _apr(fee, amount, days)


def _apr(fee: int, amount: int, days: int) -> str:
    """The APR disclosed for a flat `fee` on `amount` over `days`, as the underwriter writes it."""
    return str((Decimal(fee) / Decimal(amount) * Decimal(365) / Decimal(days)).quantize(Decimal("0.0001"), ROUND_HALF_UP))


@dataclass
class _Loan:
    loan_id: str
    merchant: str
    offer_id: str
    principal: int
    fee: int
    due: datetime | None
    disbursed_at: datetime
    remaining: int
    repaid: bool = False
    charged_off: bool = False
    delinquent: bool = False
    order_ids: frozenset[str] = frozenset()  # the receivables it advances against (its offer's)


class _Checker:
    def __init__(self, inputs: Iterable[Any], terms: Terms, skip: Collection[int]) -> None:
        self.t = terms
        self.merchants, self.clock = _inputs(inputs, skip)
        self.clock_pos = [q for _t, q in self.clock]
        self.latest_input = datetime.fromtimestamp(self.clock[-1][0], UTC) if self.clock else None
        self.out: list[Violation] = []
        self.by_merchant: dict[str, list[_Loan]] = defaultdict(list)
        self.repaid_from: dict[tuple[str, str], int] = defaultdict(int)  # (merchant, settlement id) -> repaid from it

    def bad(self, rule: str, subject: str, detail: str) -> None:
        self.out.append(Violation(rule, subject, detail))

    def run(self, emitted: Iterable[Mapping[str, Any]]) -> list[Violation]:
        ids: set[str] = set()
        last_limit: dict[str, Mapping[str, Any]] = {}
        open_offer: dict[str, tuple[str, datetime]] = {}  # merchant -> (offer id, expires_at) of the latest created
        offers: dict[str, tuple[str, Mapping[str, Any], datetime]] = {}  # offer id -> (merchant, data, time)
        closed_offers: set[str] = set()
        accepted: dict[str, str] = {}  # offer id -> loan id
        loans: dict[str, _Loan] = {}
        cancelled: set[str] = set()  # loans cancelled before their payout: never disbursed
        loan_event_ids: dict[str, set[str]] = defaultdict(set)  # merchant -> ids of its loans.v1 events
        for e in emitted:
            eid, etype, mid = str(e.get("id")), str(e.get("type")), str(e.get("subject"))
            raw = e.get("data")
            data: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
            at = _ts(e.get("time"))
            if eid in ids:
                self.bad("emitted.duplicate_id", eid, f"{etype}: an emitted event id used twice")
            ids.add(eid)
            if at is None or not str(e.get("time")).endswith(("Z", "+00:00")):
                self.bad("emitted.time", eid, f"{etype}: time {e.get('time')!r} is not RFC 3339 UTC")
                if at is None:
                    continue
            m = self.merchants.get(mid)
            if m is None:
                self.bad("emitted.unknown_merchant", eid, f"{etype} for {mid!r}, who sent no event")
                continue
            for problem in _money_problems(data, m.currency):
                self.bad("money", eid, f"{etype} {problem}")
            if etype in EMITS:
                topic, fields = EMITS[etype]
                if e.get("topic") != topic:
                    self.bad("emitted.topic", eid, f"{etype} on {e.get('topic')!r}, not {topic}")
                missing = [f for f in fields if f not in data]
                if missing:
                    self.bad("emitted.fields", eid, f"{etype} without {', '.join(missing)}")
            if e.get("topic") == "loans.v1":
                loan_event_ids[mid].add(eid)
            if etype in DECISIONS:
                self._decision(eid, etype, mid, m, data, at, loan_event_ids[mid])
            if etype == "credit_limit.updated":
                self._limit(eid, mid, data, last_limit.get(mid), loans)
                last_limit[mid] = data
            elif etype == "loan_offer.created":
                self._offer(eid, mid, m, data, at, last_limit.get(mid), loans)
                offers[str(data.get("offer_id"))] = (mid, data, at)
                open_offer[mid] = (str(data.get("offer_id")), _ts(data.get("expires_at")) or at)
            elif etype in ("loan_offer.withdrawn", "loan_offer.expired"):
                oid = str(data.get("offer_id"))
                if not data.get("reasons"):
                    self.bad("offer.closed_without_reason", eid, f"{etype} of {oid!r} names no reason")
                if oid not in offers or offers[oid][0] != mid:
                    self.bad("offer.withdrawn_unknown", eid, f"withdraws {oid!r}, not an offer made to {mid}")
                closed_offers.add(oid)
                if open_offer.get(mid, ("",))[0] == oid:
                    del open_offer[mid]
            elif etype == "loan_offer.accepted":
                self._accepted(eid, mid, data, at, offers, open_offer, closed_offers, accepted)
            elif etype == "loan.disbursed":
                if str(data.get("loan_id")) in cancelled:
                    self.bad("loan.disbursed_cancelled", str(data.get("loan_id")), f"disbursed after its cancellation ({eid})")
                self._disbursed(eid, mid, data, at, offers, accepted, loans)
            elif etype == "loan.cancelled":
                lid, oid = str(data.get("loan_id")), str(data.get("offer_id"))
                if accepted.get(oid) != lid or offers.get(oid, ("",))[0] != mid:
                    self.bad("loan.cancelled_unknown", lid, f"cancels {lid!r} of offer {oid!r}, not a loan {mid} accepted")
                if lid in loans:
                    self.bad("loan.cancelled_disbursed", lid, f"cancelled after it was disbursed ({eid})")
                cancelled.add(lid)
            elif etype == "loan.repayment_applied":
                self._repayment(eid, mid, data, loans)
            elif etype == "loan.repaid":
                loan = loans.get(str(data.get("loan_id")))
                if loan is None or loan.merchant != mid:
                    self.bad("loan.unknown", eid, f"loan.repaid of {data.get('loan_id')!r}, not a loan of {mid}")
                elif loan.repaid:
                    self.bad("loan.repaid_twice", loan.loan_id, f"loan.repaid again ({eid})")
                elif loan.remaining != 0:
                    self.bad("loan.repaid_with_balance", loan.loan_id, f"loan.repaid while {loan.remaining} remains")
                else:
                    loan.repaid, loan.delinquent = True, False
            elif etype == "loan.delinquent":
                self._delinquent(eid, mid, data, at, loans)
            elif etype == "loan.charged_off":
                loan = loans.get(str(data.get("loan_id")))
                if loan is None or loan.merchant != mid:
                    self.bad("loan.unknown", eid, f"loan.charged_off of {data.get('loan_id')!r}, not a loan of {mid}")
                    continue
                if loan.repaid or loan.charged_off:
                    self.bad("loan.charged_off_closed", loan.loan_id, f"charged off after it was closed ({eid})")
                if loan.due is not None and (_day(at) - _day(loan.due)) < self.t.charge_off_dpd:
                    self.bad("loan.charged_off_early", loan.loan_id,
                             f"charged off {_day(at) - _day(loan.due)} days past due, threshold "
                             f"{self.t.charge_off_dpd}")
                if _amount(data, "amount") != loan.remaining:
                    self.bad("loan.charged_off_amount", loan.loan_id,
                             f"wrote off {_amount(data, 'amount')}, remaining was {loan.remaining}")
                loan.charged_off = True
            elif etype == "collection.instruction":
                self._instruction(eid, mid, data, loans)
        self._end(loans)
        return self.out

    # ------------------------------------------------------------------ decisions
    def _decision(self, eid: str, etype: str, mid: str, m: _Merchant, data: Mapping[str, Any], at: datetime,
                  loan_ids: set[str]) -> None:
        mv = data.get("model_version")
        if not isinstance(mv, str) or not mv:
            self.bad("decision.model_version", eid, f"{etype} without a model_version")
        pd = data.get("pd")
        if not isinstance(pd, (int, float)) or isinstance(pd, bool) or not 0.0 <= pd <= 1.0:
            self.bad("decision.pd", eid, f"{etype} pd {pd!r} not within [0, 1]")
        reasons = data.get("reasons")
        if not isinstance(reasons, list) or not all(
                isinstance(r, Mapping) and isinstance(r.get("code"), str) and r["code"]
                and isinstance(r.get("text"), str) and r["text"] for r in reasons):
            self.bad("decision.reasons", eid, f"{etype} reasons {reasons!r} are not a list of {{code, text}}")
        trigger = data.get("trigger_event_id")
        first = m.first_known(1 << 60)
        if first is not None and at < first:
            self.bad("decision.before_first_event", eid, f"{etype} at {at:%Y-%m-%dT%H:%M:%SZ}, before {mid}'s first "
                     f"event ({first:%Y-%m-%dT%H:%M:%SZ})")
        if (etype not in ("loan_offer.withdrawn", "loan_offer.expired") or trigger is not None) and (
                not isinstance(trigger, str) or (trigger not in m.ids and trigger not in loan_ids)):
            self.bad("decision.trigger", eid, f"{etype} trigger_event_id {trigger!r} is no event of {mid}")

    def _known_before(self, at: datetime) -> int:
        """Position of the first input event the engine had not seen when its clock stood at `at` (a tick: every
        event before the first one dated at or after it)."""
        i = bisect.bisect_left(self.clock, (at.timestamp(), -1))
        return self.clock[i][1] if i < len(self.clock) else 1 << 60

    def _closed(self, o: _Order, before: datetime, known: int) -> tuple[str, datetime] | None:
        """How the order stopped being a receivable (settled, cancelled, charged back, refunded in full) by an
        event dated before `before` at an input position before `known`; None while it is one."""
        refunds: dict[str, int] = {}  # refund id -> amount: a refund re-sent under its id corrects it, the largest counts
        for when, p, what, amt, refund_id in sorted(o.closing, key=lambda c: c[1]):
            if when >= before or p >= known:
                continue
            if what == "refunded":
                refunds[refund_id] = max(refunds.get(refund_id, 0), amt)
                if sum(refunds.values()) < o.amount:
                    continue
            return what, when
        return None

    def _trigger_pos(self, m: _Merchant, data: Mapping[str, Any], at: datetime) -> int:
        """Input position up to which the engine may have known the merchant's events: its trigger's; for a loans.v1
        trigger (a repayment or disbursement dated `at`), the engine stood at an input dated no later than `at`,
        so nothing from the first input that moved its clock past `at` on."""
        trigger = data.get("trigger_event_id")
        if isinstance(trigger, str) and trigger in m.ids:
            # The underwriter scores a merchant once per batch, after all its events of the batch, naming the latest
            # by event time; a batch never crosses an hourly tick: it may hold inputs up to the clock's next hour.
            p = m.ids[trigger]
            k = bisect.bisect_right(self.clock_pos, p)  # the clock as it stood at the trigger: clock[k - 1]
            hour_end = (int(self.clock[k - 1][0]) // 3600 + 1) * 3600 if k else at.timestamp()
            i = bisect.bisect_right(self.clock, (hour_end, 1 << 62))
            return max(p, self.clock[i][1] - 1) if i < len(self.clock) else 1 << 60
        i = bisect.bisect_right(self.clock, (at.timestamp(), 1 << 62))
        return self.clock[i][1] - 1 if i < len(self.clock) else 1 << 60

    def _limit(self, eid: str, mid: str, data: Mapping[str, Any], previous: Mapping[str, Any] | None,
               loans: Mapping[str, _Loan]) -> None:
        limit, available, outstanding = _amount(data, "limit"), _amount(data, "available"), _amount(data, "outstanding")
        if available > max(0, limit - outstanding):
            self.bad("limit.available", eid, f"available {available} > limit {limit} - outstanding {outstanding}")
        currency = self.merchants[mid].currency
        cap = self.t.caps(currency)[0]
        if limit > cap:
            self.bad("limit.merchant_cap", eid, f"limit {limit} above the per-merchant cap {cap} {currency}")
        delinquent = [ln.loan_id for ln in self.by_merchant[mid] if ln.delinquent and not (ln.repaid or ln.charged_off)]
        if delinquent and previous is not None and limit > _amount(previous, "limit"):
            self.bad("limit.raised_while_delinquent", eid,
                     f"limit {_amount(previous, 'limit')} -> {limit} while {delinquent[0]} is delinquent")

    def _offer(self, eid: str, mid: str, m: _Merchant, data: Mapping[str, Any], at: datetime,
               limit: Mapping[str, Any] | None, loans: Mapping[str, _Loan]) -> None:
        t = self.t
        oid = str(data.get("offer_id"))
        amount, fee = _amount(data, "amount"), _amount(data, "fee")
        pos = self._trigger_pos(m, data, at)
        if t.kill_switch:
            self.bad("offer.kill_switch", oid, "offer made with the kill switch on")
        if m.onboarded is None or m.onboarded[0] > at or m.onboarded[1] > pos:
            self.bad("offer.not_onboarded", oid, f"offer to {mid} before merchant.onboarded")
        first = m.first_known(pos)  # tenure can only rest on events the engine had seen, dated no earlier
        if first is None or at - first < timedelta(days=t.min_tenure_days):
            self.bad("offer.tenure", oid, f"offer at {at:%Y-%m-%dT%H:%M:%SZ}, {mid}'s first event known then "
                     f"{f'{first:%Y-%m-%dT%H:%M:%SZ}' if first else 'none'}: under {t.min_tenure_days} days of tenure")
        status = _status_at(m, at, pos)
        if status != "active":
            self.bad("offer.merchant_not_active", oid, f"offer to a {status} merchant")
        least = t.caps(m.currency)[1]
        if amount <= 0 or amount < least:
            self.bad("offer.amount", oid, f"amount {amount} is below the smallest offer {least} {m.currency}"
                     if least < 1 << 62 else f"no advance limits are configured for {m.currency}")
        if limit is None:
            self.bad("offer.no_limit", oid, "no credit_limit.updated of the merchant before the offer")
        else:
            if amount > _amount(limit, "available"):
                self.bad("offer.amount_above_available", oid,
                         f"amount {amount} > available {_amount(limit, 'available')} of the latest limit update")
            rate = limit.get("advance_rate_bps")
            if isinstance(rate, int) and amount * 10_000 > _amount(limit, "eligible_receivables") * rate:
                self.bad("offer.amount_above_receivables", oid,
                         f"amount {amount} > advance rate {rate} bps x eligible receivables "
                         f"{_amount(limit, 'eligible_receivables')}")
        for ln in self.by_merchant[mid]:
            if ln.delinquent and not (ln.repaid or ln.charged_off):
                self.bad("offer.while_delinquent", oid, f"offer while loan {ln.loan_id} is delinquent")
            if ln.charged_off:
                self.bad("offer.after_charge_off", oid, f"offer after loan {ln.loan_id} was charged off")
        expires, due = _ts(data.get("expires_at")), _ts(data.get("due_at"))
        if expires != at + timedelta(hours=t.offer_ttl_hours):
            self.bad("offer.expires_at", oid, f"expires_at {data.get('expires_at')} is not created "
                     f"{at:%Y-%m-%dT%H:%M:%SZ} + {t.offer_ttl_hours} h")
        if due is None or not at < due <= at + timedelta(days=t.max_term_days):
            self.bad("offer.due_at", oid, f"due_at {data.get('due_at')} not within {t.max_term_days} days of "
                     f"{at:%Y-%m-%dT%H:%M:%SZ}")
        apr, pd = data.get("apr"), data.get("pd")
        if not isinstance(apr, str) or not APR.match(apr):
            self.bad("offer.apr", oid, f"apr {apr!r} is not a decimal string")
        if due is not None and amount > 0:
            # The fee is priced on the days until the financed receivables are expected to settle (due - grace), and
            # never on more days than the loan runs: an offer whose due date was capped at the longest term was
            # priced on between (term - grace) and term days. Every offer, capped or not, keeps its fee within the
            # daily band over those days, and discloses the APR of that fee over those same days.
            term = max(1, -(-int((due - at).total_seconds()) // DAY))
            capped = due >= at + timedelta(days=t.max_term_days)
            settle = due - timedelta(days=t.grace_days)
            fewest = max(1, -(-int((settle - at).total_seconds()) // DAY))
            days_run = range(min(fewest, term), term + 1) if capped else range(fewest, fewest + 1)
            if isinstance(pd, (int, float)) and not any(
                    _expected_fee(amount, float(pd), d, t) == (fee, apr) for d in days_run):
                want, want_apr = _expected_fee(amount, float(pd), days_run[0], t)
                self.bad("offer.fee", oid, f"fee {fee} (apr {apr}) for {amount} due in {term} days at pd {pd}; the "
                         f"settings price it {want} (apr {want_apr}) over {days_run[0]}"
                         f"{f'-{days_run[-1]}' if capped else ''} days")
            lo, hi = t.fee_min_ppm_per_day, t.fee_max_ppm_per_day
            if not (amount * lo * days_run[0] <= fee * 1_000_000 and (fee - 1) * 1_000_000 < amount * hi * term):
                self.bad("offer.fee_band", oid, f"fee {fee} of {amount} is outside {lo}-{hi} ppm a day over the "
                         f"{term}-day term")
            if isinstance(apr, str) and APR.match(apr) and not any(_apr(fee, amount, d) == apr for d in days_run):
                self.bad("offer.apr_term", oid, f"apr {apr} is not that of fee {fee} on {amount} over the "
                         f"{days_run[0]}{f'-{days_run[-1]}' if capped else ''} days the loan runs")
        order_ids = data.get("order_ids")
        if not isinstance(order_ids, list) or not order_ids:
            self.bad("offer.order_ids", oid, "no financed orders named")
            return
        if len(set(order_ids)) != len(order_ids):
            self.bad("offer.order_ids", oid, "an order named twice")
        oldest = at - timedelta(days=t.receivable_max_age_days)
        named = sum(m.orders[o].amount for o in set(order_ids) if isinstance(o, str) and o in m.orders)
        if amount > named:
            self.bad("offer.amount_above_orders", oid, f"amount {amount} > {named}, what the financed orders sold for")
        financed = {o: ln.loan_id for ln in self.by_merchant[mid] if not (ln.repaid or ln.charged_off)
                    for o in ln.order_ids}
        for order_id in order_ids:
            if order_id in financed:
                self.bad("offer.order_financed", oid, f"order {order_id} already financed by open loan "
                         f"{financed[order_id]}")
            o = m.orders.get(order_id) if isinstance(order_id, str) else None
            if o is None or (o.placed or o.paid) is None:
                self.bad("offer.order_unknown", oid, f"order {order_id!r} was never placed or paid with {mid}")
                continue
            if o.paid is None or o.paid > at or o.shipped is None or o.shipped > at:
                self.bad("offer.order_not_paid_shipped", oid, f"order {order_id} not paid and shipped by the offer")
            placed = o.placed or o.paid  # a placement refused or not yet arrived: the payment dates the order
            if placed is not None and not oldest < placed <= at:
                self.bad("offer.order_age", oid, f"order {order_id} placed {placed:%Y-%m-%d}, not within "
                         f"{t.receivable_max_age_days} days before the offer")
            closed = self._closed(o, at, pos + 1)
            if closed is not None:
                self.bad("offer.order_closed", oid, f"order {order_id} {closed[0]} at {closed[1]:%Y-%m-%dT%H:%M:%SZ}, "
                         "before the offer")

    # ------------------------------------------------------------------ loans
    def _accepted(self, eid: str, mid: str, data: Mapping[str, Any], at: datetime,
                  offers: Mapping[str, tuple[str, Mapping[str, Any], datetime]],
                  open_offer: Mapping[str, tuple[str, datetime]], closed: set[str], accepted: dict[str, str]) -> None:
        oid = str(data.get("offer_id"))
        if oid not in offers or offers[oid][0] != mid:
            self.bad("accept.unknown_offer", eid, f"accepts {oid!r}, not an offer made to {mid}")
            return
        if oid in accepted:
            self.bad("accept.twice", oid, f"accepted again ({eid}): loans {accepted[oid]} and {data.get('loan_id')}")
        accepted[oid] = str(data.get("loan_id"))
        latest = open_offer.get(mid)
        if oid in closed:
            self.bad("accept.closed_offer", oid, "accepted after it was withdrawn")
        elif latest is None or latest[0] != oid:
            self.bad("accept.superseded_offer", oid, f"accepted while {latest[0] if latest else 'none'} is the open "
                     "offer")
        known = self._known_before(at)
        m = self.merchants[mid]
        for order_id in offers[oid][1].get("order_ids") or ():
            o = m.orders.get(order_id) if isinstance(order_id, str) else None
            gone = self._closed(o, at, known) if o is not None else None
            if gone is not None:
                self.bad("accept.order_closed", oid, f"accepted at {at:%Y-%m-%dT%H:%M:%SZ} though order {order_id} "
                         f"{gone[0]} at {gone[1]:%Y-%m-%dT%H:%M:%SZ}")
        expires = _ts(offers[oid][1].get("expires_at"))
        if expires is not None and at >= expires:
            self.bad("accept.expired_offer", oid, f"accepted at {at:%Y-%m-%dT%H:%M:%SZ}, expired {expires:%H:%M:%SZ}")
        if self.t.kill_switch:
            self.bad("accept.kill_switch", oid, "accepted with the kill switch on")
        status = _status_at(m, at, known - 1)
        if status != "active":
            self.bad("accept.merchant_not_active", oid, f"accepted at {at:%Y-%m-%dT%H:%M:%SZ} from a {status} merchant")

    def _disbursed(self, eid: str, mid: str, data: Mapping[str, Any], at: datetime,
                   offers: Mapping[str, tuple[str, Mapping[str, Any], datetime]], accepted: Mapping[str, str],
                   loans: dict[str, _Loan]) -> None:
        oid, lid = str(data.get("offer_id")), str(data.get("loan_id"))
        offer = offers.get(oid)
        if offer is None or offer[0] != mid:
            self.bad("loan.unknown_offer", lid, f"disbursed against {oid!r}, not an offer made to {mid}")
            return
        if accepted.get(oid) != lid:
            self.bad("loan.not_accepted", lid, f"disbursed against {oid} whose acceptance names {accepted.get(oid)}")
        if lid in loans or any(ln.offer_id == oid for ln in self.by_merchant[mid]):
            self.bad("loan.twice", lid, f"a second loan.disbursed for offer {oid}")
            return
        principal, fee = _amount(data, "principal"), _amount(data, "fee")
        if principal != _amount(offer[1], "amount") or fee != _amount(offer[1], "fee"):
            self.bad("loan.terms", lid, f"principal {principal} fee {fee}, offer said {_amount(offer[1], 'amount')} "
                     f"and {_amount(offer[1], 'fee')}")
        due = _ts(data.get("due_at"))
        if due != _ts(offer[1].get("due_at")):
            self.bad("loan.due_at", lid, f"due {data.get('due_at')}, offer said {offer[1].get('due_at')}")
        named = offer[1].get("order_ids")
        loans[lid] = _Loan(lid, mid, oid, principal, fee, due, at, principal + fee,
                           order_ids=frozenset(o for o in named if isinstance(o, str)) if isinstance(named, list)
                           else frozenset())
        self.by_merchant[mid].append(loans[lid])

    def _repayment(self, eid: str, mid: str, data: Mapping[str, Any], loans: Mapping[str, _Loan]) -> None:
        loan = loans.get(str(data.get("loan_id")))
        if loan is None or loan.merchant != mid:
            self.bad("loan.unknown", eid, f"repayment of {data.get('loan_id')!r}, not a loan of {mid}")
            return
        amount, remaining = _amount(data, "amount"), _amount(data, "remaining")
        sid = str(data.get("settlement_id"))
        self.repaid_from[(mid, sid)] += amount
        gross = self.merchants[mid].settlements.get(sid)
        if gross is not None and self.repaid_from[(mid, sid)] > gross:
            self.bad("repayment.above_payout", loan.loan_id, f"repayments from {sid} reach "
                     f"{self.repaid_from[(mid, sid)]}, more than the {gross} it paid out")
        if sid not in self.merchants[mid].settlements:
            self.bad("repayment.settlement", loan.loan_id, f"repaid from {data.get('settlement_id')!r}, no payout "
                     f"of {mid}")
        if loan.repaid:
            self.bad("repayment.after_repaid", loan.loan_id, f"repayment {eid} after loan.repaid")
        if amount <= 0:
            self.bad("repayment.amount", loan.loan_id, f"repayment of {amount}")
        if remaining != loan.remaining - amount or remaining < 0:
            self.bad("repayment.remaining", loan.loan_id,
                     f"remaining {loan.remaining} - {amount} reported as {remaining}")
        loan.remaining = remaining

    def _delinquent(self, eid: str, mid: str, data: Mapping[str, Any], at: datetime,
                    loans: Mapping[str, _Loan]) -> None:
        loan = loans.get(str(data.get("loan_id")))
        if loan is None or loan.merchant != mid:
            self.bad("loan.unknown", eid, f"loan.delinquent of {data.get('loan_id')!r}, not a loan of {mid}")
            return
        if loan.repaid or loan.charged_off:
            self.bad("delinquent.closed_loan", loan.loan_id, f"loan.delinquent ({eid}) after the loan was closed")
        dpd = data.get("days_past_due")
        want = _day(at) - _day(loan.due) if loan.due is not None else None
        if dpd != want or want is None or want < 1:
            self.bad("delinquent.dpd", loan.loan_id, f"days_past_due {dpd} at {at:%Y-%m-%d}, due "
                     f"{loan.due:%Y-%m-%d}" if loan.due else "no due date")
        elif data.get("bucket") != next((b for lo, hi, b in BUCKETS if lo <= want <= hi), BUCKETS[-1][2]):
            self.bad("delinquent.bucket", loan.loan_id, f"bucket {data.get('bucket')!r} for {want} days past due")
        if _amount(data, "remaining") != loan.remaining:
            self.bad("delinquent.remaining", loan.loan_id,
                     f"remaining {_amount(data, 'remaining')}, repayments leave {loan.remaining}")
        loan.delinquent = True

    def _instruction(self, eid: str, mid: str, data: Mapping[str, Any], loans: Mapping[str, _Loan]) -> None:
        mine = [ln for ln in self.by_merchant[mid] if not ln.repaid and ln.remaining > 0]
        owed = sum(ln.remaining for ln in mine)
        if _amount(data, "owed") != owed:
            self.bad("collection.owed", eid, f"owed {_amount(data, 'owed')}, the merchant's loans leave {owed} "
                     f"({', '.join(f'{ln.loan_id}: {ln.remaining}' for ln in mine) or 'none'})")
        ids = data.get("loan_ids")
        if not isinstance(ids, list) or set(ids) != {ln.loan_id for ln in mine}:
            self.bad("collection.loan_ids", eid, f"loan_ids {ids!r}, owing loans {sorted(ln.loan_id for ln in mine)}")
        rate = data.get("withhold_rate_bps")
        if not isinstance(rate, int) or not 0 <= rate <= 10_000 or (owed == 0) != (rate == 0):
            self.bad("collection.rate", eid, f"withhold_rate_bps {rate!r} with {owed} owed")

    def _end(self, loans: Mapping[str, _Loan]) -> None:
        """Aging runs daily by event time: what the clock passed must have happened."""
        if self.latest_input is None:
            return
        today = _day(self.latest_input)
        for ln in loans.values():
            if ln.repaid or ln.charged_off or ln.due is None:
                continue
            dpd = today - _day(ln.due)
            if dpd > self.t.charge_off_dpd:
                self.bad("loan.not_charged_off", ln.loan_id, f"{dpd} days past due at the end, never charged off")
            if dpd > 1 and not ln.delinquent:
                self.bad("loan.not_delinquent", ln.loan_id, f"{dpd} days past due at the end, never delinquent")


def check(inputs: Iterable[Any], emitted: Iterable[Mapping[str, Any]], terms: Terms | None = None,
          skip: Collection[int] = ()) -> list[Violation]:
    """Every contract violation of one run: `inputs` as fed (in order), `emitted` as recorded (in order);
    `skip`: indexes into `inputs` of the events the engine refused (its line errors, line - 1 for a file of one
    event a line), which change nothing."""
    return _Checker(inputs, terms or Terms.from_settings(), frozenset(skip)).run(emitted)
