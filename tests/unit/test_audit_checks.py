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


# --- soak run isolation: each soak reconciles only its own traffic -------------------------------------------

BASE_URL = "postgresql+psycopg2://floatbridge:floatbridge@127.0.0.1:55432/floatbridge"


def test_two_soak_runs_get_disjoint_event_ids_schemas_and_topic_prefixes() -> None:
    from datetime import UTC, datetime

    from floatbridge.soak import onboarding, order_event, plan_run

    a, b = plan_run(BASE_URL), plan_run(BASE_URL)
    assert a.run_id != b.run_id and a.schema != b.schema and a.topic_prefix != b.topic_prefix
    now = datetime(2026, 1, 1, tzinfo=UTC)
    ids_a = {e["id"] for e in onboarding(a, 5, now)} | {order_event(a, i, 5, now)["id"] for i in range(200)}
    ids_b = {e["id"] for e in onboarding(b, 5, now)} | {order_event(b, i, 5, now)["id"] for i in range(200)}
    assert len(ids_a) == len(ids_b) == 205  # unique within a run
    assert not ids_a & ids_b  # and across runs: an earlier run's ids can never come back "duplicate"
    assert all(i.startswith(a.run_id + "-") for i in ids_a)
    assert {order_event(a, i, 5, now)["subject"] for i in range(200)} == {f"soak-m{k}" for k in range(5)}  # bounded


def test_soak_database_url_pins_the_runs_own_schema_and_strips_back_to_the_base() -> None:
    from sqlalchemy.engine import make_url

    from floatbridge.soak import base_url_of, plan_run

    run = plan_run(BASE_URL, "soak20260101000000abc123")
    assert run.schema == "soak_soak20260101000000abc123" and len(run.schema) <= 63
    assert run.topic_prefix == "soak-soak20260101000000abc123."
    assert make_url(run.database_url).query["options"] == f"-csearch_path={run.schema}"
    assert base_url_of(run.database_url) == BASE_URL
    with pytest.raises(ValueError):
        plan_run(BASE_URL, 'x"; DROP SCHEMA public; --')


def test_audit_of_an_isolated_run_is_clean_while_a_shared_dedupe_table_shows_false_losses() -> None:
    """The defect the isolation fixes: the earlier run's accepted ids in a shared dedupe table are not on
    this run's topic, so the checker (rightly, for what it was given) calls them lost."""
    earlier = {f"soak-{i}" for i in range(100)}
    this_run = {f"soak20260101000000abc123-o{i}" for i in range(100)}
    isolated = Snapshot(accepted_ids=set(this_run), topic_event_ids=sorted(this_run))
    assert check(isolated).ok
    shared = Snapshot(accepted_ids=earlier | this_run, topic_event_ids=sorted(this_run))
    assert check(shared).by_check() == {"ingest.lost": 100}


def test_soak_report_separates_warm_up_growth_from_steady_state_and_ignores_failed_lag_samples() -> None:
    from floatbridge.soak import SoakResult, _percentile

    r = SoakResult(run_id="r")
    for k in range(20):  # 200 s: RSS climbs 5 MiB per sample for 100 s, then stays flat
        t = 10.0 * (k + 1)
        r.samples.append({"t": t, "lag": -1 if k == 3 else k * 10, "merchants": min(50, 10 * k),
                          "rss_mib": {"underwriter-0": 100.0 + 5 * min(k, 9), "ingest": 80.0}})
    whole, steady = r.slopes_mib_per_min(), r.slopes_mib_per_min(r.half())
    assert whole["underwriter-0"] > 10.0
    assert steady["underwriter-0"] == 0.0 and steady["ingest"] == 0.0
    sm = r.summary()
    assert sm["lag_max"] == 190 and -1 not in r.lags() and len(r.lags()) == 19  # a failed sample is left out
    assert _percentile(list(range(1, 101)), 0.95) == 95 and _percentile([7], 0.95) == 7
    assert sm["merchants_in_state_max"] == sm["merchants_in_state_last"] == 50
    assert sm["rss_mib"]["underwriter-0"] == {"first": 100.0, "mid": 145.0, "last": 145.0}
    assert "second half" in r.to_text()


def test_a_soak_with_a_clean_audit_still_fails_when_a_consumer_died_or_the_lag_never_drained() -> None:
    from floatbridge.soak import SoakResult

    r = SoakResult(run_id="r", sent=10, accepted=10, audit_ok=True, drained_after_s=4.0)
    assert r.ok
    r.exited = {"underwriter-0": 1}
    assert not r.ok and "underwriter-0" in r.to_text()
    r.exited, r.drained_after_s, r.lag_final = {}, None, 247_642
    assert not r.ok and "NOT drained" in r.to_text()
