"""POST /v1/events and friends through the ASGI app, with in-memory adapters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.ingest.adapters.http import create_app
from services.ingest.bootstrap import IngestRuntime
from services.ingest.cli import OPENAPI_PATH, openapi_spec
from services.ingest.domain.ports import SinkUnavailable
from services.ingest.settings import hash_key
from tests.unit.ingest_helpers import KEY, placed, runtime

pytestmark = pytest.mark.unit
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def rt() -> IngestRuntime:
    return runtime(max_batch_events=10, max_batch_bytes=200_000, max_event_bytes=50_000)


@pytest.fixture
def client(rt: IngestRuntime) -> Iterator[TestClient]:
    with TestClient(create_app(rt)) as c:
        yield c


def test_batch_is_answered_per_event_in_order(client: TestClient, rt: IngestRuntime) -> None:
    r = client.post("/v1/events", json=[placed("a"), {"type": "order.placed"}, placed("a")], headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    assert [x["status"] for x in body["results"]] == ["accepted", "rejected", "duplicate"]
    assert (body["accepted"], body["rejected"], body["duplicate"]) == (1, 1, 1)
    assert {"pointer": "", "message": "'specversion' is a required property"} in body["results"][1]["errors"]
    assert len(rt.sink.events()) == 1


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                                     {"Authorization": "Basic dGVzdA=="}])
def test_missing_or_wrong_key_is_401_and_nothing_is_produced(client: TestClient, rt: IngestRuntime,
                                                            headers: dict[str, str]) -> None:
    r = client.post("/v1/events", json=[placed("a")], headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert rt.sink.records == []


def test_key_configured_as_hash_is_accepted() -> None:
    rt = runtime(api_keys=(), api_key_hashes=(hash_key("hashed-key"),))
    with TestClient(create_app(rt)) as c:
        assert c.post("/v1/events", json=[placed("a")], headers={"Authorization": "Bearer hashed-key"}).status_code == 200
        assert c.post("/v1/events", json=[placed("b")], headers=AUTH).status_code == 401


def test_too_many_events_is_413(client: TestClient, rt: IngestRuntime) -> None:
    r = client.post("/v1/events", json=[placed(f"e{i}") for i in range(11)], headers=AUTH)
    assert r.status_code == 413 and "at most 10 events" in r.json()["detail"]
    assert rt.sink.records == []


def test_too_many_bytes_is_413(client: TestClient) -> None:
    r = client.post("/v1/events", content=b"[" + b" " * 200_001 + b"]", headers=AUTH)
    assert r.status_code == 413 and "bytes" in r.json()["detail"]


def test_oversize_event_is_rejected_with_pointer_while_others_pass(client: TestClient) -> None:
    big = placed("big")
    big["data"]["note"] = "x" * 60_000
    r = client.post("/v1/events", json=[big, placed("ok")], headers=AUTH)
    assert r.status_code == 200
    first, second = r.json()["results"]
    assert first["status"] == "rejected" and first["reason"] == "size" and first["errors"][0]["pointer"] == ""
    assert second["status"] == "accepted"


@pytest.mark.parametrize(("body", "fragment"), [
    (b'[{"id": "a",', "malformed JSON"),
    (b"", "malformed JSON"),
    (b'{"id": "a"}', "JSON array"),
    (b"NaN", "malformed JSON"),
])
def test_malformed_json_body_is_400_with_clear_message(client: TestClient, body: bytes, fragment: str) -> None:
    r = client.post("/v1/events", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400 and fragment in r.json()["detail"]


def test_ndjson_bad_line_is_rejected_alone(client: TestClient, rt: IngestRuntime) -> None:
    lines = [json.dumps(placed("a")), '{"id": "b", "buyer_id": "secret-buyer"', "", json.dumps(placed("c"))]
    r = client.post("/v1/events", content="\n".join(lines).encode(),
                    headers={**AUTH, "Content-Type": "application/x-ndjson"})
    assert r.status_code == 200
    assert [x["status"] for x in r.json()["results"]] == ["accepted", "rejected", "accepted"]
    assert r.json()["results"][1]["reason"] == "malformed"
    assert all(b"secret-buyer" not in rec.payload for rec in rt.sink.records)


def test_huge_integer_and_float_money_are_rejected_per_event(client: TestClient) -> None:
    body = (b'[' + orjson.dumps(placed("ok")) + b',' +
            json.dumps(placed("huge", amount={"amount": 10**40, "currency": "BRL"})).encode() + b',' +
            b'{"specversion":"1.0","id":"flt","source":"m","type":"order.paid","time":"2024-05-01T11:00:00Z",'
            b'"subject":"m-1","data":{"order_id":"o","amount":{"amount":1e2,"currency":"BRL"}}}]')
    r = client.post("/v1/events", content=body, headers={**AUTH, "Content-Type": "application/json"})
    res = r.json()["results"]
    assert [x["status"] for x in res] == ["accepted", "rejected", "rejected"]
    assert "maximum" in res[1]["errors"][0]["message"]
    assert "fraction or exponent" in res[2]["errors"][0]["message"]


def test_broker_down_is_503_with_retry_after_then_recovers(client: TestClient, rt: IngestRuntime) -> None:
    rt.sink.fail = True
    r = client.post("/v1/events", json=[placed("a"), placed("b")], headers=AUTH)
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert {x["status"] for x in r.json()["results"]} == {"retry"}
    assert client.get("/readyz").status_code == 503
    rt.sink.fail = False
    r = client.post("/v1/events", json=[placed("a"), placed("b")], headers=AUTH)
    assert r.status_code == 200 and r.json()["accepted"] == 2
    assert client.get("/readyz").json() == {"ready": True, "broker": "ok", "dedupe_store": "ok"}


def test_partially_acknowledged_batch_answers_retry_only_for_unacknowledged(client: TestClient,
                                                                          rt: IngestRuntime) -> None:
    real = rt.sink.publish

    def half(records: Any) -> None:
        real(records[:1])
        raise SinkUnavailable("timeout", frozenset({records[0].event_id}))

    rt.sink.publish = half  # type: ignore[method-assign]
    r = client.post("/v1/events", json=[placed("a"), placed("b")], headers=AUTH)
    assert r.status_code == 503 and [x["status"] for x in r.json()["results"]] == ["accepted", "retry"]
    rt.sink.publish = real  # type: ignore[method-assign]
    r = client.post("/v1/events", json=[placed("a"), placed("b")], headers=AUTH)
    assert [x["status"] for x in r.json()["results"]] == ["duplicate", "accepted"]
    assert [rec.event_id for rec in rt.sink.events()] == ["a", "b"]


def test_health_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    client.post("/v1/events", json=[placed("a"), placed("bad", amount={"amount": 1.5, "currency": "BRL"})],
                headers=AUTH)
    client.post("/v1/events", json=[placed("a")])
    text = client.get("/metrics").text
    assert 'floatbridge_ingest_events_accepted_total{type="order.placed"} 1.0' in text
    assert 'floatbridge_ingest_events_rejected_total{reason="money",type="order.placed"} 1.0' in text
    assert 'floatbridge_ingest_requests_refused_total{reason="auth"} 1.0' in text
    assert 'floatbridge_ingest_http_requests_total{method="POST",route="/v1/events",status="200"} 1.0' in text
    assert "floatbridge_ingest_batch_size_events_bucket" in text
    assert "floatbridge_ingest_dedupe_store_rows 1.0" in text


def test_committed_openapi_matches_the_app() -> None:
    committed = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
    assert committed == json.loads(json.dumps(openapi_spec())), "run: floatbridge ingest openapi"
    assert "/v1/events" in committed["paths"]


_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_field_values = {
    "id": st.text(min_size=0, max_size=6) | st.sampled_from(["a", "b", "c"]),
    "time": st.sampled_from(["2024-05-01T11:00:00Z", "2024-05-01T11:00:00", "2999-01-01T00:00:00Z", "x"]),
    "amount": st.integers(-5, 10**16) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5) | _json,
    "currency": st.sampled_from(["BRL", "JPY", "KWD", "XXX", ""]),
}


@st.composite
def _mutated_event(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):
        return draw(_json)
    event = placed(draw(_field_values["id"]), time=draw(_field_values["time"]),
                   amount={"amount": draw(_field_values["amount"]), "currency": draw(_field_values["currency"])})
    for key in draw(st.lists(st.sampled_from(sorted(event)), max_size=2)):
        event[key] = draw(_json)
    return event


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(_mutated_event(), max_size=6), min_size=1, max_size=3))
def test_fuzzed_batches_never_5xx_and_never_lose_or_duplicate(batches: list[list[Any]]) -> None:
    rt = runtime(max_batch_events=10)
    accepted: set[str] = set()
    with TestClient(create_app(rt)) as c:
        for batch in batches:
            r = c.post("/v1/events", content=json.dumps(batch).encode(), headers={**AUTH, "Content-Type": "application/json"})
            assert r.status_code == 200, r.text
            res = r.json()["results"]
            assert len(res) == len(batch)
            for item in res:
                assert item["status"] in {"accepted", "duplicate", "rejected"}
                if item["status"] == "rejected":
                    assert item["errors"] and item["reason"]
                if item["status"] == "accepted":
                    assert item["id"] not in accepted
                    accepted.add(item["id"])
    produced = [rec.event_id for rec in rt.sink.events()]
    assert sorted(produced) == sorted(accepted)


def test_more_batches_in_flight_than_allowed_get_503_busy_not_queued() -> None:
    import threading

    rt = runtime(max_inflight_batches=1)
    gate, entered = threading.Event(), threading.Event()
    real = rt.sink.publish

    def slow(records: Any) -> None:
        entered.set()
        gate.wait(10)
        real(records)

    rt.sink.publish = slow  # type: ignore[method-assign]
    with TestClient(create_app(rt)) as c:
        first: list[int] = []
        t = threading.Thread(target=lambda: first.append(c.post("/v1/events", json=[placed("a")], headers=AUTH).status_code))
        t.start()
        assert entered.wait(10)
        r = c.post("/v1/events", json=[placed("b")], headers=AUTH)
        assert r.status_code == 503 and r.json()["error"] == "busy" and "retry-after" in r.headers
        gate.set()
        t.join(10)
    assert first == [200] and [rec.event_id for rec in rt.sink.events()] == ["a"]


async def _asgi_post(app: Any, body: bytes, root_path: str = "", headers: dict[str, str] | None = None) -> list[Any]:
    """One POST /v1/events straight through the ASGI app; the messages it sends back."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return pending.pop() if pending else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    raw = [(k.lower().encode(), v.encode()) for k, v in {**AUTH, "Content-Type": "application/json",
                                                         "Content-Length": str(len(body)), **(headers or {})}.items()]
    await app({"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
               "path": root_path + "/v1/events", "raw_path": (root_path + "/v1/events").encode(), "query_string": b"",
               "root_path": root_path, "headers": raw, "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)},
              receive, send)
    return sent


@pytest.mark.parametrize("case", ["ok", "retry", "unauthorized", "malformed"])
def test_events_answer_is_byte_for_byte_the_same_through_the_fast_path_and_the_fastapi_route(case: str) -> None:
    """POST /v1/events is answered by the ASGI middleware; a mounted app (root_path) reaches the FastAPI route
    instead: status, headers and body must not differ."""
    import asyncio

    answers = []
    for root_path in ("", "/ingest"):
        rt = runtime()
        if case == "retry":
            def down(records: Any) -> None:
                raise SinkUnavailable("broker down")

            rt.sink.publish = down  # type: ignore[method-assign]
        app = create_app(rt)
        body = b"[1," if case == "malformed" else orjson.dumps([placed("a"), {"type": "order.placed"}])
        extra = {"Authorization": "Bearer nope"} if case == "unauthorized" else None
        sent = asyncio.run(_asgi_post(app, body, root_path, extra))
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        answers.append((sent[0]["status"], list(sent[0]["headers"]), sent[1]["body"]))
    fast, routed = answers
    assert fast == routed
    assert fast[0] == {"ok": 200, "retry": 503, "unauthorized": 401, "malformed": 400}[case]
    assert (b"content-type", b"application/json") in fast[1]
    if case == "retry":
        assert (b"retry-after", b"2") in fast[1]


def test_other_routes_are_still_counted_by_route(client: TestClient) -> None:
    client.get("/healthz")
    client.get("/no-such-page")
    text = client.get("/metrics").text
    assert 'floatbridge_ingest_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert 'floatbridge_ingest_http_requests_total{method="GET",route="other",status="404"} 1.0' in text


def test_serve_picks_the_c_http_parser_and_loop_when_importable_else_the_pure_python_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from services.ingest.cli import server_impl

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert server_impl() == ("httptools", "uvloop")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert server_impl() == ("h11", "asyncio")
