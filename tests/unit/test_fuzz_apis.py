"""Hostile input against the ingest and acceptance APIs (hypothesis-generated requests through
FastAPI's TestClient): every case gets a clear 4xx or a per-event rejection, never a 5xx, and nothing
is stored wrongly. FUZZ_CASES counts the cases run (printed at the end of the module)."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from services.common.ratelimit import FailedAuthLimiter
from services.disbursement.adapters.http_api import create_app as disb_app
from services.disbursement.bootstrap import bootstrap
from services.disbursement.domain.webhooks_signing import headers as sign_headers
from services.disbursement.settings import DisbursementSettings
from services.disbursement.verifier.verify import WebhookVerificationError, verify
from services.ingest.adapters.http import create_app as ingest_app
from tests.unit.disbursement_helpers import Bus, Clock, Transport, limit, offer, onboarded
from tests.unit.ingest_helpers import KEY, placed, runtime

pytestmark = pytest.mark.unit
FUZZ_CASES: Counter[str] = Counter()
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
KEY1, KEY2 = "key-m1-0123456789abcdef", "key-m2-0123456789abcdef"

SQLI = ["' OR '1'='1", "'; DROP TABLE offers; --", "\" OR 1=1 --", "1; SELECT pg_sleep(5)", "%' AND 1=0 UNION SELECT 1 --"]
TRICKS = ["\u202eevil\u202c", "a\u200bb", "nul\x00byte", "\ud800", "\udfff", "ｍ－１", "e\u0301", "\ufeffbom", "𝔪𝔢"]
hostile_text = st.sampled_from(SQLI + TRICKS) | st.text(max_size=40)
json_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) \
    | hostile_text
any_json = st.recursive(json_leaf, lambda c: st.lists(c, max_size=4) | st.dictionaries(hostile_text, c, max_size=4),
                        max_leaves=15)
amounts = st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | hostile_text \
    | st.sampled_from(["12.345", "1e3", "0x10", "NaN"])
times = st.sampled_from(["1970-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
                         "2999-01-01T00:00:00Z", "2024-05-01T11:00:00", "2024-13-45T99:00:00Z", ""]) | hostile_text


@st.composite
def hostile_event(draw: st.DrawFn) -> Any:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(any_json)
    event = placed(draw(hostile_text | st.just("evt-x")), time=draw(times),
                   amount={"amount": draw(amounts), "currency": draw(st.sampled_from(["BRL", "JPY", "KWD", "brl", "XXX"]))},
                   subject=draw(hostile_text | st.just("m-1")))
    if kind == 2:
        event["data"]["buyer_id"] = draw(hostile_text)
        event["data"]["order_id"] = draw(hostile_text)
    if kind == 3:
        event["data"]["amount"] = {"value": draw(st.sampled_from(["1.234", "12.3", "-1", "1e2", "9" * 40])),
                                   "currency": draw(st.sampled_from(["BRL", "JPY", "KWD"]))}
    return event


def _no_5xx_but_documented(r: Any) -> None:
    assert r.status_code < 500 or r.status_code == 503, (r.status_code, r.text[:300])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(hostile_event(), min_size=1, max_size=8))
def test_hostile_batches_get_per_event_reasons_and_only_valid_events_are_produced(batch: list[Any]) -> None:
    rt = runtime()
    with TestClient(ingest_app(rt)) as c:
        body = json.dumps(batch, ensure_ascii=False).encode("utf-8", "surrogatepass")
        r = c.post("/v1/events", content=body, headers=AUTH)
    FUZZ_CASES["ingest.batch"] += 1
    _no_5xx_but_documented(r)
    if r.status_code == 400:
        assert r.json()["error"] == "malformed_body"
        return
    assert r.status_code == 200, r.text[:300]
    results = r.json()["results"]
    assert len(results) == len(batch)
    for res in results:
        assert res["status"] in {"accepted", "duplicate", "rejected"}
        if res["status"] == "rejected":
            assert res["reason"] and res["errors"], res
    for ev in _produced(rt):  # whatever got through is canonical: integer minor units, hashed buyer
        amount = ev["data"].get("amount")
        if isinstance(amount, dict):
            assert isinstance(amount["amount"], int) and 0 <= amount["amount"] <= 10**15
        if "buyer_id" in ev["data"]:
            assert ev["data"]["buyer_id"].startswith("bh_"), ev


def _produced(rt: Any) -> list[dict[str, Any]]:
    return [json.loads(rec.payload) for rec in rt.sink.events()]


@pytest.mark.parametrize("body, content_type, expect", [
    (b"{not json", "application/json", 400),
    (b"[" * 100_000 + b"]" * 100_000, "application/json", 400),  # beyond the parser's depth limit: malformed body
    (b"[" + b"[" * 900 + b"]" * 900 + b"]", "application/json", 200),  # deep but parseable: rejected per event
    (b'{"a": 1}', "application/json", 400),  # not an array
    (b"\xff\xfe\x00", "application/json", 400),
    (b"[1e999999]", "application/json", 200),  # a number out of range fails its event, not the batch
    (b"x" * 9_000_000, "application/json", 413),  # oversized
])
def test_malformed_nested_and_oversized_bodies_get_a_clear_4xx(body: bytes, content_type: str, expect: int) -> None:
    with TestClient(ingest_app(runtime())) as c:
        r = c.post("/v1/events", content=body, headers={**AUTH, "Content-Type": content_type})
    FUZZ_CASES["ingest.body"] += 1
    assert r.status_code == expect, r.text[:200]
    if expect == 200:
        assert [x["status"] for x in r.json()["results"]] == ["rejected"]
    else:
        assert r.json()["error"] and r.json()["detail"]


def test_event_id_collision_with_different_content_is_a_conflict_and_never_overwrites() -> None:
    rt = runtime()
    with TestClient(ingest_app(rt)) as c:
        first = c.post("/v1/events", json=[placed("same-id")], headers=AUTH).json()["results"][0]
        second = c.post("/v1/events", json=[placed("same-id", amount={"amount": 1, "currency": "BRL"})],
                        headers=AUTH).json()["results"][0]
    FUZZ_CASES["ingest.collision"] += 2
    assert first["status"] == "accepted"
    assert second["status"] == "rejected" and second["reason"] == "conflict"


def test_brute_forced_marketplace_keys_are_rate_limited_with_retry_after() -> None:
    limiter = FailedAuthLimiter(limit=5, window=60)
    with TestClient(ingest_app(runtime(), limiter)) as c:
        codes = [c.post("/v1/events", json=[], headers={"Authorization": f"Bearer guess-{i}"}).status_code
                 for i in range(8)]
        after = c.post("/v1/events", json=[placed("ok-1")], headers=AUTH)
    FUZZ_CASES["ingest.bruteforce"] += 9
    assert codes[:5] == [401] * 5 and codes[5:] == [429] * 3
    assert after.status_code == 429 and int(after.headers["Retry-After"]) >= 1, "the address is locked out"


def test_limiter_forgets_failures_after_the_window() -> None:
    now = [0.0]
    lim = FailedAuthLimiter(limit=2, window=10, clock=lambda: now[0])
    lim.failed("1.2.3.4")
    lim.failed("1.2.3.4")
    assert lim.retry_after("1.2.3.4") > 0 and lim.retry_after("5.6.7.8") == 0
    now[0] = 11
    assert lim.retry_after("1.2.3.4") == 0


# ------------------------------------------------------------------------------------------- acceptance
@pytest.fixture()
def disb(tmp_path: Any) -> dict[str, Any]:
    settings_ = DisbursementSettings(admin_api_key="admin-secret-key-0123456789")
    svc = bootstrap(settings_, db_url=f"sqlite:///{tmp_path}/d.db", bus=Bus(), transport=Transport(), clock=Clock(),
                    registry=CollectorRegistry())
    svc.register_merchant("m1", None, KEY1)
    svc.register_merchant("m2", None, KEY2)
    svc.handle(onboarded("m1"))
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 20_000, 300))
    return {"svc": svc, "limiter": FailedAuthLimiter(limit=1000)}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offer_id=hostile_text, idem=hostile_text, key=st.sampled_from([KEY1, KEY2, "", "x" * 5000]) | hostile_text)
def test_hostile_acceptances_never_5xx_and_pay_at_most_once(disb: dict[str, Any], offer_id: str, idem: str,
                                                            key: str) -> None:
    svc = disb["svc"]
    with TestClient(disb_app(svc, disb["limiter"])) as c:
        try:
            r = c.post(f"/v1/offers/{quote(offer_id, safe='')}/accept",
                       headers={"Authorization": f"Bearer {key}", "Idempotency-Key": idem})
        except (UnicodeEncodeError, ValueError, httpx.InvalidURL):
            return  # the HTTP client itself cannot put this text in a header or path
    FUZZ_CASES["disbursement.accept"] += 1
    _no_5xx_but_documented(r)
    assert r.json().get("error") or r.json().get("detail") or r.status_code in (200, 202)
    loans = svc.engine.connect().exec_driver_sql("SELECT merchant_id, count(*) FROM loans GROUP BY 1").all()
    assert all(m == "m1" for m, _ in loans) and sum(n for _, n in loans) <= 1, loans


def test_merchant_cannot_accept_or_read_another_merchants_offer(disb: dict[str, Any]) -> None:
    with TestClient(disb_app(disb["svc"], disb["limiter"])) as c:
        r = c.post("/v1/offers/of1/accept", headers={"Authorization": f"Bearer {KEY2}", "Idempotency-Key": "k"})
        g = c.get("/v1/offers/of1", headers={"Authorization": f"Bearer {KEY2}"})
    FUZZ_CASES["disbursement.cross_merchant"] += 2
    assert r.status_code == 404 and g.status_code == 404


def test_brute_forced_merchant_and_admin_keys_are_rate_limited(disb: dict[str, Any]) -> None:
    with TestClient(disb_app(disb["svc"], FailedAuthLimiter(limit=3, window=60))) as c:
        codes = [c.post("/v1/offers/of1/accept", headers={"Authorization": f"Bearer guess-{i}-0123456789",
                                                           "Idempotency-Key": "k"}).status_code for i in range(3)]
        codes += [c.get("/admin/merchants", headers={"Authorization": "Bearer nope"}).status_code]
    FUZZ_CASES["disbursement.bruteforce"] += 4
    assert codes == [401, 401, 401, 429]


def test_replayed_tampered_and_stale_webhooks_are_refused() -> None:
    secret = "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
    body = b'{"type":"loan.disbursed","data":{"loan_id":"l1"}}'
    now = int(time.time())
    good = sign_headers([secret], "msg_1", now, body)
    seen: set[str] = set()
    assert verify(secret, good, body, seen_ids=seen)["type"] == "loan.disbursed"
    cases = [
        (good, body),  # replay of the same message id
        (sign_headers([secret], "msg_2", now, body), body.replace(b"l1", b"l2")),  # tampered body
        (sign_headers([secret], "msg_3", now - 3600, body), body),  # stale timestamp
        (sign_headers(["whsec_" + "b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldC0wMTIz"], "msg_4", now, body), body),  # wrong key
        ({**sign_headers([secret], "msg_5", now, body), "webhook-signature": "v1,AAAA"}, body),
    ]
    for hdrs, payload in cases:
        with pytest.raises(WebhookVerificationError):
            verify(secret, hdrs, payload, seen_ids=seen)
    FUZZ_CASES["webhook"] += len(cases) + 1


def test_zz_report_fuzz_case_count(capsys: pytest.CaptureFixture[str]) -> None:
    total = sum(FUZZ_CASES.values())
    with capsys.disabled():
        print(f"\nfuzz cases run: {total} {dict(FUZZ_CASES)}")
    assert total == 0 or total >= 100
