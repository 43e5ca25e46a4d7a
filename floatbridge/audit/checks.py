"""The reconciliation rules, as pure functions over a Snapshot (plain rows and events), so they are
unit-tested without a broker or a database. Every rule names what it found and where."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from services.common.timeutil import parse_rfc3339

RECEIVABLES = ("loan_principal_receivable", "fee_receivable")
OWED_BY_MERCHANT = (*RECEIVABLES, "charge_off_loss")  # written off, not yet recovered: still owed
PAID_STATES = frozenset({"disbursed", "repaid", "delinquent", "charged_off"})


@dataclass(frozen=True)
class Discrepancy:
    check: str  # e.g. "ingest.lost", "ledger.unbalanced"
    subject: str  # the event, offer, loan, entry or merchant id concerned
    detail: str


@dataclass
class Snapshot:
    """What the checker read. Topic lists keep topic order (per partition) and any repeats."""

    accepted_ids: set[str] = field(default_factory=set)  # ingest dedupe rows marked done
    pending_ids: set[str] = field(default_factory=set)  # claims never marked done
    topic_event_ids: list[str] = field(default_factory=list)  # marketplace.events.v1, every record
    limit_events: list[dict[str, Any]] = field(default_factory=list)
    offer_events: list[dict[str, Any]] = field(default_factory=list)
    collection_events: list[dict[str, Any]] = field(default_factory=list)
    offers: list[dict[str, Any]] = field(default_factory=list)  # offer_id, merchant_id, state
    loans: list[dict[str, Any]] = field(default_factory=list)  # loan_id, offer_id, merchant_id, state, currency,
    #                                                             principal, principal_due, fee_due, accepted_at
    payouts: list[dict[str, Any]] = field(default_factory=list)  # payout_id, loan_id, amount, currency
    rail_payouts: list[dict[str, Any]] = field(default_factory=list)  # idempotency_key, amount, currency
    journal_lines: list[dict[str, Any]] = field(default_factory=list)  # entry_id, loan_id, merchant_id, account,
    #                                                                     side, amount, currency
    notes: list[str] = field(default_factory=list)  # sources that were missing (topic absent, table absent)


@dataclass
class Report:
    discrepancies: list[Discrepancy]
    counts: dict[str, int]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.discrepancies

    def by_check(self) -> dict[str, int]:
        return dict(Counter(d.check for d in self.discrepancies))

    def to_json(self) -> str:
        return json.dumps({"ok": self.ok, "counts": self.counts, "by_check": self.by_check(), "notes": self.notes,
                           "discrepancies": [asdict(d) for d in self.discrepancies]}, indent=2, sort_keys=True)

    def to_text(self, limit: int = 50) -> str:
        lines = ["floatbridge audit: " + ("OK, no discrepancies" if self.ok else
                                          f"{len(self.discrepancies)} discrepancies")]
        lines += [f"  {k}: {v}" for k, v in sorted(self.counts.items())]
        lines += [f"  note: {n}" for n in self.notes]
        for d in self.discrepancies[:limit]:
            lines.append(f"  [{d.check}] {d.subject}: {d.detail}")
        if len(self.discrepancies) > limit:
            lines.append(f"  ... and {len(self.discrepancies) - limit} more (see --json)")
        return "\n".join(lines)


def check(s: Snapshot) -> Report:
    out: list[Discrepancy] = []
    counts: dict[str, int] = {}
    counts.update(_ingest(s, out))
    counts.update(_offers(s, out))
    counts.update(_ledger(s, out))
    counts.update(_loans(s, out))
    counts.update(_collections(s, out))
    return Report(out, counts, list(s.notes))


def _ingest(s: Snapshot, out: list[Discrepancy]) -> dict[str, int]:
    seen = Counter(s.topic_event_ids)
    for eid in sorted(s.accepted_ids - seen.keys()):
        out.append(Discrepancy("ingest.lost", eid, "accepted by ingest (dedupe row done) but not on the events topic"))
    return {"ingest_accepted": len(s.accepted_ids), "ingest_pending_claims": len(s.pending_ids),
            "topic_records": len(s.topic_event_ids), "topic_distinct_events": len(seen),
            "topic_redelivered": len(s.topic_event_ids) - len(seen),
            "topic_not_marked_done": len(seen.keys() - s.accepted_ids)}


def _distinct(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Drop repeats of the same event id (at-least-once delivery), keeping topic order."""
    seen: set[str] = set()
    kept = []
    for e in events:
        if e.get("id") not in seen:
            seen.add(str(e.get("id")))
            kept.append(e)
    return kept, len(events) - len(kept)


