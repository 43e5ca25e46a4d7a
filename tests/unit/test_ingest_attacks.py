"""What a hostile or sloppy marketplace sends to POST /v1/events (and to marketplace.raw.v1, whose values
take the same parser): each case is answered per event, precisely, and no raw buyer id leaves ingest."""

from __future__ import annotations

import copy
import gzip
import json
import zlib
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from schemas.codec import validate
from services.ingest.adapters.http import create_app
from services.ingest.adapters.jsoncodec import parse_records
from services.ingest.bootstrap import IngestRuntime
from services.ingest.domain import Malformed, Status
from tests.unit.ingest_helpers import KEY, NOW, placed, runtime, settlement

pytestmark = pytest.mark.unit
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {**AUTH, "Content-Type": "application/json"}
NDJSON = {**AUTH, "Content-Type": "application/x-ndjson"}
BUYER = "maria.silva@example.com"


@pytest.fixture
def rt() -> IngestRuntime:
    return runtime(max_batch_events=10, max_batch_bytes=200_000, max_event_bytes=50_000)


@pytest.fixture
def client(rt: IngestRuntime) -> Iterator[TestClient]:
    with TestClient(create_app(rt), raise_server_exceptions=False) as c:
        yield c


def _results(r: Any) -> list[dict[str, Any]]:
    assert r.status_code == 200, r.text[:300]
    return list(r.json()["results"])


def _statuses(r: Any) -> list[str]:
    return [x["status"] for x in _results(r)]


def _produced(rt: IngestRuntime) -> list[dict[str, Any]]:
    return [json.loads(rec.payload) for rec in rt.sink.events()]


def _dead_letters(rt: IngestRuntime) -> list[dict[str, Any]]:
    return [json.loads(rec.payload)["data"] for rec in rt.sink.rejected()]


def _raw_buyer_nowhere(rt: IngestRuntime, *raw: str) -> None:
    for rec in rt.sink.records:
        for text in raw:
            assert text.encode() not in rec.payload, rec.payload[:300]


# --- the body: JSON parsing ----------------------------------------------------------------------------


def test_an_event_naming_a_key_twice_is_rejected_alone_in_an_array_in_ndjson_and_on_kafka(
        client: TestClient, rt: IngestRuntime) -> None:
    # orjson keeps the last of two equal keys, other parsers the first: the event means different things
    # to different readers, so it is refused (reason malformed, pointer at the object), the others go on.
    twice_id = orjson.dumps(placed("dk-1")).replace(b'"id":"dk-1"', b'"id":"dk-1","id":"dk-other"')
    twice_amount = orjson.dumps(placed("dk-2")).replace(b'"amount":12345', b'"amount":1,"amount":12345')
    ok = orjson.dumps(placed("dk-ok"))
    r = client.post("/v1/events", content=b"[" + b",".join([twice_id, ok, twice_amount]) + b"]", headers=JSON)
    res = _results(r)
    assert [x["status"] for x in res] == ["rejected", "accepted", "rejected"]
    assert res[0]["reason"] == "malformed" and "duplicate key 'id'" in res[0]["errors"][0]["message"]
    assert res[2]["errors"][0]["pointer"] == "/data/amount" and "'amount'" in res[2]["errors"][0]["message"]
    r = client.post("/v1/events", content=b"\n".join([ok, twice_amount.replace(b"dk-2", b"dk-3")]), headers=NDJSON)
    assert _statuses(r) == ["duplicate", "rejected"]
    assert [e["id"] for e in _produced(rt)] == ["dk-ok"]
    assert [x for x in parse_records([twice_id, ok]) if isinstance(x, Malformed)][0].pointer == ""
    assert not isinstance(parse_records([twice_id, ok])[1], Malformed)


def test_escaped_colons_cannot_hide_a_duplicate_key(client: TestClient) -> None:
    # "\u003a" is a colon the byte count cannot see: such bodies take the exact parse.
    event = placed("dk-esc")
    event["data"]["note"] = "a:b"
    body = orjson.dumps([event]).replace(b'"a:b"', b'"a\\u003ab"').replace(b'"id":"dk-esc"', b'"id":"x","id":"dk-esc"')
    [res] = _results(client.post("/v1/events", content=body, headers=JSON))
    assert res["status"] == "rejected" and "duplicate key" in res["errors"][0]["message"]


