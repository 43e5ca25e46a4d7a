"""A marketplace producing straight to marketplace.events.v1 (past ingest): both consumers check each record
against the contract ingest checks, dead-letter a refused one with every error, and apply a valid one as before."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from schemas import codec, contract_check, dead_letter, topics
from services.disbursement.adapters import kafka as disbursement_kafka
from services.underwriter.adapters.faust_app import process_batch
from services.underwriter.adapters.metrics import UnderwriterMetrics
from services.underwriter.bootstrap import bootstrap
from services.underwriter.settings import load
from services.underwriter.synthetic import Profile, history
from tests.unit.disbursement_helpers import T0, service_env, settlement

pytestmark = pytest.mark.unit

TOPIC = "p5." + topics.MARKETPLACE_EVENTS
WHEN = "2025-01-02T10:00:00Z"
RAW_BUYER = "ana.souza@example.com"


def _money(amount: Any, currency: str = "BRL") -> dict[str, Any]:
    return {"amount": amount, "currency": currency}


def _placed(**data: Any) -> dict[str, Any]:
    body = {"order_id": "o-1", "buyer_id": "bh_" + "0" * 64, "amount": _money(5_000), **data}
    return codec.new_event("order.placed", "m-s", body, WHEN, "mp", id="ev-1")


def _settled(gross: int = 10_000, fees: int = 300, withheld: int = 0, net: int = 9_700,
             fee_currency: str = "BRL") -> dict[str, Any]:
    return codec.new_event("settlement.paid", "m-s", {
        "settlement_id": "s-1", "gross": _money(gross), "fees": _money(fees, fee_currency),
        "withheld": _money(withheld), "net": _money(net), "orders": [{"order_id": "o-1", "amount": _money(5_000)}]},
        WHEN, "mp", id="ev-2")


def _with(event: dict[str, Any], **envelope: Any) -> dict[str, Any]:
    out = copy.deepcopy(event)
    for k, v in envelope.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def _without_order_id() -> dict[str, Any]:
    ev = _placed()
    del ev["data"]["order_id"]
    return ev


# name -> (event, Kafka key or None for "no key", the pointer of the error the dead letter must list)
CASES: dict[str, tuple[Callable[[], dict[str, Any]], Any, str]] = {
    "float amount": (lambda: _placed(amount=_money(12.5)), b"m-s", "/data/amount/amount"),
    "negative amount": (lambda: _placed(amount=_money(-1)), b"m-s", "/data/amount/amount"),
    "huge amount": (lambda: _placed(amount=_money(10**16)), b"m-s", "/data/amount/amount"),
    "string for an integer": (lambda: _placed(amount=_money("5000")), b"m-s", "/data/amount/amount"),
    "missing required field": (_without_order_id, b"m-s", "/data"),
    "subject missing": (lambda: _with(_placed(), subject=None), b"m-s", ""),
    "subject is not the Kafka key": (_placed, b"m-other", "/subject"),
    "no Kafka key": (_placed, None, ""),
    "mixed currencies": (lambda: _settled(fee_currency="USD"), b"m-s", "/data"),
    "net is not gross - fees - withheld": (lambda: _settled(net=9_999), b"m-s", "/data/net"),
    "naive time": (lambda: _with(_placed(), time="2025-01-02T10:00:00"), b"m-s", "/time"),
    "time not in UTC": (lambda: _with(_placed(), time="2025-01-02T10:00:00+02:00"), b"m-s", "/time"),
    "time far in the past": (lambda: _with(_placed(), time="1999-12-31T23:59:59Z"), b"m-s", "/time"),
    "empty id": (lambda: _with(_placed(), id=""), b"m-s", "/id"),
    "id over 128 characters": (lambda: _with(_placed(), id="e" * 129), b"m-s", "/id"),
    "buyer id that is no identifier": (lambda: _placed(buyer_id=RAW_BUYER + " " * 200), b"m-s", "/data/buyer_id"),
    "event bigger than ingest's limit": (lambda: _placed(order_id="o" * 100, note="x" * 300_000), b"m-s", ""),
}
# Refused before the contract check by the stages that already existed (the type catalog of the topic).
TYPE_CASES = {
    "unknown type": lambda: _with(_placed(), type="order.teleported"),
    "type that is an object": lambda: _with(_placed(), type={"order": "placed"}),
    "type that is a list": lambda: _with(_placed(), type=["order.placed"]),
    "Floatbridge type forged on the topic": lambda: codec.new_event(
        "loan.disbursed", "m-s", {"loan_id": "l", "offer_id": "of", "principal": _money(10**9), "fee": _money(0),
                                  "due_at": WHEN, "payout_id": "p"}, WHEN, "mp", id="ev-forged"),
}


@dataclass
class _Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp: float = 0.0


@dataclass
class _Record:
    message: _Message
    value: bytes


def _underwriter() -> Any:
    return bootstrap(settings=load(debounce_seconds=0), metrics=UnderwriterMetrics(CollectorRegistry()))


def _uw_records(values: list[tuple[bytes | None, bytes]], start: int = 0) -> list[_Record]:
    return [_Record(_Message(TOPIC, 0, start + i, key), v) for i, (key, v) in enumerate(values)]


def _disbursement_record(key: bytes | None, value: bytes, offset: int = 0) -> Any:
    return SimpleNamespace(topic=TOPIC, partition=0, offset=offset, key=key, value=value)


def _fake_disbursement() -> tuple[Any, list[dict[str, Any]], CollectorRegistry]:
    registry = CollectorRegistry()
    applied: list[dict[str, Any]] = []
    metrics = SimpleNamespace(rejected_records=Counter("t_records_rejected", "t", ["stage"], registry=registry))
    return SimpleNamespace(handle=applied.append, metrics=metrics), applied, registry


def _assert_letter(letter: dict[str, Any], pointer: str) -> None:
    assert letter["type"] == dead_letter.REJECTED_TYPE
    assert codec.validate(letter) == [], letter
    errors = letter["data"]["errors"]
    assert pointer in [e["pointer"] for e in errors], errors
    assert all(e["message"] for e in errors)
    assert RAW_BUYER not in codec.encode(letter).decode()


@pytest.mark.parametrize("case", sorted(CASES))
def test_underwriter_worker_dead_letters_a_record_ingest_would_refuse_with_every_error(case: str) -> None:
    make, key, pointer = CASES[case]
    uw = _underwriter()
    out = process_batch(uw, None, _uw_records([(key, codec.encode(make()))]), {"event": 0.0, "wall": 0.0})
    assert [e["type"] for e in out] == [dead_letter.REJECTED_TYPE]
    _assert_letter(out[0], pointer)
    assert out[0]["data"]["reason"] in ("schema", "money", "time")
    assert uw.metrics.registry.get_sample_value(
        "floatbridge_underwriter_records_rejected_total", {"stage": "contract"}) == 1
    assert uw.state("m-s") is None or uw.state("m-s").positions == {}


@pytest.mark.parametrize("case", sorted(CASES))
def test_disbursement_consumer_dead_letters_a_record_ingest_would_refuse_with_every_error(case: str) -> None:
    make, key, pointer = CASES[case]
    svc, applied, registry = _fake_disbursement()
    letter = disbursement_kafka._apply(svc, _disbursement_record(key, codec.encode(make())))
    assert applied == []
    assert letter is not None
    _assert_letter(letter, pointer)
    assert registry.get_sample_value("t_records_rejected_total", {"stage": "contract"}) == 1


@pytest.mark.parametrize("case", sorted(TYPE_CASES))
def test_both_consumers_refuse_a_type_no_marketplace_may_send(case: str) -> None:
    value = codec.encode(TYPE_CASES[case]())
    out = process_batch(_underwriter(), None, _uw_records([(b"m-s", value)]), {"event": 0.0, "wall": 0.0})
    assert [e["type"] for e in out] == [dead_letter.REJECTED_TYPE]
    assert "does not belong on" in out[0]["data"]["errors"][0]["message"]
    svc, applied, _ = _fake_disbursement()
    letter = disbursement_kafka._apply(svc, _disbursement_record(b"m-s", value))
    assert applied == [] and letter is not None and "does not belong on" in letter["data"]["errors"][0]["message"]


def test_a_record_with_many_problems_lists_them_all_as_ingest_does() -> None:
    ev = _with(_placed(amount=_money(-5, "XYZ")), id="", time="2025-01-02T10:00:00+01:00")
    svc, _, _ = _fake_disbursement()
    letter = disbursement_kafka._apply(svc, _disbursement_record(b"m-other", codec.encode(ev)))
    assert letter is not None
    pointers = {e["pointer"] for e in letter["data"]["errors"]}
    assert {"/id", "/data/amount/amount", "/data/amount/currency", "/subject", "/time"} <= pointers, pointers


def test_a_future_dated_record_moves_neither_consumer_nor_the_disbursement_clock(tmp_path: Any) -> None:
    ahead = (datetime.now(UTC) + timedelta(days=400)).strftime("%Y-%m-%dT%H:%M:%SZ")
    env = service_env(db_url=f"sqlite:///{tmp_path}/d.db")
    svc = env["svc"]
    before = svc.event_clock()
    future = settlement("m1", "s-future", 0, T0)
    future["time"] = ahead
    letter = disbursement_kafka._apply(svc, _disbursement_record(b"m1", codec.encode(future)))
    assert letter is not None and letter["data"]["errors"][0]["pointer"] == "/time"
    assert "in the future" in letter["data"]["errors"][0]["message"]
    assert svc.event_clock() == before  # ages nothing: the clock that drives loan aging did not move
    good = settlement("m1", "s-good", 0, T0 + timedelta(hours=1))
    assert disbursement_kafka._apply(svc, _disbursement_record(b"m1", codec.encode(good), 1)) is None
    assert svc.event_clock() == T0 + timedelta(hours=1)


def test_valid_records_straight_to_the_topic_are_decided_exactly_as_the_core_decides_them() -> None:
    events = history("m-ok", datetime(2025, 1, 1, tzinfo=UTC), 20, Profile(orders_per_day=4))
    through_adapter = _underwriter()
    out = process_batch(through_adapter, None, _uw_records([(b"m-ok", codec.encode(e)) for e in events]),
                        {"event": 0.0, "wall": 0.0})
    direct = _underwriter()
    expected, errors = direct.handle_batch(events, [(f"{TOPIC}:0", i) for i in range(len(events))])
    assert errors == [] and dead_letter.REJECTED_TYPE not in {e["type"] for e in out}
    assert [(e["type"], e["data"]) for e in out] == [(e["type"], e["data"]) for e in expected]
    assert through_adapter.state("m-ok").to_dict() == direct.state("m-ok").to_dict()


def test_disbursement_applies_a_valid_marketplace_record_unchanged() -> None:
    svc, applied, registry = _fake_disbursement()
    ev = _settled()
    assert disbursement_kafka._apply(svc, _disbursement_record(b"m-s", codec.encode(ev))) is None
    assert applied == [ev]
    assert registry.get_sample_value("t_records_rejected_total", {"stage": "contract"}) is None


def test_a_raw_buyer_id_straight_to_the_topic_is_accepted_and_only_a_short_hash_of_it_is_kept() -> None:
    # The schemas take any identifier as buyer_id (ingest hashes it first; a producer past ingest cannot): the
    # worker keeps a 24-bit hash of it in the merchant's buyer sample, never the text.
    uw = _underwriter()
    events = history("m-raw", datetime(2025, 1, 1, tzinfo=UTC), 3, Profile(orders_per_day=2))
    for e in events:
        if e["type"] == "order.placed":
            e["data"]["buyer_id"] = RAW_BUYER
    out = process_batch(uw, None, _uw_records([(b"m-raw", codec.encode(e)) for e in events]),
                        {"event": 0.0, "wall": 0.0})
    assert dead_letter.REJECTED_TYPE not in {e["type"] for e in out}
    state = uw.state("m-raw")
    assert state.buyers and RAW_BUYER.encode() not in state.to_bytes()
    assert RAW_BUYER not in repr(state.to_dict())


def test_the_contract_check_alone_accepts_what_ingest_emits_and_withholds_buyer_values() -> None:
    assert contract_check.marketplace_errors(_placed(), key=b"m-s", now=datetime(2025, 1, 2, 10, 1, tzinfo=UTC).timestamp(),
                                             size=400) == []
    problems = contract_check.marketplace_errors(_placed(buyer_id=RAW_BUYER + "\n"), key=b"m-s")
    assert [p.pointer for p in problems] == ["/data/buyer_id"] and RAW_BUYER not in problems[0].message


def test_the_disbursement_consumer_takes_its_future_skew_from_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.settings import SettingsError
    from services.disbursement.cli import contract_of
    from services.disbursement.settings import load_settings

    monkeypatch.setenv("FLOATBRIDGE_DISBURSEMENT_MAX_FUTURE_SKEW_SECONDS", "60")
    assert contract_of(load_settings()).max_future_skew_seconds == 60.0
    monkeypatch.setenv("FLOATBRIDGE_DISBURSEMENT_MAX_FUTURE_SKEW_SECONDS", "-1")
    assert contract_of(load_settings()).max_future_skew_seconds is None
    monkeypatch.setenv("FLOATBRIDGE_DISBURSEMENT_MAX_FUTURE_SKEW_SECONDS", "-2")
    with pytest.raises((SettingsError, ValueError), match="MAX_FUTURE_SKEW_SECONDS"):
        load_settings()


@pytest.mark.parametrize("etype", [{"order": "placed"}, ["order.placed"], 7])
def test_the_contract_check_lists_errors_for_a_type_that_is_no_string_instead_of_raising(etype: Any) -> None:
    errors = contract_check.marketplace_errors(_with(_placed(), type=etype), key=b"m-s")
    assert [e.pointer for e in errors if e.pointer == "/type"], errors