def _offers(s: Snapshot, out: list[Discrepancy]) -> dict[str, int]:
    events, redelivered = _distinct(s.offer_events)
    limits, limits_redelivered = _distinct(s.limit_events)
    created = [e for e in events if e.get("type") == "loan_offer.created"]
    per_offer = Counter(e["data"]["offer_id"] for e in created)
    for oid, n in sorted(per_offer.items()):
        if n > 1:
            out.append(Discrepancy("offers.duplicated", oid, f"loan_offer.created {n} times under different event ids"))
    accepted_at = {ln["offer_id"]: _ts(ln.get("accepted_at")) for ln in s.loans}
    withdrawn = {e["data"]["offer_id"]: _ts(e.get("time")) for e in events if e.get("type") == "loan_offer.withdrawn"}
    open_by_merchant: dict[str, tuple[str, datetime]] = {}
    superseded = 0
    for e in created:
        mid, oid, at = str(e.get("subject")), e["data"]["offer_id"], _ts(e.get("time"))
        prev = open_by_merchant.get(mid)
        if prev and prev[0] != oid and at is not None and at < prev[1]:
            # A fresh offer replaces the open one (DESIGN: one open offer per merchant): the old one is
            # superseded from that moment, so it must not have been accepted after it.
            superseded += 1
            taken = accepted_at.get(prev[0])
            if taken is not None and taken > at:
                out.append(Discrepancy("offers.two_open", mid, f"offer {prev[0]} was accepted at {taken.isoformat()} "
                                       f"after offer {oid} superseded it at {e.get('time')}"))
        closes = [t for t in (_ts(e["data"].get("expires_at")), withdrawn.get(oid), accepted_at.get(oid)) if t]
        if closes:
            open_by_merchant[mid] = (oid, min(closes))
    return {"offers_created": len(created), "offers_superseded": superseded, "offers_redelivered": redelivered,
            "limit_updates": len(limits),
            "limits_redelivered": limits_redelivered}


def _ledger(s: Snapshot, out: list[Discrepancy]) -> dict[str, int]:
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for ln in s.journal_lines:
        totals[(ln["entry_id"], ln["currency"])] += _signed(ln)
    for (entry, cur), diff in sorted(totals.items()):
        if diff:
            out.append(Discrepancy("ledger.unbalanced", entry, f"{cur}: debits - credits = {diff}"))
    return {"journal_entries": len({ln["entry_id"] for ln in s.journal_lines}), "journal_lines": len(s.journal_lines)}


def _signed(line: dict[str, Any]) -> int:
    return int(line["amount"]) if line["side"] == "D" else -int(line["amount"])


def _receivables(s: Snapshot, key: str, accounts: tuple[str, ...] = RECEIVABLES) -> dict[str, int]:
    bal: dict[str, int] = defaultdict(int)
    for ln in s.journal_lines:
        if ln["account"] in accounts and ln.get(key):
            bal[ln[key]] += _signed(ln)
    return bal


def _loans(s: Snapshot, out: list[Discrepancy]) -> dict[str, int]:
    offers = {o["offer_id"]: o for o in s.offers}
    payouts: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in s.payouts:
        payouts[p["loan_id"]].append(p)
    rail = Counter(p["idempotency_key"] for p in s.rail_payouts)
    receivable = _receivables(s, "loan_id")
    for loan in s.loans:
        lid = loan["loan_id"]
        offer = offers.get(loan["offer_id"])
        if offer is None or offer["state"] != "accepted" or offer["merchant_id"] != loan["merchant_id"]:
            state = "missing" if offer is None else f"{offer['state']}, merchant {offer['merchant_id']}"
            out.append(Discrepancy("loans.without_accepted_offer", lid, f"offer {loan['offer_id']}: {state}"))
        paid = payouts.get(lid, [])
        if loan["state"] in PAID_STATES and len(paid) != 1:
            out.append(Discrepancy("loans.payouts", lid, f"state {loan['state']} with {len(paid)} payouts (want 1)"))
        elif loan["state"] == "accepted":
            out.append(Discrepancy("loans.not_paid_out", lid, "accepted but not yet disbursed"))
        if rail.get(lid, 0) > 1:
            out.append(Discrepancy("loans.paid_twice", lid, f"the payout rail paid {rail[lid]} times"))
        for p in paid:
            if int(p["amount"]) != int(loan["principal"]) or p["currency"] != loan["currency"]:
                out.append(Discrepancy("loans.payout_amount", lid, f"payout {p['amount']} {p['currency']} != "
                                       f"principal {loan['principal']} {loan['currency']}"))
        owed = int(loan["principal_due"]) + int(loan["fee_due"])
        if loan["state"] != "charged_off" and owed != receivable.get(lid, 0):
            out.append(Discrepancy("loans.outstanding_vs_ledger", lid, f"loan says {owed} outstanding, ledger "
                                   f"receivables {receivable.get(lid, 0)}"))
    return {"loans": len(s.loans), "payouts": len(s.payouts), "rail_payouts": len(s.rail_payouts),
            "offers_stored": len(s.offers)}


def _collections(s: Snapshot, out: list[Discrepancy]) -> dict[str, int]:
    events, _ = _distinct(s.collection_events)
    latest: dict[str, int] = {}
    for e in events:
        if e.get("type") == "collection.instruction":
            latest[str(e.get("subject"))] = int(e["data"]["owed"]["amount"])
    # A charged-off loan is still owed: the instruction asks for the receivables plus the unrecovered loss.
    ledger = _receivables(s, "merchant_id", OWED_BY_MERCHANT)
    for mid in sorted(set(latest) | {m for m, v in ledger.items() if v}):
        said, booked = latest.get(mid, 0), ledger.get(mid, 0)
        if said != booked:
            out.append(Discrepancy("collections.owed_vs_ledger", mid, f"latest collection.instruction owes {said}, "
                                   f"ledger receivables and unrecovered write-offs {booked}"))
    return {"collection_instructions": len(events), "merchants_owing": sum(1 for v in ledger.values() if v)}


def _ts(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    try:
        return parse_rfc3339(str(value))
    except ValueError:
        return None
