"""Round three of attacks on the ingest door (issue 3; DESIGN.md "Events", "What a marketplace sends"): the
quick check in front of the codec, the PostgreSQL text[] literal of the dedupe store, and the contract's edges
(currencies with unusual exponents, time zones, NDJSON shapes). Each defect found has a test named after it
that failed before its fix."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from schemas.codec import MARKETPLACE_TYPES, validate
from services.ingest.adapters.http import create_app
from services.ingest.adapters.sql_dedupe import pg_text_array
from services.ingest.bootstrap import IngestRuntime, codec_validator
from tests.unit.ingest_helpers import KEY, NOW, placed, runtime
from tests.unit.ingest_helpers import send as _send

pytestmark = pytest.mark.unit

AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {**AUTH, "Content-Type": "application/json"}
EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"


@pytest.fixture
def rt() -> IngestRuntime:
    return runtime(max_batch_events=50, max_batch_bytes=400_000, max_event_bytes=50_000)


@pytest.fixture
def client(rt: IngestRuntime) -> Iterator[TestClient]:
    with TestClient(create_app(rt), raise_server_exceptions=False) as c:
        yield c


def _produced(rt: IngestRuntime) -> list[dict[str, Any]]:
    return [json.loads(r.payload) for r in rt.sink.records if r.kind == "event"]


# --- the quick check never says "valid" where the codec finds an error ------------------------------------

EDGES: list[Any] = [
    True, False, 0, -0.0, 0.0, 1, 1.0, 1e3, 1000.0, 2**31, 2**53 + 1, 2**63, 10**30, -1, float("nan"), float("inf"),
    "", "\u0000", "\ud800", "\U0001f600", "x" * 128, "x" * 129, "a" * 127 + "\U0001f600", "BRL", "CLF", "BHD", "ISK",
    "UGX", "EUR", "2024-05-01T23:59:60Z", "2024-05-01t11:00:00z", "2024-05-01T11:00:00+05:30:15",
    "2024-05-01T11:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2023-02-29T00:00:00Z",
    "2024-05-01T11:00:00Z\n", None, [], {}, "a\n", "1", "\u0661",
]
EXTRA: list[tuple[str, Any]] = [
    ("ext", 1), ("ext", 2**40), ("ext", True), ("ext", 1.5), ("ext", None), ("Ext", "x"), ("dataschema", "x"),
    ("datacontenttype", "application/json; charset=utf-8"), ("merchant_id", "m-other"), ("a" * 21, "x"),
]


def _valid_examples() -> list[dict[str, Any]]:
    out = []
    for etype in MARKETPLACE_TYPES:
        for path in sorted((EXAMPLES / etype / "valid").glob("*.json")):
            doc = json.loads(path.read_text())
            if isinstance(doc, dict):
                out.append(doc)
    return out


def _paths(obj: Any, pre: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if pre:
        yield pre
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*pre, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*pre, i))


def _at(obj: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def test_every_edge_value_at_every_depth_of_every_valid_example_gets_exactly_the_codecs_answer() -> None:
    quick = codec_validator()
    checked = quick_yes = 0
    for example in _valid_examples():
        for path in list(_paths(example)):
            for value in EDGES:
                event = copy.deepcopy(example)
                _at(event, path[:-1])[path[-1]] = copy.deepcopy(value)
                codec = [(e.pointer, e.message, e.kind) for e in validate(event)]
                assert list(quick(event)) == codec, (path, value)
                checked += 1
                quick_yes += not codec
            target = _at(example, path) if path else example
            if isinstance(target, dict):
                for key, value in EXTRA:
                    event = copy.deepcopy(example)
                    _at(event, path)[key] = value
                    assert list(quick(event)) == [(e.pointer, e.message, e.kind) for e in validate(event)], (path, key)
    assert checked > 5000 and quick_yes > 500  # many mutants stay valid: both must then say "no error"


# --- the dedupe store's text[] literal --------------------------------------------------------------------

def _parse_pg_array(literal: str) -> list[str]:
    """PostgreSQL's array_in for a one-dimensional array of double-quoted elements (what pg_text_array makes)."""
    assert literal[0] == "{" and literal[-1] == "}"
    out, i, body = [], 1, literal
    if body == "{}":
        return []
    while True:
        assert body[i] == '"', body[i:]
        i += 1
        buf = []
        while body[i] != '"':
            if body[i] == "\\":
                i += 1
            buf.append(body[i])
            i += 1
        out.append("".join(buf))
        i += 1
        if body[i] == "}":
            assert i == len(body) - 1
            return out
        assert body[i] == ","
        i += 1


HOSTILE_IDS = ['a"b', "a\\b", "\\", '"', "{x}", "a,b", "NULL", "null", "", " lead", "trail ", "\t", "\u00e9\U0001f600",
               'a","b', "}", "{", '\\"', "x" * 128, "\n", "a b"]


@pytest.mark.parametrize("values", [HOSTILE_IDS, *[[v] for v in HOSTILE_IDS], []])
def test_the_text_array_literal_quotes_every_element_so_quotes_braces_commas_and_null_stay_text(
        values: list[str]) -> None:
    assert _parse_pg_array(pg_text_array(values)) == values


# --- currencies with unusual exponents ----------------------------------------------------------------------