def test_reordered_and_reindented_copy_of_an_event_is_a_duplicate_not_a_conflict(client: TestClient) -> None:
    event = placed("same")
    event["data"]["note"] = "x: y"
    shuffled = json.dumps(dict(reversed(list(event.items()))), indent=4)
    body = ("[" + json.dumps(event) + ",\n" + shuffled + "]").encode()
    assert _statuses(client.post("/v1/events", content=body, headers=JSON)) == ["accepted", "duplicate"]
    assert _statuses(client.post("/v1/events", content=shuffled.replace("\n", " ").encode(), headers=NDJSON)) == [
        "duplicate"]


def test_a_utf8_byte_order_mark_before_the_array_or_an_ndjson_line_is_ignored(client: TestClient) -> None:
    bom = b"\xef\xbb\xbf"
    assert _statuses(client.post("/v1/events", content=bom + orjson.dumps([placed("bom-1")]), headers=JSON)) == [
        "accepted"]
    body = bom + orjson.dumps(placed("bom-2")) + b"\r\n\r\n" + bom + orjson.dumps(placed("bom-3")) + b"\r\n"
    assert _statuses(client.post("/v1/events", content=body, headers=NDJSON)) == ["accepted", "accepted"]
    assert not isinstance(parse_records([bom + orjson.dumps(placed("bom-4"))])[0], Malformed)


def test_an_integer_beyond_64_bits_in_an_extra_field_keeps_its_exact_value_and_a_different_one_is_a_conflict(
        client: TestClient, rt: IngestRuntime) -> None:
    # orjson reads 20+ digit integers as floats: 10**20 + 1 and 10**20 + 2 would both be 1e20.
    first, second = placed("big-1"), placed("big-1")
    first["data"]["reference"] = 10**20 + 1
    second["data"]["reference"] = 10**20 + 2
    r = client.post("/v1/events", content=json.dumps([first, second]).encode(), headers=JSON)
    assert [(x["status"], x.get("reason")) for x in _results(r)] == [("accepted", None), ("rejected", "conflict")]
    [produced] = _produced(rt)
    assert produced["data"]["reference"] == 10**20 + 1 and b"100000000000000000001" in rt.sink.events()[0].payload
    huge = placed("big-2", amount={"amount": 10**25, "currency": "BRL"})
    [res] = _results(client.post("/v1/events", content=json.dumps(huge).encode(), headers=NDJSON))
    assert res["reason"] == "money" and str(10**25) in res["errors"][0]["message"]


@pytest.mark.parametrize("literal", [b"1e400", b"-1e400", b"9" * 5000])
def test_a_number_out_of_range_rejects_its_event_not_the_batch(client: TestClient, rt: IngestRuntime,
                                                               literal: bytes) -> None:
    bad = orjson.dumps(placed("oor-1")).replace(b'"amount":12345', b'"amount":' + literal)
    r = client.post("/v1/events", content=b"[" + orjson.dumps(placed("oor-ok")) + b"," + bad + b"]", headers=JSON)
    res = _results(r)
    assert [x["status"] for x in res] == ["accepted", "rejected"]
    assert res[1]["reason"] == "malformed" and res[1]["errors"][0]["pointer"] == "/data/amount/amount"
    assert "out of range" in res[1]["errors"][0]["message"] and res[1]["id"] == "oor-1"
    r = client.post("/v1/events", content=bad.replace(b"oor-1", b"oor-2"), headers=NDJSON)
    assert _statuses(r) == ["rejected"]
    [letter, _] = _dead_letters(rt)
    assert letter["reason"] == "malformed" and letter["event_id"] == "oor-1"


def test_a_lone_surrogate_escape_rejects_its_event_not_the_batch(client: TestClient, rt: IngestRuntime) -> None:
    bad = orjson.dumps(placed("sur-1")).replace(b'"o-sur-1"', b'"o-\\ud800"')
    r = client.post("/v1/events", content=b"[" + bad + b"," + orjson.dumps(placed("sur-ok")) + b"]", headers=JSON)
    res = _results(r)
    assert [x["status"] for x in res] == ["rejected", "accepted"]
    assert res[0]["errors"][0]["pointer"] == "/data/order_id"
    assert len(_dead_letters(rt)) == 1


@pytest.mark.parametrize("where", ["data", "extension"])
def test_data_nested_hundreds_of_levels_deep_is_rejected_per_event_not_a_500(client: TestClient, where: str) -> None:
    nest = b'{"n":' * 900 + b"1" + b"}" * 900
    event = orjson.dumps(placed("deep"))
    if where == "data":
        bad = event.replace(b'"order_id"', b'"deep":' + nest + b',"order_id"')
    else:
        bad = event[:-1] + b',"x":' + nest + b"}"
    r = client.post("/v1/events", content=b"[" + bad + b"," + orjson.dumps(placed("shallow")) + b"]", headers=JSON)
    res = _results(r)
    assert [x["status"] for x in res] == ["rejected", "accepted"]
    assert res[0]["reason"] == "schema"
    assert _statuses(client.post("/v1/events", content=bad.replace(b'"deep"', b'"deep2"', 1), headers=NDJSON)) == [
        "rejected"]


