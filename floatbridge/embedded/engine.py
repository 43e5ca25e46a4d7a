"""The embedded engine: every service's real core in one process, wired by an in-process bus.

Marketplace events go through the ingest core (validation, normalisation, buyer-id hashing,
dedupe), the underwriter core (state, features, champion LightGBM, policy), and the
disbursement core on SQLite (offers, signed webhooks, acceptance, loans, ledger, collections,
aging) exactly as in the Kafka deployment; only the transports differ. Simulated merchants
receive the signed webhooks, verify them with the shipped verifier and accept offers through
the acceptance API's application service (API-key authentication, then `accept`, as the HTTP
handler does; `EngineOptions.accept_over_http` runs the FastAPI app in-process instead). The
simulated marketplace withholds from payouts what `collections.v1` instructs.

Like the Kafka consumers, the services take what the bus delivered in batches, never across an
hourly tick of event time (a fed batch is cut where a tick falls): whenever the in-process queues
run empty, the underwriter gets the events that arrived as one batch (each merchant scored at most
once per batch) and disbursement applies its events in one SQLite transaction. Settlements, refunds,
cancellations and chargebacks of merchants who never tried to borrow are not sent to disbursement (with
no loan there is nothing for it to do with them), except those naming an order of the merchant's open
offer: acceptance refuses an offer whose orders settled, were cancelled, refunded or charged back since
(receivables_changed), first loans included.

Time is event time: the engine's clock is the latest event time seen, so a replay of the same
file gives the same decisions.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from schemas import codec, topics
from services.common.timeutil import parse_rfc3339

EMITTED_TOPICS = (topics.CREDIT_LIMITS, topics.LOAN_OFFERS, topics.LOANS, topics.COLLECTIONS)
Handler = Callable[[dict[str, Any]], None]
DISBURSEMENT_MARKETPLACE_TYPES = frozenset({
    "merchant.onboarded", "merchant.updated", "order.paid", "settlement.paid", "order.refunded", "order.cancelled",
    "order.chargeback",
})  # order.paid: what each order was paid, the share of a loan it is expected to repay once financed
# Of those, the ones that only matter to a merchant who has borrowed: with no loan ever taken there are no
# financed orders, nothing owed and no instruction to refresh, so disbursement would only mark them processed.
# One exception: one naming an order of the merchant's open offer, which acceptance must then refuse.
BORROWER_ONLY_TYPES = frozenset({"settlement.paid", "order.refunded", "order.cancelled", "order.chargeback"})


# What json.dumps(obj, separators=(",", ":")) writes, without building an encoder for every emitted event.
_RECORD_ENCODER = json.JSONEncoder(separators=(",", ":"))


class InProcessBus:
    """Topics as FIFO queues drained synchronously: deterministic, no threads."""

    def __init__(self, record: IO[str] | None = None) -> None:
        self._queue: deque[tuple[str, str, dict[str, Any]]] = deque()
        self._subs: dict[str, list[Handler]] = defaultdict(list)
        self._watchers: list[Callable[[str, dict[str, Any]], None]] = []
        self._idle: list[Callable[[], None]] = []
        self.record = record
        self.counts: dict[str, int] = defaultdict(int)

    def subscribe(self, topic: str, handler: Handler) -> None:
        self._subs[topic].append(handler)

    def watch(self, watcher: Callable[[str, dict[str, Any]], None]) -> None:
        self._watchers.append(watcher)

    def on_idle(self, hook: Callable[[], None]) -> None:
        """Called whenever the queues run empty; a hook may publish more (a consumer's batch commit)."""
        self._idle.append(hook)

    def publish(self, topic: str, key: str, event: dict[str, Any]) -> None:
        self._queue.append((topic, key, event))

    def drain(self) -> None:
        queue, counts, record, watchers, subs = self._queue, self.counts, self.record, self._watchers, self._subs
        encode = _RECORD_ENCODER.encode
        while True:
            while queue:
                topic, _key, event = queue.popleft()
                counts[topic] += 1
                if record is not None and topic in EMITTED_TOPICS:
                    record.write(encode({"topic": topic, **event}) + "\n")
                for watcher in watchers:
                    watcher(topic, event)
                for handler in subs.get(topic, ()):
                    handler(event)
            for hook in self._idle:
                hook()
            if not queue:
                return


class BusSink:
    """Ingest's EventSink over the bus: the 'broker' acknowledges by enqueueing."""

    def __init__(self, bus: InProcessBus) -> None:
        self.bus = bus

    def publish(self, records: Iterable[Any]) -> None:
        for rec in records:
            topic = topics.MARKETPLACE_EVENTS if rec.kind == "event" else topics.INGEST_REJECTED
            self.bus.publish(topic, rec.key, codec.decode(rec.payload))


@dataclass
class SimulatedMerchant:
    merchant_id: str
    api_key: str
    secret: str = ""
    accepts: bool = True
    seen_ids: set[str] = field(default_factory=set)
    open_loans: set[str] = field(default_factory=set)


class MerchantFleet:
    """The merchants' side: verify each webhook, queue offers to accept."""

    def __init__(self, accept: str = "all") -> None:
        from services.disbursement.verifier.verify import WebhookVerificationError, verify

        self._verify = verify
        self._error = WebhookVerificationError
        self.accept = accept
        self.merchants: dict[str, SimulatedMerchant] = {}
        self.to_accept: deque[tuple[str, str]] = deque()
        self.verified = 0
        self.refused = 0
        self.now: Callable[[], datetime] = lambda: datetime.now(UTC)

    def url(self, merchant_id: str) -> str:
        return f"http://merchant.invalid/{merchant_id}/webhooks"

    def deliver(self, url: str, headers: Mapping[str, str], body: bytes) -> int:
        merchant_id = url.rsplit("/", 2)[-2]
        merchant = self.merchants.get(merchant_id)
        if merchant is None:
            return 404
        try:
            event = self._verify(merchant.secret, headers, body, now=self.now().timestamp(),
                                 seen_ids=merchant.seen_ids)
        except self._error:
            self.refused += 1
            return 400
        self.verified += 1
        etype, data = event.get("type"), event.get("data") or {}
        if etype == "loan.disbursed":
            merchant.open_loans.add(data["loan_id"])
        elif etype in ("loan.repaid", "loan.charged_off"):
            merchant.open_loans.discard(data["loan_id"])
        elif etype == "loan_offer.created" and merchant.accepts and self.wants(merchant):
            self.to_accept.append((merchant_id, data["offer_id"]))
        return 204

    def wants(self, merchant: SimulatedMerchant) -> bool:
        """all: take every offer; one: take an offer only while no advance of its own is open."""
        return self.accept == "all" or (self.accept == "one" and not merchant.open_loans)


@dataclass
class Tally:
    """What the summary and the report need, read off the emitted events."""

    merchants: set[str] = field(default_factory=set)
    limits: dict[str, int] = field(default_factory=dict)
    offers: int = 0
    offered_merchants: set[str] = field(default_factory=set)
    accepted: int = 0
    refused_accepts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    disbursed: int = 0
    fees: int = 0
    loans: dict[str, dict[str, Any]] = field(default_factory=dict)
    repaid: int = 0
    repaid_amount: int = 0
    delinquent: set[str] = field(default_factory=set)
    charged_off: int = 0
    charged_off_principal: int = 0
    cancelled: int = 0  # loans cancelled before any money moved (the payout rail refused them for good)
    rejected: int = 0
    reasons_by_merchant: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    borrowers: set[str] = field(default_factory=set)
    daily: list[dict[str, Any]] = field(default_factory=list)
    timelines: dict[str, list[tuple[str, str, int, str]]] = field(default_factory=lambda: defaultdict(list))
    currency: str = ""  # the run's first currency: the scalar money totals and the report's charts are in it
    open_loans: set[str] = field(default_factory=set)  # disbursed or delinquent: what outstanding sums
    # Money totals per currency (disbursed, fees, repaid_amount, charged_off_principal): amounts in different
    # currencies are never added together.
    money: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    merchant_currency: dict[str, str] = field(default_factory=dict)

    def _add(self, currency: str, key: str, amount: int) -> None:
        """Add to the per-currency total `key` (also the scalar field of that name in the first currency)."""
        self.money[currency][key] += amount
        if not self.currency:
            self.currency = currency
        if currency == self.currency:
            setattr(self, key, getattr(self, key) + amount)

    def watch(self, topic: str, event: dict[str, Any]) -> None:
        etype, data, mid = event["type"], event.get("data") or {}, event.get("subject", "")
        if topic == topics.MARKETPLACE_EVENTS:
            self.merchants.add(mid)
        elif topic == topics.INGEST_REJECTED:
            self.rejected += 1
        elif etype == "credit_limit.updated":
            self.merchant_currency[mid] = data["limit"]["currency"]
            if not self.currency:
                self.currency = data["limit"]["currency"]
            if data["limit"]["currency"] == self.currency:
                self.limits[mid] = data["limit"]["amount"]
            codes = [r["code"] for r in data.get("reasons", [])]
            self.reasons_by_merchant[mid].update(codes)
            if len(self.timelines[mid]) < 400:
                self.timelines[mid].append((event["time"], etype, data["limit"]["amount"], ", ".join(codes[:3])))
        elif etype == "loan_offer.created":
            self.offers += 1
            self.offered_merchants.add(mid)
        elif etype == "loan.disbursed":
            self.accepted += 1
            self.borrowers.add(mid)
            principal, fee, cur = data["principal"]["amount"], data["fee"]["amount"], data["principal"]["currency"]
            self._add(cur, "disbursed", principal)
            self._add(cur, "fees", fee)
            self.loans[data["loan_id"]] = {"merchant": mid, "principal": principal, "fee": fee, "currency": cur,
                                           "remaining": principal + fee, "state": "disbursed"}
            self.open_loans.add(data["loan_id"])
            self.timelines[mid].append((event["time"], etype, principal, data["loan_id"]))
        elif etype == "loan.repayment_applied":
            loan = self.loans.get(data["loan_id"])
            if loan is not None:
                loan["remaining"] = data["remaining"]["amount"]
            self._add(data["amount"]["currency"], "repaid_amount", data["amount"]["amount"])
        elif etype == "loan.repaid":
            self.repaid += 1
            loan = self.loans.get(data["loan_id"])
            if loan is not None:
                loan["state"], loan["remaining"] = "repaid", 0
            self.open_loans.discard(data["loan_id"])
        elif etype == "loan.delinquent":
            loan = self.loans.get(data["loan_id"])
            if loan is not None and loan["state"] != "charged_off":
                loan["state"] = "delinquent"
            self.delinquent.add(data["loan_id"])
        elif etype == "loan.charged_off":
            self.charged_off += 1
            loan = self.loans.get(data["loan_id"])
            self.open_loans.discard(data["loan_id"])
            if loan is not None:
                loan["state"] = "charged_off"
                # Principal share of what was written off; the fee part was never lent.
                self._add(loan["currency"], "charged_off_principal", min(loan["principal"], data["amount"]["amount"]))
                self.timelines[loan["merchant"]].append((event["time"], etype, data["amount"]["amount"], ""))
        elif etype == "loan.cancelled":  # never disbursed: counted, nothing lent or outstanding
            self.cancelled += 1
            self.timelines[mid].append((event["time"], etype, 0, data["loan_id"]))

    def outstanding(self, currency: str | None = None) -> int:
        """Remaining balances of open loans in `currency` (default: the run's first currency)."""
        loans, cur = self.loans, currency or self.currency
        return sum(loans[k]["remaining"] for k in self.open_loans
                   if loans[k]["state"] in ("disbursed", "delinquent") and loans[k]["currency"] == cur)

    def snapshot(self, day: str) -> None:
        self.daily.append({
            "day": day, "limits": sum(self.limits.values()), "offers": self.offers, "accepted": self.accepted,
            "disbursed": self.disbursed, "outstanding": self.outstanding(),
            "delinquent": sum(1 for k in self.open_loans if self.loans[k]["state"] == "delinquent"),
            "charged_off": self.charged_off,
        })


@dataclass(frozen=True)
class EngineOptions:
    db_path: Path
    accept: str = "all"  # "all" | "one" (while no advance is open) | "none"
    webhook_every: timedelta = timedelta(hours=1)
    emitted: IO[str] | None = None
    metrics_registry: Any = None
    registry_path: Path | None = None
    # Merchants accept through the disbursement HTTP app (FastAPI, in-process) instead of calling the
    # application service the HTTP handler calls; the same checks, slower.
    accept_over_http: bool = False
    # What "now" is for the future-date check: an event dated more than ingest's future skew after it is
    # rejected as future-dated (reason time) and never moves the replay clock, so one mistyped year cannot
    # age every loan to charge-off. Replays of files pass the wall clock at start, as ingest compares with
    # the wall clock; None (the simulated demo) checks nothing.
    as_of: datetime | None = None


class EmbeddedEngine:
    def __init__(self, options: EngineOptions) -> None:
        from prometheus_client import CollectorRegistry

        from services.disbursement.bootstrap import bootstrap as disbursement_bootstrap
        from services.disbursement.bootstrap import make_engine as disbursement_engine
        from services.ingest.adapters.memory import InMemoryDedupeStore
        from services.ingest.bootstrap import bootstrap as ingest_bootstrap
        from services.ingest.settings import load_settings as ingest_settings
        from services.underwriter.bootstrap import bootstrap as underwriter_bootstrap

        self.options = options
        self.now = datetime(1970, 1, 1, tzinfo=UTC)
        reg = options.metrics_registry or CollectorRegistry()
        self.bus = InProcessBus(options.emitted)
        self.tally = Tally()
        self.fleet = MerchantFleet(options.accept)
        self.fleet.now = lambda: self.now
        # Replays are history: the future-skew check compares with the replay clock, not the wall clock.
        isettings = ingest_settings(buyer_hash_key=EMBEDDED_BUYER_HASH_KEY) if _accepts_overrides(ingest_settings) \
            else ingest_settings()
        self.ingest = ingest_bootstrap(isettings, sink=BusSink(self.bus), dedupe=InMemoryDedupeStore(),
                                       clock=lambda: self.now, registry=reg)
        self.underwriter = underwriter_bootstrap(registry=options.registry_path, metrics_registry=reg)
        options.db_path.parent.mkdir(parents=True, exist_ok=True)
        if options.db_path.exists():
            options.db_path.unlink()
        # The run's own database, deleted above and rebuilt from the events: a scratch database.
        self.disbursement = disbursement_bootstrap(
            engine=disbursement_engine(f"sqlite:///{options.db_path}", scratch=True), bus=self.bus,
            transport=self.fleet.deliver, clock=lambda: self.now, registry=reg)
        self.api = _acceptance_client(self.disbursement) if options.accept_over_http else None
        # Events for disbursement wait here until the bus runs idle, then go in one transaction.
        self._to_disbursement: list[dict[str, Any]] = []
        self._to_underwriter: list[dict[str, Any]] = []
        # Merchants who ever tried to accept an offer: only their settlements/refunds/cancellations can matter.
        self.borrowers: set[str] = set()
        # Merchants who have not: their latest offer (id, financed order ids, expiry) while it may be open, so
        # that a settlement, refund, cancellation or chargeback of one of its orders still reaches acceptance.
        self.open_offers: dict[str, tuple[str, frozenset[str], datetime]] = {}
        # merchant -> (owed, withhold bps, financed order ids) from the latest collection.instruction
        self.owed: dict[str, tuple[int, int, frozenset[str]]] = {}
        # settlement event id -> what the marketplace withheld from it (filled once, per event id)
        self._withheld_by_id: dict[tuple[str, str], int] = {}
        self.line_errors: list[tuple[int, str, list[dict[str, str]]]] = []
        # event id -> line of the events being submitted: a service that cannot apply one names its line
        self._lines: dict[str, int] = {}
        self.events_in = 0
        self._next_tick: datetime | None = None
        skew = isettings.max_future_skew_seconds
        self._horizon: datetime | None = None if options.as_of is None or skew < 0 \
            else options.as_of + timedelta(seconds=skew)
        # Webhook rows appear only when disbursement handled something; skip empty dispatch passes.
        self._outbox_dirty = True
        self._day_dispatched: str | None = None
        self._day: str | None = None
        self._wire()

    # ----------------------------------------------------------------- wiring
    def _wire(self) -> None:
        # Disbursement acts on these marketplace events only; the engine ages loans itself (tick), so the
        # rest need not advance its event clock.
        wanted, borrower_only = DISBURSEMENT_MARKETPLACE_TYPES, BORROWER_ONLY_TYPES
        bus = self.bus
        pending = self._to_disbursement
        borrowers = self.borrowers
        open_offers = self.open_offers
        if callable(getattr(self.underwriter, "handle_batch", None)):
            to_underwriter: Handler = self._to_underwriter.append
        else:  # a core without batches: one event at a time
            handle = self.underwriter.handle

            def to_underwriter(event: dict[str, Any]) -> None:
                for out in handle(event):
                    bus.publish(_topic_of(out["type"]), out["subject"], out)

        def to_disbursement(event: dict[str, Any]) -> None:
            pending.append(event)

        def marketplace_to_disbursement(event: dict[str, Any]) -> None:
            etype = event["type"]
            if etype not in wanted:
                return
            if etype == "merchant.onboarded":
                self._flush_disbursement()  # registration is its own transaction: keep the order
                self._register(event)
            if etype in borrower_only and event["subject"] not in borrowers and not _withheld(event) \
                    and not names_offered_order(event):
                return
            pending.append(event)

        def names_offered_order(event: dict[str, Any]) -> bool:
            """True when the event settles, cancels, refunds or charges back an order of the merchant's
            open offer (the events acceptance's receivables_changed check is made of)."""
            offered = open_offers.get(event["subject"])
            if offered is None:
                return False
            _offer_id, order_ids, expires_at = offered
            data = event.get("data") or {}
            if parse_rfc3339(event["time"]) >= expires_at:
                del open_offers[event["subject"]]  # expired: acceptance refuses it anyway
                return False
            if event["type"] == "settlement.paid":
                paid = data.get("orders")
                return isinstance(paid, list) and any(isinstance(o, dict) and o.get("order_id") in order_ids
                                                      for o in paid)
            return data.get("order_id") in order_ids

        def offers(event: dict[str, Any]) -> None:
            mid, etype, data = event["subject"], event["type"], event.get("data") or {}
            if mid in borrowers:
                open_offers.pop(mid, None)
            elif etype == "loan_offer.created":
                try:
                    expires_at = parse_rfc3339(data["expires_at"])
                    order_ids = frozenset(o for o in data.get("order_ids", ()) if isinstance(o, str))
                except (KeyError, TypeError, ValueError):
                    return  # disbursement refuses such an offer
                if order_ids:
                    open_offers[mid] = (data["offer_id"], order_ids, expires_at)
            elif etype == "loan_offer.withdrawn" and open_offers.get(mid, ("",))[0] == data.get("offer_id"):
                del open_offers[mid]

        def collections(event: dict[str, Any]) -> None:
            data = event["data"]
            self.owed[event["subject"]] = (data["owed"]["amount"], data["withhold_rate_bps"],
                                           frozenset(data.get("financed_order_ids", ())))

        bus.subscribe(topics.MARKETPLACE_EVENTS, marketplace_to_disbursement)
        bus.subscribe(topics.MARKETPLACE_EVENTS, to_underwriter)
        bus.subscribe(topics.LOANS, to_underwriter)
        bus.subscribe(topics.CREDIT_LIMITS, to_disbursement)
        bus.subscribe(topics.LOAN_OFFERS, to_disbursement)
        bus.subscribe(topics.LOAN_OFFERS, offers)
        bus.subscribe(topics.COLLECTIONS, collections)
        bus.watch(self.tally.watch)
        bus.on_idle(self._flush_underwriter)
        bus.on_idle(self._flush_disbursement)

    def _flush_underwriter(self) -> None:
        """The underwriter's consumer takes what arrived as one batch (each merchant scored once per batch)."""
        if not self._to_underwriter:
            return
        batch = self._to_underwriter[:]
        self._to_underwriter.clear()
        out, errors = self.underwriter.handle_batch(batch)
        for event in out:
            self.bus.publish(_topic_of(event["type"]), event["subject"], event)
        for index, exc in errors:  # the rest of the batch applied: as the worker, dead-letter it and go on
            self._consumer_rejected("underwriter", batch[index], exc)

    def _flush_disbursement(self) -> None:
        """Disbursement's consumer commits what it was given in one transaction, then relays its outbox."""
        if self._to_disbursement:
            batch = self._to_disbursement[:]
            self._to_disbursement.clear()
            self._outbox_dirty = True
            from sqlalchemy.exc import DataError, IntegrityError

            from schemas.codec import EventInvalid

            poison = (ValueError, EventInvalid, DataError, IntegrityError)  # what the Kafka consumer dead-letters
            try:
                self.disbursement.handle_many(batch)
            except poison:
                # handle_many kept the events before the one that failed; apply the rest one by one (each exactly
                # once: those already processed are skipped), dead-lettering each that cannot be applied.
                for event in batch:
                    try:
                        self.disbursement.handle(event)
                    except poison as exc:
                        self._consumer_rejected("disbursement", event, exc)

    def _consumer_rejected(self, consumer: str, event: dict[str, Any], exc: Exception) -> None:
        """A marketplace event ingest accepted but a service cannot apply (an order in another currency than the
        merchant's, say: ingest cannot know it): the Kafka services dead-letter such a record and go on, so the
        replay reports it by its line, counts it as rejected and goes on. An event the engine itself produced
        that a service refuses is a defect and stops the run."""
        eid = str(event.get("id"))
        line = self._lines.get(eid)
        if line is None:
            raise RuntimeError(f"{consumer} could not apply {event.get('type')} {eid}: {exc}") from exc
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        issue = {"pointer": "", "message": f"{consumer}: {reason}"}
        for seen_line, seen_id, issues in reversed(self.line_errors):
            if seen_line == line and seen_id == eid:  # the other service refused it too: one line, both reasons
                issues.append(issue)
                return
        self.line_errors.append((line, eid, [issue]))
        self.tally.rejected += 1

    def _register(self, event: dict[str, Any]) -> None:
        mid = event["subject"]
        if mid in self.fleet.merchants:
            return
        merchant = SimulatedMerchant(mid, api_key="mk_" + secrets.token_urlsafe(18))
        merchant.secret = self.disbursement.register_merchant(
            mid, webhook_url=self.fleet.url(mid), api_key=merchant.api_key,
            currency=event["data"].get("currency"))
        self.fleet.merchants[mid] = merchant

    # ----------------------------------------------------------------- marketplace side
    def withhold(self, merchant_id: str, gross: int, fees: int, orders: list[dict[str, Any]]) -> int:
        """The simulated settlement system, per the latest collection instruction: the payouts of
        financed orders go to the loan first, in full; the rest of the payout at the withhold rate."""
        owed, bps, financed = self.owed.get(merchant_id, (0, 0, frozenset()))
        if owed <= 0:
            return 0
        financed_gross = sum(int(o["amount"]["amount"]) for o in orders if o.get("order_id") in financed)
        net = gross - fees
        financed_net = financed_gross * net // gross if gross else 0
        take = financed_net + (net - financed_net) * max(0, min(bps, 10_000)) // 10_000
        return max(0, min(owed, take, net))

    def _fill_withheld(self, event: dict[str, Any]) -> dict[str, Any]:
        """Marketplace files carry withheld 0: the marketplace withholds what collections.v1 asked for."""
        data = event.get("data")
        if event.get("type") != "settlement.paid" or not isinstance(data, dict):
            return event
        try:
            gross, fees = int(data["gross"]["amount"]), int(data["fees"]["amount"])
            already = int(data["withheld"]["amount"])
            orders = [o for o in data.get("orders", []) if isinstance(o, dict)]
            eid = event.get("id")
            # Keyed by id and content: the same payout re-sent (same id, same bytes) must reach ingest as the same
            # event, an exact duplicate, not with what a later instruction would withhold (a conflicting event);
            # one re-sent under its id with other content must reach ingest as the conflict it is.
            key = (eid, json.dumps(event, sort_keys=True, separators=(",", ":"), default=str)) \
                if isinstance(eid, str) else None
            take = self._withheld_by_id.get(key) if key is not None else None
            if take is None:
                take = 0 if already else self.withhold(str(event.get("subject")), gross, fees, orders)
                if key is not None:
                    self._withheld_by_id[key] = take
        except (KeyError, TypeError, ValueError):
            return event  # malformed: ingest rejects it with the precise pointer
        if take <= 0:
            return event
        data = dict(data)
        data["withheld"] = {**data["withheld"], "amount": take}
        data["net"] = {**data["net"], "amount": gross - fees - take}
        return {**event, "data": data}

    # ----------------------------------------------------------------- running
    def feed(self, batch: list[tuple[int, Any]]) -> None:
        """Submit (line number, raw event) pairs through ingest, then let everything downstream run.

        The batch is cut where an hourly tick falls: the events before the tick are submitted (and every
        service has handled them) before the tick runs, so aging, debounced decisions, webhook delivery and
        acceptances at that hour see exactly the events before it, and the marketplace withholds from a
        payout what collections.v1 asked for as of the payout's own time. (Running every tick of a batch
        first let a day's aging precede that day's payouts and filled withheld from instructions older than
        the loans the same batch disbursed.)"""
        start = 0
        last: str | None = None
        for i, (_line, raw) in enumerate(batch):
            t = raw.get("time") if isinstance(raw, dict) else None
            if not isinstance(t, str) or t == last:
                continue  # the same time as the event before: it moved the clock already (or could not)
            last = t
            try:
                at = parse_rfc3339(t)
            except ValueError:
                continue
            if self._horizon is not None and at > self._horizon:
                continue  # future-dated: ingest rejects it against the unmoved clock
            if at > self.now:
                if i > start and self._next_tick is not None and at >= self._next_tick:
                    self._submit(batch[start:i])
                    start = i
                self._advance(at)
        self._submit(batch[start:])

    def _submit(self, batch: list[tuple[int, Any]]) -> None:
        if not batch:
            return
        raws = [self._fill_withheld(raw) if isinstance(raw, dict) else raw for _, raw in batch]
        results = self.ingest.submit(raws, intake="replay", received_at=self.now)
        lines = self._lines
        for (line, _raw), res in zip(batch, results, strict=True):
            if res.status.value == "rejected":
                self.line_errors.append((line, res.event_id or "", [e.to_json() for e in res.errors]))
            elif res.event_id is not None:
                lines.setdefault(res.event_id, line)
        self.events_in += len(batch)
        try:
            self.bus.drain()
        finally:
            lines.clear()

    def _advance(self, at: datetime) -> None:
        if self._next_tick is None:
            self._next_tick = at.replace(minute=0, second=0, microsecond=0) + self.options.webhook_every
        while at >= self._next_tick:
            self.now = self._next_tick
            self.tick()
            self._next_tick += self.options.webhook_every
        self.now = at

    def tick(self) -> None:
        """Hourly by event time: flush debounced decisions, age loans, deliver webhooks, take acceptances."""
        day = self.now.strftime("%Y-%m-%d")
        if day != self._day:
            if self._day is not None:
                self.tally.snapshot(self._day)
            self._day = day
            self.disbursement.age(self.now)
            # As the service's background loop does: pay the overpayment refunds owed to merchants (and re-drive
            # payouts left after an acceptance), so money withheld beyond what was owed goes back the same day.
            self.disbursement.recover(self.now)
            self._outbox_dirty = True
        for out in self.underwriter.flush(self.now):
            self.bus.publish(_topic_of(out["type"]), out["subject"], out)
        self.bus.drain()
        if self._outbox_dirty or day != self._day_dispatched:
            # At least daily even when idle, so webhook retries with backoff still go out.
            self._day_dispatched = day
            self._outbox_dirty = False
            self.disbursement.dispatch_webhooks(self.now, limit=10_000)
            self.bus.drain()
            if self.fleet.to_accept:
                self._outbox_dirty = True
                self._accept_queued()
                self.disbursement.dispatch_webhooks(self.now, limit=10_000)
                self.bus.drain()

    def _accept_queued(self) -> None:
        while self.fleet.to_accept:
            mid, offer_id = self.fleet.to_accept.popleft()
            merchant = self.fleet.merchants[mid]
            self.borrowers.add(mid)
            status, code = self._accept(merchant, offer_id, f"accept-{offer_id}")
            if status not in (200, 201, 202):
                self.tally.refused_accepts[code or str(status)] += 1
            self.bus.drain()

    def _accept(self, merchant: SimulatedMerchant, offer_id: str, idempotency_key: str) -> tuple[int, str | None]:
        """POST /v1/offers/{id}/accept: over the HTTP app, or straight into the application service it
        calls (authenticate the API key, then accept) when the HTTP layer is not what is being run."""
        if self.api is not None:
            resp = self.api.post(f"/v1/offers/{offer_id}/accept", headers={
                "Authorization": f"Bearer {merchant.api_key}", "Idempotency-Key": idempotency_key})
            if resp.status_code in (200, 201, 202):
                return resp.status_code, None
            return resp.status_code, (resp.json().get("error") or {}).get("code")
        from services.disbursement.service import AcceptOffer

        svc = self.disbursement
        merchant_id = svc.authenticate(merchant.api_key)
        if merchant_id is None:
            return 401, "unauthenticated"
        result = svc.accept(AcceptOffer(offer_id, merchant_id, idempotency_key, svc.clock()))
        return result.status_code, result.code

    def finish(self) -> None:
        self.now += timedelta(seconds=1)
        self.tick()
        if self._day is not None:
            self.tally.snapshot(self._day)

    def ledger_balanced(self) -> bool:
        from services.disbursement.service import DisbursementService

        check = getattr(DisbursementService, "ledger_check", None)
        if check is None:
            return sum(self.disbursement.balances().values()) == 0
        return bool(check(self.disbursement))


def _withheld(event: dict[str, Any]) -> bool:
    """A payout the marketplace already withheld from goes to disbursement whoever the merchant is."""
    if event["type"] != "settlement.paid":
        return False
    withheld = (event.get("data") or {}).get("withheld") or {}
    return bool(withheld.get("amount"))


# Same events, same decisions: the underwriter keeps short hashes of the (keyed-hashed) buyer ids, so a key drawn
# per run let a collision under one key and not another move a feature, a PD and a reason code between two runs
# of one file. A fixed key is safe here: buyer hashes live only in this process (no emitted event carries one).
EMBEDDED_BUYER_HASH_KEY = hashlib.sha256(b"floatbridge embedded engine buyer-hash key").hexdigest()


def _accepts_overrides(fn: Callable[..., Any]) -> bool:
    import inspect

    params = inspect.signature(fn).parameters
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _acceptance_client(service: Any) -> Any:
    """The disbursement service's own HTTP app, called in-process (no sockets)."""
    import warnings

    with warnings.catch_warnings():  # starlette's notice about its httpx transport is not the user's concern
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from services.disbursement.adapters.http_api import create_app

    client = TestClient(create_app(service), base_url="http://disbursement.local")
    # Entered once: one event-loop portal for the whole run instead of one per request.
    client.__enter__()
    return client


def _topic_of(event_type: str) -> str:
    if event_type == "credit_limit.updated":
        return topics.CREDIT_LIMITS
    if event_type.startswith("loan_offer."):
        return topics.LOAN_OFFERS
    if event_type == "collection.instruction":
        return topics.COLLECTIONS
    return topics.LOANS


def numbered(lines: Iterable[str | bytes], chunk: int = 1024) -> Iterator[tuple[int, Any]]:
    """(line number, event) for each non-blank line of an NDJSON stream, parsed exactly as ingest parses the
    records it consumes (services.ingest.adapters.jsoncodec.parse_records): a UTF-8 byte order mark is ignored,
    integers of 20 or more digits stay exact, and a line that is not JSON, or is JSON no event may be (the
    same key twice in one object, a number no 64-bit float holds, a lone surrogate), becomes a Malformed item
    naming its line, which ingest rejects (the engine lists it in line_errors) while the rest goes on."""
    from dataclasses import replace

    from services.ingest.adapters.jsoncodec import BOM, parse_records
    from services.ingest.domain.model import Malformed

    numbers: list[int] = []
    records: list[bytes] = []

    def parsed() -> Iterator[tuple[int, Any]]:
        for n, item in zip(numbers, parse_records(records), strict=True):
            if isinstance(item, Malformed):
                item = replace(item, text=item.text[:65536], error=f"line {n}: {item.error}")
            yield n, item
        numbers.clear()
        records.clear()

    for n, line in enumerate(lines, 1):
        data = line if isinstance(line, bytes) else line.encode("utf-8", "surrogatepass")
        if data.startswith(BOM):
            data = data[3:]
        if not data.strip():
            continue
        numbers.append(n)
        records.append(data)
        if len(records) >= chunk:
            yield from parsed()
    yield from parsed()