@pytest.mark.parametrize(("currency", "value", "minor"), [
    ("CLF", "12.3456", 123456), ("UYW", "1.0001", 10001), ("BHD", "1.234", 1234), ("ISK", "1500", 1500),
    ("UGX", "25000", 25000), ("MGA", "10.50", 1050), ("MRU", "7.25", 725), ("VES", "3.10", 310), ("XPF", "100", 100),
    ("BIF", "2000", 2000),
])
def test_iso_4217_currencies_with_unusual_exponents_are_known_and_scaled_by_their_own_exponent(
        client: TestClient, rt: IngestRuntime, currency: str, value: str, minor: int) -> None:
    results = _send(client, placed("e-dec", amount={"value": value, "currency": currency}),
                    placed("e-int", amount={"amount": minor, "currency": currency}))
    assert [r["status"] for r in results] == ["accepted", "accepted"], results
    assert [e["data"]["amount"] for e in _produced(rt)] == [{"amount": minor, "currency": currency}] * 2


@pytest.mark.parametrize(("currency", "value"), [("CLF", "1.00001"), ("BHD", "1.2345"), ("ISK", "1.5"),
                                                 ("UGX", "0.1")])
def test_more_decimals_than_the_currency_has_are_rejected_as_money(client: TestClient, currency: str,
                                                                   value: str) -> None:
    [result] = _send(client, placed(amount={"value": value, "currency": currency}))
    assert result["status"] == "rejected" and result["reason"] == "money", result


@pytest.mark.parametrize("code", ["XXX", "XTS", "XAU", "XDR", "ZZZ", "HRK"])
def test_codes_that_are_not_a_currency_of_account_or_were_withdrawn_stay_unknown(client: TestClient,
                                                                                code: str) -> None:
    [result] = _send(client, placed(amount={"amount": 1, "currency": code}))
    assert result["status"] == "rejected" and "unknown ISO 4217 currency" in json.dumps(result), result


# --- leap seconds: only at the end of a UTC month (RFC 3339 5.7) ------------------------------------------

@pytest.mark.parametrize(("sent", "stored"), [("2015-06-30T23:59:60Z", "2015-06-30T23:59:59Z"),
                                              ("2015-06-30T20:59:60-03:00", "2015-06-30T23:59:59Z"),
                                              ("2016-12-31T23:59:60.5Z", "2016-12-31T23:59:59.500Z"),
                                              ("2024-02-29T23:59:60Z", "2024-02-29T23:59:59Z")])
def test_a_leap_second_at_the_end_of_a_utc_month_is_taken_as_its_last_second(sent: str, stored: str) -> None:
    rt = runtime(max_future_skew_seconds=-1, min_event_time="2000-01-01T00:00:00Z")
    [res] = rt.service.submit([placed("leap", time=sent)], NOW)
    assert res.status.value == "accepted", res
    assert _produced(rt)[0]["time"] == stored


@pytest.mark.parametrize("sent", ["2024-04-15T23:59:60Z", "2024-05-01T23:59:60Z", "2024-02-28T20:59:60-03:00",
                                  "2015-06-30T23:59:60+01:00"])
def test_a_23_59_60_that_is_not_at_the_end_of_a_utc_month_is_rejected_as_time(sent: str) -> None:
    rt = runtime(max_future_skew_seconds=-1, min_event_time="2000-01-01T00:00:00Z")
    [res] = rt.service.submit([placed("noleap", time=sent)], NOW)
    assert res.status.value == "rejected" and res.errors[0].pointer == "/time", res


# --- compressed bodies ------------------------------------------------------------------------------------

def _gz(payload: bytes) -> bytes:
    import gzip

    return gzip.compress(payload)


def test_a_gzip_body_of_several_members_is_read_as_their_concatenation(client: TestClient) -> None:
    body = json.dumps([placed("gz-a"), placed("gz-b")]).encode()
    half = len(body) // 2
    r = client.post("/v1/events", content=_gz(body[:half]) + _gz(body[half:]),
                    headers={**JSON, "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text[:300]
    assert [x["status"] for x in r.json()["results"]] == ["accepted", "accepted"]


def test_garbage_after_the_last_gzip_member_is_still_400(client: TestClient, rt: IngestRuntime) -> None:
    body = json.dumps([placed("gz-c")]).encode()
    for tail in (b"junk", b"\x1f\x8bjunk", b"\x00" * 8):
        r = client.post("/v1/events", content=_gz(body) + tail, headers={**JSON, "Content-Encoding": "gzip"})
        assert r.status_code == 400 and "gzip" in r.json()["detail"], (tail, r.text[:200])
    assert rt.sink.records == []


def test_many_small_gzip_members_that_inflate_past_the_batch_limit_are_413(rt: IngestRuntime) -> None:
    small = runtime(max_batch_bytes=10_000)
    with TestClient(create_app(small), raise_server_exceptions=False) as c:
        member = _gz(b" " * 1_000)
        r = c.post("/v1/events", content=_gz(b"[") + member * 11 + _gz(b"]"), headers={**JSON, "Content-Encoding": "gzip"})
        assert r.status_code == 413 and "decompressed" in r.json()["detail"]
        r = c.post("/v1/events", content=_gz(b"[") + member * 9 + _gz(b"]"), headers={**JSON, "Content-Encoding": "gzip"})
        assert r.status_code == 200 and r.json()["results"] == []


def test_a_deflate_body_without_its_zlib_wrapper_is_read_too(client: TestClient) -> None:
    import zlib

    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    body = raw.compress(json.dumps([placed("raw-deflate")]).encode()) + raw.flush()
    r = client.post("/v1/events", content=body, headers={**JSON, "Content-Encoding": "deflate"})
    assert r.status_code == 200, r.text[:300]
    assert [x["status"] for x in r.json()["results"]] == ["accepted"]
    r = client.post("/v1/events", content=b"not deflate at all", headers={**JSON, "Content-Encoding": "deflate"})
    assert r.status_code == 400 and "deflate" in r.json()["detail"]