# --- the body: media types, encodings, charsets --------------------------------------------------------


def test_a_gzip_or_deflate_body_is_read_and_a_decompression_bomb_is_413(client: TestClient) -> None:
    body = orjson.dumps([placed("gz-1")])
    r = client.post("/v1/events", content=gzip.compress(body), headers={**JSON, "Content-Encoding": "gzip"})
    assert _statuses(r) == ["accepted"]
    r = client.post("/v1/events", content=zlib.compress(orjson.dumps([placed("gz-2")])),
                    headers={**JSON, "Content-Encoding": "deflate"})
    assert _statuses(r) == ["accepted"]
    bomb = gzip.compress(b"[" + b" " * 5_000_000 + b"]")  # ~5 KB on the wire, 5 MB inflated
    r = client.post("/v1/events", content=bomb, headers={**JSON, "Content-Encoding": "gzip"})
    assert r.status_code == 413 and "decompressed" in r.json()["detail"]
    r = client.post("/v1/events", content=gzip.compress(body)[:-12], headers={**JSON, "Content-Encoding": "gzip"})
    assert r.status_code == 400 and "gzip" in r.json()["detail"]


@pytest.mark.parametrize("coding", ["br", "zstd", "compress"])
def test_a_content_encoding_ingest_cannot_read_is_415_and_nothing_is_taken(client: TestClient, rt: IngestRuntime,
                                                                          coding: str) -> None:
    r = client.post("/v1/events", content=orjson.dumps([placed("enc")]), headers={**JSON, "Content-Encoding": coding})
    assert r.status_code == 415 and coding in r.json()["detail"]
    assert rt.sink.records == []


@pytest.mark.parametrize("media_type", ["application/ndjson", "application/jsonl", "application/x-jsonlines",
                                        "Application/X-NDJSON; charset=UTF-8"])
def test_common_ndjson_media_types_are_read_as_ndjson(client: TestClient, media_type: str) -> None:
    body = orjson.dumps(placed("nd-1")) + b"\n" + orjson.dumps(placed("nd-2"))
    r = client.post("/v1/events", content=body, headers={**AUTH, "Content-Type": media_type})
    assert _statuses(r) == ["accepted", "accepted"] or _statuses(r) == ["duplicate", "duplicate"]


def test_a_declared_charset_is_honoured_and_an_unknown_one_is_415(client: TestClient, rt: IngestRuntime) -> None:
    event = placed("cs-1")
    event["data"]["note"] = "Jo\u00e3o & Fran\u00e7a"
    latin1 = json.dumps([event], ensure_ascii=False).encode("latin-1")
    r = client.post("/v1/events", content=latin1, headers={**AUTH, "Content-Type": "application/json; charset=ISO-8859-1"})
    assert _statuses(r) == ["accepted"]
    assert _produced(rt)[0]["data"]["note"] == "Jo\u00e3o & Fran\u00e7a"
    utf16 = json.dumps([placed("cs-2")]).encode("utf-16")
    r = client.post("/v1/events", content=utf16, headers={**AUTH, "Content-Type": "application/json; charset=utf-16"})
    assert _statuses(r) == ["accepted"]
    r = client.post("/v1/events", content=b"[]", headers={**AUTH, "Content-Type": "application/json; charset=klingon"})
    assert r.status_code == 415


# --- authentication and limits -------------------------------------------------------------------------


@pytest.mark.parametrize("header", [f"bearer {KEY}", f"BEARER {KEY}", f"Bearer   {KEY}", f"Bearer {KEY}  "])
def test_the_bearer_scheme_is_case_insensitive_and_spaces_around_the_key_are_ignored(client: TestClient,
                                                                                     header: str) -> None:
    r = client.post("/v1/events", content=orjson.dumps([placed("auth")]), headers={"Authorization": header})
    assert r.status_code == 200


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "bearer    ", f"Bearer{KEY}", f"Basic {KEY}", f"Token {KEY}",
                                    "Bearer " + "k" * 10_000])
def test_a_blank_glued_or_other_scheme_key_is_still_401(client: TestClient, rt: IngestRuntime, header: str) -> None:
    r = client.post("/v1/events", content=orjson.dumps([placed("auth")]), headers={"Authorization": header})
    assert r.status_code == 401 and rt.sink.records == []


