"""The consistency checker's rules on hand-built snapshots: a clean run passes, each planted fault is named."""

from __future__ import annotations

import json
from typing import Any

import pytest

from floatbridge.audit.checks import Snapshot, check

pytestmark = pytest.mark.unit


def _line(entry: str, loan: str, mid: str, account: str, side: str, amount: int) -> dict[str, Any]:
    return {"entry_id": entry, "loan_id": loan, "merchant_id": mid, "account": account, "side": side,
            "amount": amount, "currency": "BRL"}


def _offer_event(eid: str, mid: str, oid: str, at: str, expires: str, etype: str = "loan_offer.created") -> dict[str, Any]:
    return {"id": eid, "type": etype, "subject": mid, "time": at, "data": {"offer_id": oid, "expires_at": expires}}


def clean() -> Snapshot:
    s = Snapshot(accepted_ids={"e1", "e2"}, topic_event_ids=["e1", "e2", "e2"])
    s.offer_events = [_offer_event("x1", "m1", "o1", "2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z"),
                      _offer_event("x1", "m1", "o1", "2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z"),
                      _offer_event("x2", "m1", "o2", "2025-01-03T00:00:00Z", "2025-01-04T00:00:00Z")]
    s.offers = [{"offer_id": "o1", "merchant_id": "m1", "state": "expired"},
                {"offer_id": "o2", "merchant_id": "m1", "state": "accepted"}]
    s.loans = [{"loan_id": "l2", "offer_id": "o2", "merchant_id": "m1", "state": "disbursed", "currency": "BRL",
                "principal": 1000, "principal_due": 1000, "fee_due": 30, "accepted_at": "2025-01-03T01:00:00Z"}]
    s.payouts = [{"payout_id": "p1", "loan_id": "l2", "amount": 1000, "currency": "BRL"}]
    s.rail_payouts = [{"idempotency_key": "l2", "amount": 1000, "currency": "BRL"}]
    s.journal_lines = [_line("d:l2", "l2", "m1", "loan_principal_receivable", "D", 1000),
                       _line("d:l2", "l2", "m1", "fee_receivable", "D", 30),
                       _line("d:l2", "l2", "m1", "funding_cash", "C", 1000),
                       _line("d:l2", "l2", "m1", "fee_income", "C", 30)]
    s.collection_events = [{"id": "c1", "type": "collection.instruction", "subject": "m1",
                            "data": {"owed": {"amount": 1030, "currency": "BRL"}}}]
    return s


def test_consistent_run_passes_and_counts_redeliveries_as_such() -> None:
    report = check(clean())
    assert report.ok, report.to_text()
    assert report.counts["topic_redelivered"] == 1
    assert report.counts["offers_redelivered"] == 1
    assert json.loads(report.to_json())["ok"] is True


def test_accepted_event_missing_from_topic_is_reported_lost() -> None:
    s = clean()
    s.accepted_ids.add("e3")
    report = check(s)
    assert [(d.check, d.subject) for d in report.discrepancies] == [("ingest.lost", "e3")]


def test_same_offer_id_under_two_event_ids_is_a_duplicated_offer() -> None:
    s = clean()
    s.offer_events.append(_offer_event("x9", "m1", "o2", "2025-01-03T00:00:00Z", "2025-01-04T00:00:00Z"))
    assert "offers.duplicated" in check(s).by_check()


def test_fresh_offer_supersedes_the_open_one_and_counts_as_such() -> None:
    s = clean()
    s.offer_events.insert(2, _offer_event("x3", "m1", "o3", "2025-01-01T12:00:00Z", "2025-01-02T12:00:00Z"))
    report = check(s)
    assert report.ok, report.to_text()
    assert report.counts["offers_superseded"] == 1


def test_superseded_offer_accepted_after_its_replacement_is_reported() -> None:
    s = clean()
    # o2 (open 01-03 .. 01-04) is superseded by o3 at 01-03T00:30, but o2 was accepted at 01-03T01:00.
    s.offer_events.append(_offer_event("x3", "m1", "o3", "2025-01-03T00:30:00Z", "2025-01-04T00:30:00Z"))
    found = check(s).by_check()
    assert found.get("offers.two_open") == 1


def test_withdrawn_offer_no_longer_counts_as_open() -> None:
    s = clean()
    s.offer_events.insert(2, _offer_event("w1", "m1", "o1", "2025-01-01T06:00:00Z", "", "loan_offer.withdrawn"))
    s.offer_events.insert(3, _offer_event("x3", "m1", "o3", "2025-01-01T12:00:00Z", "2025-01-02T12:00:00Z"))
    assert check(s).ok


def test_unbalanced_entry_double_payout_and_orphan_loan_are_each_named() -> None:
    s = clean()
    s.journal_lines.append(_line("bad", "l2", "m1", "funding_cash", "D", 5))
    s.payouts.append({"payout_id": "p2", "loan_id": "l2", "amount": 1000, "currency": "BRL"})
    s.rail_payouts.append({"idempotency_key": "l2", "amount": 1000, "currency": "BRL"})
    s.loans.append({"loan_id": "l9", "offer_id": "o1", "merchant_id": "m1", "state": "accepted", "currency": "BRL",
                    "principal": 10, "principal_due": 10, "fee_due": 0, "accepted_at": None})
    found = check(s).by_check()
    assert found["ledger.unbalanced"] == 1
    assert found["loans.payouts"] == 1
    assert found["loans.paid_twice"] == 1
    assert found["loans.without_accepted_offer"] == 1
    assert found["loans.not_paid_out"] == 1


def test_payout_amount_and_outstanding_and_collections_disagreeing_with_ledger() -> None:
    s = clean()
    s.payouts[0]["amount"] = 999
    s.loans[0]["principal_due"] = 900
    s.collection_events.append({"id": "c2", "type": "collection.instruction", "subject": "m1",
                                "data": {"owed": {"amount": 0, "currency": "BRL"}}})
    found = check(s).by_check()
    assert found == {"loans.payout_amount": 1, "loans.outstanding_vs_ledger": 1, "collections.owed_vs_ledger": 1}
    assert "collections.owed_vs_ledger" in check(s).to_text()
