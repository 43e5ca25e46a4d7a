"""The contract checker itself: a real replay passes it, and each rule catches the record that breaks it."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from floatbridge.embedded import contract
from floatbridge.embedded.runner import replay_file
from tests.scenario import _ev, healthy_merchant, settlement

pytestmark = pytest.mark.unit

END = datetime(2025, 3, 1, tzinfo=UTC)
Run = tuple[list[dict[str, Any]], list[dict[str, Any]]]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Three healthy merchants borrow; half their last receivables settle, the rest never do: repayments, repaid
    loans, delinquency and charge-offs once the clock runs on (a merchant onboarded 130 days later)."""
    tmp = tmp_path_factory.mktemp("contract")
    histories = [healthy_merchant(f"m{i}", END, days=50, seed=i) for i in range(3)]
    events = sorted((e for h in histories for e in h.events), key=lambda e: e["time"])
    later = END + timedelta(days=4)
    events += [settlement(h.merchant_id, later, h.open_orders[: len(h.open_orders) // 2], f"{h.merchant_id}-fin")
               for h in histories]
    events.append(_ev("merchant.onboarded", "m-clock", END + timedelta(days=130),
                      {"category": "home", "country": "BR", "currency": "BRL"}, "m-clock-onb"))
    src = tmp / "in.ndjson"
    src.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    replay_file(src, tmp / "out", accept="all", progress=False)
    emitted = [json.loads(x) for x in (tmp / "out" / "emitted.ndjson").read_text().splitlines()]
    types = {e["type"] for e in emitted}
    assert {"loan_offer.created", "loan.disbursed", "loan.repayment_applied", "loan.repaid", "loan.delinquent",
            "loan.charged_off", "collection.instruction"} <= types
    return events, emitted


def test_a_replay_of_healthy_and_defaulting_merchants_keeps_the_contract(run: Run) -> None:
    events, emitted = run
    assert contract.check(events, emitted) == []


def _first(emitted: list[dict[str, Any]], etype: str, nth: int = 0) -> int:
    return [i for i, e in enumerate(emitted) if e["type"] == etype][nth]


def _accepted_offer(events: list[dict[str, Any]], emitted: list[dict[str, Any]]) -> tuple[dict[str, Any], datetime, int]:
    """The first accepted offer, its time, and the input position of the event that triggered it."""
    accepted = emitted[_first(emitted, "loan_offer.accepted")]
    offer = next(e for e in emitted if e["type"] == "loan_offer.created"
                 and e["data"]["offer_id"] == accepted["data"]["offer_id"])
    at = datetime.fromisoformat(offer["time"].replace("Z", "+00:00"))
    trigger = next(i for i, e in enumerate(events) if e["id"] == offer["data"]["trigger_event_id"])
    return offer, at, trigger


def _rules(events: list[dict[str, Any]], emitted: list[dict[str, Any]], **terms: Any) -> set[str]:
    return {v.rule for v in contract.check(events, emitted, contract.Terms(**terms) if terms else None)}


def _limit_before_first_offer(em: list[dict[str, Any]]) -> dict[str, Any]:
    i = _first(em, "loan_offer.created")
    return next(e for e in reversed(em[:i]) if e["type"] == "credit_limit.updated" and e["subject"] == em[i]["subject"])


def _offer_above_available(em: list[dict[str, Any]]) -> None:
    em[_first(em, "loan_offer.created")]["data"]["amount"]["amount"] = \
        _limit_before_first_offer(em)["data"]["available"]["amount"] + 1


def _set(path: str, value: Any, etype: str, nth: int = 0) -> Callable[[list[dict[str, Any]]], None]:
    def tamper(em: list[dict[str, Any]]) -> None:
        *keys, last = path.split(".")
        node = em[_first(em, etype, nth)]["data"]
        for k in keys:
            node = node[k]
        node[last] = value(node[last]) if callable(value) else value
    return tamper


def _repeat(etype: str) -> Callable[[list[dict[str, Any]]], None]:
    def tamper(em: list[dict[str, Any]]) -> None:
        em.append(copy.deepcopy(em[_first(em, etype)]))
    return tamper


def _offer_after_delinquency(em: list[dict[str, Any]]) -> None:
    late = em[_first(em, "loan.delinquent")]
    offer = copy.deepcopy(next(e for e in em if e["type"] == "loan_offer.created" and e["subject"] == late["subject"]))
    offer["id"], offer["data"]["offer_id"] = "forged", "forged-offer"
    em.insert(_first(em, "loan.delinquent") + 1, offer)


def _limit_raised_while_delinquent(em: list[dict[str, Any]]) -> None:
    i = _first(em, "loan.delinquent")
    mid = em[i]["subject"]
    limit = copy.deepcopy(next(e for e in reversed(em[:i]) if e["type"] == "credit_limit.updated"
                               and e["subject"] == mid))
    limit["id"] = "forged-limit"
    limit["data"]["limit"]["amount"] += 1_000
    em.insert(i + 1, limit)


def _offer_on_a_financed_order(em: list[dict[str, Any]]) -> None:
    """A second offer, right after the first loan is disbursed, naming one of that loan's orders."""
    i = _first(em, "loan.disbursed")
    offer = next(e for e in em if e["type"] == "loan_offer.created" and e["data"]["offer_id"] == em[i]["data"]["offer_id"])
    again = copy.deepcopy(offer)
    again["id"], again["data"]["offer_id"] = "forged-again", "forged-again-offer"
    em.insert(i + 1, again)


def _withdrawal_without_reason(em: list[dict[str, Any]]) -> None:
    i = _first(em, "loan_offer.created")
    em.insert(i + 1, {**copy.deepcopy(em[i]), "id": "forged-withdrawal", "type": "loan_offer.withdrawn",
                      "topic": "loan.offers.v1", "data": {**copy.deepcopy(em[i]["data"]), "reasons": []}})


def _decision_dated_before_the_merchant(em: list[dict[str, Any]]) -> None:
    em[_first(em, "credit_limit.updated")]["time"] = "2020-01-01T00:00:00Z"


def _offer_in_the_first_days(em: list[dict[str, Any]]) -> None:
    """The first offer moved to two days after the merchant's first event (all its dates with it)."""
    i = _first(em, "loan_offer.created")
    offer = em[i]
    at = datetime.fromisoformat(offer["time"].replace("Z", "+00:00"))
    shift = at - (END - timedelta(days=48))
    for key in ("expires_at", "due_at"):
        offer["data"][key] = (datetime.fromisoformat(offer["data"][key].replace("Z", "+00:00")) - shift).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
    offer["time"] = (at - shift).strftime("%Y-%m-%dT%H:%M:%SZ")


TAMPERINGS: dict[str, Callable[[list[dict[str, Any]]], None]] = {
    "offer.order_financed": _offer_on_a_financed_order,
    "offer.closed_without_reason": _withdrawal_without_reason,
    "decision.before_first_event": _decision_dated_before_the_merchant,
    "offer.tenure": _offer_in_the_first_days,
    "emitted.topic": lambda em: em[_first(em, "loan.repaid")].update(topic="collections.v1"),
    "emitted.fields": lambda em: em[_first(em, "loan_offer.accepted")]["data"].pop("accepted_at"),
    "offer.amount_above_orders": _set("order_ids", lambda ids: ids[:1], "loan_offer.created"),
    "repayment.above_payout": _set("amount.amount", lambda x: 10**9, "loan.repayment_applied"),
    "offer.amount_above_available": _offer_above_available,
    "offer.fee": _set("fee.amount", lambda x: x + 1, "loan_offer.created"),
    "offer.expires_at": _set("expires_at", "2030-01-01T00:00:00Z", "loan_offer.created"),
    "offer.due_at": _set("due_at", "2030-01-01T00:00:00Z", "loan_offer.created"),
    "offer.apr": _set("apr", 0.21, "loan_offer.created"),
    "offer.order_unknown": _set("order_ids", lambda ids: [*ids, "never-placed"], "loan_offer.created"),
    "offer.order_ids": _set("order_ids", [], "loan_offer.created"),
    "offer.while_delinquent": _offer_after_delinquency,
    "limit.raised_while_delinquent": _limit_raised_while_delinquent,
    "limit.available": _set("available.amount", lambda x: 10**9, "credit_limit.updated", 5),
    "limit.merchant_cap": _set("limit.amount", lambda x: 10**9, "credit_limit.updated", 5),
    "offer.amount": _set("amount.amount", 1, "loan_offer.created"),
    "offer.amount_above_receivables": lambda em: _limit_before_first_offer(em)["data"].update(advance_rate_bps=1),
    "decision.pd": _set("pd", 1.5, "credit_limit.updated"),
    "decision.model_version": _set("model_version", "", "loan_offer.created"),
    "decision.reasons": _set("reasons", [{"code": "X"}], "credit_limit.updated"),
    "decision.trigger": _set("trigger_event_id", "m-clock-onb", "credit_limit.updated"),
    "money": _set("fee", {"amount": 1.5, "currency": "BRL"}, "loan.disbursed"),
    "loan.terms": _set("principal.amount", lambda x: x + 1, "loan.disbursed"),
    "loan.twice": _repeat("loan.disbursed"),
    "accept.twice": _repeat("loan_offer.accepted"),
    "emitted.duplicate_id": _repeat("loan.repaid"),
    "loan.repaid_twice": _repeat("loan.repaid"),
    "repayment.remaining": _set("remaining.amount", lambda x: x + 7, "loan.repayment_applied"),
    "repayment.settlement": _set("settlement_id", "someone-elses-payout", "loan.repayment_applied"),
    "collection.owed": _set("owed.amount", lambda x: x + 1, "collection.instruction"),
    "delinquent.dpd": _set("days_past_due", lambda x: x + 1, "loan.delinquent"),
    "delinquent.bucket": _set("bucket", "31-60", "loan.delinquent"),
    "loan.charged_off_amount": _set("amount.amount", lambda x: x + 1, "loan.charged_off"),
}


@pytest.mark.parametrize("rule", sorted(TAMPERINGS))
def test_the_checker_names_the_rule_a_tampered_emitted_stream_breaks(run: Run, rule: str) -> None:
    events, emitted = run
    tampered = copy.deepcopy(emitted)
    TAMPERINGS[rule](tampered)
    assert rule in _rules(events, tampered)


def test_offers_made_with_the_kill_switch_on_break_the_contract(run: Run) -> None:
    events, emitted = run
    assert "offer.kill_switch" in _rules(events, emitted, kill_switch=True)


def test_an_offer_to_a_suspended_merchant_or_on_a_settled_order_breaks_the_contract(run: Run) -> None:
    events, emitted = run
    offer = emitted[_first(emitted, "loan_offer.created")]
    mid, at = offer["subject"], datetime.fromisoformat(offer["time"].replace("Z", "+00:00"))
    trigger = next(i for i, e in enumerate(events) if e["id"] == offer["data"]["trigger_event_id"])
    order = offer["data"]["order_ids"][0]
    before = at - timedelta(minutes=1)
    suspended = _ev("merchant.updated", mid, before, {"status": "suspended"}, "susp")
    paid_out = settlement(mid, before, [(order, 1)], "early-payout")
    assert "offer.merchant_not_active" in _rules([*events[:trigger], suspended, *events[trigger:]], emitted)
    assert "offer.order_closed" in _rules([*events[:trigger], paid_out, *events[trigger:]], emitted)
    # Arriving after the decision's trigger, the engine could not have known: no violation.
    assert "offer.order_closed" not in _rules([*events, paid_out], emitted)


def test_a_loan_left_unpaid_long_past_due_without_a_charge_off_breaks_the_contract(run: Run) -> None:
    events, emitted = run
    kept = [e for e in emitted if e["type"] != "loan.charged_off"]
    assert "loan.not_charged_off" in _rules(events, kept)


def test_an_acceptance_after_a_financed_order_was_paid_out_breaks_the_contract(run: Run) -> None:
    events, emitted = run
    offer, at, trigger = _accepted_offer(events, emitted)
    paid_out = settlement(offer["subject"], at + timedelta(seconds=1), [(offer["data"]["order_ids"][0], 1)], "po")
    rules = _rules([*events[:trigger + 1], paid_out, *events[trigger + 1:]], emitted)
    assert "accept.order_closed" in rules and "offer.order_closed" not in rules


def test_an_offer_on_an_order_delivered_without_a_shipping_event_keeps_the_contract(run: Run) -> None:
    events, emitted = run
    offer = emitted[_first(emitted, "loan_offer.created")]
    order = offer["data"]["order_ids"][0]

    def delivered_instead(e: dict[str, Any]) -> dict[str, Any]:
        if e["type"] == "order.shipped" and e["data"].get("order_id") == order:
            return {**e, "type": "order.delivered", "dataschema": e["dataschema"].replace("shipped", "delivered"),
                    "data": {"order_id": order}}
        return e

    assert sum(e["type"] == "order.shipped" and e["data"].get("order_id") == order for e in events) >= 1
    assert "offer.order_not_paid_shipped" not in _rules([delivered_instead(e) for e in events], emitted)
    # Neither shipped nor delivered by the offer: still a violation.
    unshipped = [e for e in events
                 if not (e["type"] in ("order.shipped", "order.delivered") and e["data"].get("order_id") == order)]
    assert "offer.order_not_paid_shipped" in _rules(unshipped, emitted)


def test_a_refund_re_sent_under_its_id_with_another_amount_corrects_it_and_does_not_add_up_to_a_full_refund(
        run: Run) -> None:
    # Found by generated streams: a refund of 47% re-sent as 61% (same refund_id) was summed to 108% and the
    # checker called the financed order fully refunded; the underwriter (rightly) counts the largest of the two.
    events, emitted = run
    offer = emitted[_first(emitted, "loan_offer.created")]
    mid, order = offer["subject"], offer["data"]["order_ids"][0]
    amount = next(e["data"]["amount"]["amount"] for e in events
                  if e["type"] == "order.paid" and e["data"]["order_id"] == order)
    at = datetime.fromisoformat(offer["time"].replace("Z", "+00:00")) - timedelta(minutes=5)
    trigger = next(i for i, e in enumerate(events) if e["id"] == offer["data"]["trigger_event_id"])

    def refund(eid: str, refund_id: str, part: int) -> dict[str, Any]:
        return _ev("order.refunded", mid, at, {"order_id": order, "refund_id": refund_id, "amount": {
            "amount": part, "currency": "BRL"}}, eid)

    part = amount * 6 // 10
    resent = [refund("r1", "rf-1", part), refund("r1-again", "rf-1", part + 1)]
    two = [refund("r1", "rf-1", part), refund("r2", "rf-2", part)]
    assert "offer.order_closed" not in _rules([*events[:trigger], *resent, *events[trigger:]], emitted)
    assert "offer.order_closed" in _rules([*events[:trigger], *two, *events[trigger:]], emitted)


def test_an_acceptance_from_a_merchant_suspended_after_the_offer_breaks_the_contract(run: Run) -> None:
    events, emitted = run
    offer, at, trigger = _accepted_offer(events, emitted)
    suspended = _ev("merchant.updated", offer["subject"], at + timedelta(seconds=1), {"status": "suspended"}, "susp")
    found = {(v.rule, v.subject) for v in contract.check([*events[:trigger + 1], suspended, *events[trigger + 1:]],
                                                         emitted)}
    oid = offer["data"]["offer_id"]
    assert ("accept.merchant_not_active", oid) in found and ("offer.merchant_not_active", oid) not in found
    # Arriving only at the end of the file, after the acceptance: the engine could not have known.
    assert "accept.merchant_not_active" not in _rules([*events, suspended], emitted)


def test_an_offer_made_on_a_repayment_is_judged_on_what_had_arrived_by_then_not_on_the_whole_file(run: Run) -> None:
    # Found by generated streams: a merchant's "closed" arrived late (after later-dated events); an offer made when
    # a repayment (a loans.v1 trigger) lifted the limit was taken to have known every input, even ones still to come.
    events, emitted = run
    inputs = {e["id"] for e in events}
    offer = next(e for e in emitted if e["type"] == "loan_offer.created" and e["data"]["trigger_event_id"] not in inputs)
    at = datetime.fromisoformat(offer["time"].replace("Z", "+00:00"))
    closed = _ev("merchant.updated", offer["subject"], at - timedelta(minutes=1), {"status": "closed"}, "closed")
    oid = offer["data"]["offer_id"]
    arrived = next(i for i, e in enumerate(events) if e["time"] >= offer["time"])
    assert ("offer.merchant_not_active", oid) in {
        (v.rule, v.subject) for v in contract.check([*events[:arrived], closed, *events[arrived:]], emitted)}
    assert ("offer.merchant_not_active", oid) not in {(v.rule, v.subject) for v in contract.check([*events, closed],
                                                                                                   emitted)}


def test_an_offer_is_judged_on_its_whole_batch_which_may_hold_events_after_its_trigger_within_the_hour(
        run: Run) -> None:
    # Found by generated streams: a reactivation (dated 14:00) arrived right after a chargeback dated 14:20; the
    # underwriter scored the merchant once for the batch holding both and named the latest event (14:20) as trigger.
    events, emitted = run
    inputs = {e["id"] for e in events}
    offer = next(e for e in emitted if e["type"] == "loan_offer.created" and e["data"]["trigger_event_id"] in inputs)
    oid, at = offer["data"]["offer_id"], datetime.fromisoformat(offer["time"].replace("Z", "+00:00"))
    trigger = next(i for i, e in enumerate(events) if e["id"] == offer["data"]["trigger_event_id"])
    suspended = _ev("merchant.updated", offer["subject"], at - timedelta(days=2), {"status": "suspended"}, "s1")
    active = _ev("merchant.updated", offer["subject"], at - timedelta(seconds=1), {"status": "active"}, "s2")
    same_batch = [*events[:trigger], suspended, events[trigger], active, *events[trigger + 1:]]
    found = {(v.rule, v.subject) for v in contract.check(same_batch, emitted)}
    assert ("offer.merchant_not_active", oid) not in found
    # The reactivation arriving an hour of event time later could not have been in the batch: a violation.
    later = next(i for i, e in enumerate(events) if e["time"] > (at + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    after_tick = [*events[:trigger], suspended, *events[trigger:later], active, *events[later:]]
    assert ("offer.merchant_not_active", oid) in {(v.rule, v.subject) for v in contract.check(after_tick, emitted)}