def test_a_batch_exactly_at_the_event_count_and_byte_limits_is_taken(client: TestClient) -> None:
    events = [placed(f"lim-{i}") for i in range(10)]
    assert _statuses(client.post("/v1/events", json=events, headers=AUTH)) == ["accepted"] * 10
    body = orjson.dumps([placed("lim-bytes")])
    body = body[:-1] + b" " * (200_000 - len(body)) + b"]"
    assert len(body) == 200_000
    assert _statuses(client.post("/v1/events", content=body, headers=JSON)) == ["accepted"]
    assert client.post("/v1/events", content=body[:-1] + b" ]", headers=JSON).status_code == 413


# --- money and settlements -----------------------------------------------------------------------------


def test_a_decimal_value_with_a_trailing_newline_is_rejected(client: TestClient) -> None:
    [res] = _results(client.post("/v1/events", json=[placed("nl", amount={"value": "12.30\n", "currency": "BRL"})],
                                 headers=AUTH))
    assert res["status"] == "rejected" and res["errors"][0]["pointer"] == "/data/amount/value"


def test_settlement_whose_orders_add_up_to_more_than_gross_is_rejected(client: TestClient, rt: IngestRuntime) -> None:
    # The underwriter counts settled sales from the orders: listing more than the gross would inflate them.
    bad = settlement("inflated")
    bad["data"]["orders"] = [{"order_id": f"o-{i}", "amount": {"amount": 6000, "currency": "BRL"}} for i in range(2)]
    fine = settlement("under-gross")
    fine["data"]["orders"] = [{"order_id": "o-1", "amount": {"amount": 9000, "currency": "BRL"}}]
    res = _results(client.post("/v1/events", json=[bad, fine], headers=AUTH))
    assert [x["status"] for x in res] == ["rejected", "accepted"]
    assert res[0]["errors"] == [{"pointer": "/data/orders", "message": "orders add up to 12000, more than gross 10000"}]


def test_settlement_listing_the_same_order_twice_is_rejected(client: TestClient) -> None:
    bad = settlement("twice")
    bad["data"]["orders"] = [{"order_id": "o-1", "amount": {"amount": 5000, "currency": "BRL"}}] * 2
    [res] = _results(client.post("/v1/events", json=[bad], headers=AUTH))
    assert res["status"] == "rejected"
    assert res["errors"][0]["pointer"] == "/data/orders/1/order_id" and "twice" in res["errors"][0]["message"]
    assert validate(json.loads(json.dumps(bad)))  # the codec says so to every consumer, not only ingest


# --- no raw buyer id leaves ingest ---------------------------------------------------------------------


def test_buyer_fields_other_than_buyer_id_are_hashed_in_produced_events(client: TestClient, rt: IngestRuntime) -> None:
    event = placed("pii-1", buyer=BUYER)
    event["data"]["buyer_email"] = BUYER
    event["data"]["buyerName"] = "Maria Silva"
    event["data"]["buyer"] = {"phone": "+55 11 91234-5678", "vip": True, "orders": 17}
    event["data"]["buyer_paid"] = {"amount": 500, "currency": "BRL"}  # money about the buyer stays money
    event["buyerref"] = "maria-123"  # a CloudEvents extension attribute
    assert _statuses(client.post("/v1/events", json=[event], headers=AUTH)) == ["accepted"]
    [out] = _produced(rt)
    data = out["data"]
    assert data["buyer_email"] == data["buyer_id"]  # the same keyed hash as the same buyer id
    assert data["buyerName"].startswith("bh_") and out["buyerref"].startswith("bh_")
    assert data["buyer"]["vip"] is True and data["buyer"]["phone"].startswith("bh_")
    assert data["buyer"]["orders"].startswith("bh_")
    assert data["buyer_paid"] == {"amount": 500, "currency": "BRL"}
    assert validate(out) == []
    _raw_buyer_nowhere(rt, BUYER, "Maria Silva", "91234-5678", "maria-123")


def test_rejected_events_keep_no_raw_buyer_field_in_the_dead_letter(client: TestClient, rt: IngestRuntime) -> None:
    bad = placed("pii-2", buyer=BUYER, amount={"amount": 1.5, "currency": "BRL"})
    bad["data"]["buyer_email"] = BUYER
    twice = orjson.dumps(placed("pii-3", buyer=BUYER)).replace(b'"id":"pii-3"', b'"id":"x","id":"pii-3"')
    escaped = b'{"id": "pii-4", "data": {"buyer\\u005fid": "' + BUYER.encode() + b'", "order_id": '  # cut off
    weird = b'{"id": "pii-5", "data": {"buyer_email": "maria silva <' + BUYER.encode() + b'>", "order_id": '
    assert _statuses(client.post("/v1/events", content=b"[" + orjson.dumps(bad) + b"," + twice + b"]",
                                 headers=JSON)) == ["rejected", "rejected"]
    assert _statuses(client.post("/v1/events", content=escaped + b"\n" + weird, headers=NDJSON)) == [
        "rejected", "rejected"]
    letters = _dead_letters(rt)
    assert len(letters) == 4 and all("[redacted]" in x["raw"] or "bh_" in x["raw"] for x in letters)
    _raw_buyer_nowhere(rt, BUYER, "maria silva")


def test_a_buyer_id_that_already_looks_like_a_hash_is_hashed_again(client: TestClient, rt: IngestRuntime) -> None:
    # Passing a "bh_..." value through would let a marketplace pick another buyer's pseudonym.
    first = placed("hh-1", buyer="buyer-7")
    assert _statuses(client.post("/v1/events", json=[first], headers=AUTH)) == ["accepted"]
    pseudonym = _produced(rt)[0]["data"]["buyer_id"]
    assert _statuses(client.post("/v1/events", json=[placed("hh-2", buyer=pseudonym)], headers=AUTH)) == ["accepted"]
    assert _produced(rt)[1]["data"]["buyer_id"] not in (pseudonym, "")


def test_every_element_of_a_hostile_array_gets_its_own_result_in_order(client: TestClient) -> None:
    elements = [b"1", b"null", b"[]", b'"text"', b"{}", b"1e400", orjson.dumps(placed("order-ok")),
                orjson.dumps(placed("x")).replace(b'"id":"x"', b'"id":"x","id":"y"')]
    res = _results(client.post("/v1/events", content=b"[" + b",".join(elements) + b"]", headers=JSON))
    assert [x["index"] for x in res] == list(range(len(elements)))
    assert [x["status"] for x in res] == ["rejected"] * 6 + ["accepted", "rejected"]


def test_the_same_batch_sent_twice_compressed_and_not_is_duplicate(client: TestClient) -> None:
    events = [placed(f"twice-{i}") for i in range(3)]
    assert _statuses(client.post("/v1/events", json=events, headers=AUTH)) == ["accepted"] * 3
    r = client.post("/v1/events", content=gzip.compress(orjson.dumps(copy.deepcopy(events))),
                    headers={**JSON, "Content-Encoding": "gzip"})
    assert _statuses(r) == ["duplicate"] * 3


def test_normalise_directly_reports_too_deep_data_without_recursion_error() -> None:
    rt = runtime()
    event = placed("deep-direct")
    node: Any = 1
    for _ in range(5000):
        node = {"n": node}
    event["data"]["deep"] = node
    [res] = rt.service.submit([event], NOW)
    assert res.status is Status.REJECTED and "nested" in res.errors[0].message


def test_ndjson_sent_as_a_json_array_gets_a_400_naming_the_ndjson_media_type(client: TestClient) -> None:
    body = orjson.dumps(placed("nd-a")) + b"\n" + orjson.dumps(placed("nd-b")) + b"\n"
    r = client.post("/v1/events", content=body, headers=JSON)
    assert r.status_code == 400 and "application/x-ndjson" in r.json()["detail"]


def test_a_decimal_value_with_too_many_decimals_gets_one_error_not_a_misleading_missing_amount(
        client: TestClient) -> None:
    [res] = _results(client.post("/v1/events", json=[placed("dec", amount={"value": "12.345", "currency": "BRL"})],
                                 headers=AUTH))
    assert res["errors"] == [{"pointer": "/data/amount/value", "message": "12.345 has more decimals than BRL allows (2)"}]


@pytest.mark.parametrize(("sent", "stored"), [("2016-12-31T23:59:60Z", "2016-12-31T23:59:59Z"),
                                              ("2017-01-01T08:59:60+09:00", "2016-12-31T23:59:59Z")])
def test_a_leap_second_is_taken_as_the_last_second_of_the_day(sent: str, stored: str) -> None:
    rt = runtime(max_future_skew_seconds=-1, min_event_time="2000-01-01T00:00:00Z")
    [res] = rt.service.submit([placed("leap", time=sent)], NOW)
    assert res.status is Status.ACCEPTED
    assert _produced(rt)[0]["time"] == stored


def test_a_60th_second_that_is_not_a_leap_second_is_still_rejected() -> None:
    rt = runtime()
    [res] = rt.service.submit([placed("noleap", time="2024-05-01T11:00:60Z")], NOW)
    assert res.status is Status.REJECTED and res.errors[0].pointer == "/time"
