"""HTTP API (merchant auth, idempotency, admin) and the webhook dispatcher (signing, backoff, dead letter)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from services.disbursement.adapters.http_api import create_app
from services.disbursement.adapters.orm import merchants, webhook_deliveries
from services.disbursement.bootstrap import bootstrap
from services.disbursement.settings import DisbursementSettings
from services.disbursement.verifier.verify import verify
from tests.unit.disbursement_helpers import T0, Bus, Clock, Transport, limit, offer, onboarded

pytestmark = pytest.mark.unit
KEY1, KEY2 = "key-m1-0123456789abcdef", "key-m2-0123456789abcdef"


@pytest.fixture()
def env(tmp_path: Any) -> dict[str, Any]:
    transport, clock = Transport(), Clock()
    settings = DisbursementSettings(admin_api_key="admin-secret-key", webhook_max_attempts=3,
                                    webhook_disable_after_failures=5)
    svc = bootstrap(settings, db_url=f"sqlite:///{tmp_path}/d.db", bus=Bus(), transport=transport, clock=clock,
                    registry=CollectorRegistry())
    client = TestClient(create_app(svc))
    return {"svc": svc, "client": client, "transport": transport, "clock": clock}


def _setup_offer(svc: Any) -> None:
    svc.register_merchant("m1", "https://m1.example/hooks", KEY1)
    svc.register_merchant("m2", None, KEY2)
    svc.handle(onboarded("m1"))
    svc.handle(limit("m1", 100_000))
    svc.handle(offer("m1", "of1", 20_000, 300))


def test_accept_over_http_with_idempotency_replay(env: dict[str, Any]) -> None:
    svc, client = env["svc"], env["client"]
    _setup_offer(svc)
    h = {"Authorization": f"Bearer {KEY1}", "Idempotency-Key": "abc"}
    first = client.post("/v1/offers/of1/accept", headers=h)
    assert first.status_code == 200, first.text
    assert first.json()["fee"] == {"amount": 300, "currency": "BRL"}
    second = client.post("/v1/offers/of1/accept", headers=h)
    assert second.json() == first.json() and second.headers["Idempotent-Replayed"] == "true"
    loan_id = first.json()["loan_id"]
    assert client.get(f"/v1/loans/{loan_id}", headers=h).json()["state"] == "disbursed"
    assert client.get(f"/v1/loans/{loan_id}", headers={"Authorization": f"Bearer {KEY2}"}).status_code == 404


def test_http_rejects_bad_key_and_other_merchants_offer(env: dict[str, Any]) -> None:
    svc, client = env["svc"], env["client"]
    _setup_offer(svc)
    assert client.post("/v1/offers/of1/accept", headers={"Authorization": "Bearer nope",
                                                         "Idempotency-Key": "k"}).status_code == 401
    r = client.post("/v1/offers/of1/accept", headers={"Authorization": f"Bearer {KEY2}", "Idempotency-Key": "k"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "offer_not_found"
    r = client.post("/v1/offers/of1/accept", headers={"Authorization": f"Bearer {KEY1}"})
    assert r.status_code == 400


def test_admin_api_requires_admin_key_and_manages_merchants(env: dict[str, Any]) -> None:
    client = env["client"]
    assert client.get("/admin/merchants", headers={"Authorization": "Bearer wrong"}).status_code == 403
    h = {"Authorization": "Bearer admin-secret-key"}
    r = client.post("/admin/merchants", headers=h, json={"merchant_id": "m9", "webhook_url": "https://x/y"})
    assert r.status_code == 201 and r.json()["webhook_secret"].startswith("whsec_")
    r = client.post("/admin/merchants/m9/rotate-secret", headers=h)
    assert r.status_code == 200
    listed = client.get("/admin/merchants", headers=h).json()
    assert listed == [{"merchant_id": "m9", "currency": None, "status": "active", "webhook_url": "https://x/y",
                       "active_secrets": 2, "event_types": [], "webhook_enabled": True, "has_api_key": False}]
    assert client.put("/admin/merchants/m9/api-key", headers=h, json={"api_key": "k" * 20}).status_code == 204
    assert env["svc"].authenticate("k" * 20) == "m9"


def test_health_ready_and_metrics(env: dict[str, Any]) -> None:
    svc, client = env["svc"], env["client"]
    _setup_offer(svc)
    client.post("/v1/offers/of1/accept", headers={"Authorization": f"Bearer {KEY1}", "Idempotency-Key": "a"})
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json()["schema_revision"] == "0013"
    text = client.get("/metrics").text
    assert 'floatbridge_disbursement_disbursed_minor_total{currency="BRL"} 20000.0' in text
    assert 'floatbridge_disbursement_outstanding_principal_minor{currency="BRL"} 20000.0' in text
    assert 'floatbridge_disbursement_offers{state="accepted"} 1.0' in text
    assert "floatbridge_disbursement_outbox_lag_seconds" in text


def test_rotation_signs_with_both_secrets_and_verifier_accepts_either(env: dict[str, Any]) -> None:
    svc, transport = env["svc"], env["transport"]
    old = svc.register_merchant("m1", "https://m1.example/hooks", KEY1)
    new = svc.rotate_secret("m1")
    svc.handle(limit("m1", 100_000))
    assert svc.dispatch_webhooks(T0) == 1
    _, headers, body = transport.calls[0]
    sigs = headers["webhook-signature"].split()
    assert len(sigs) == 2
    for secret in (old, new):
        raw = base64.b64decode(secret.removeprefix("whsec_"))
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        assert "v1," + base64.b64encode(hmac.new(raw, signed, hashlib.sha256).digest()).decode() in sigs
        assert verify(secret, headers, body, now=T0.timestamp())["type"] == "credit_limit.updated"


def test_failed_webhook_backs_off_then_dead_letters_and_disables_endpoint(env: dict[str, Any]) -> None:
    svc, transport = env["svc"], env["transport"]
    transport.status = 500
    svc.register_merchant("m1", "https://m1.example/hooks", KEY1)
    svc.handle(limit("m1", 100_000))
    now = T0
    assert svc.dispatch_webhooks(now) == 1
    assert svc.dispatch_webhooks(now) == 0  # backing off, not due yet
    for _ in range(2):
        now += timedelta(hours=2)
        assert svc.dispatch_webhooks(now) == 1
    with svc.engine.connect() as conn:
        row = conn.execute(sa.select(webhook_deliveries)).one()
    assert (row.state, row.attempts, row.last_status) == ("dead", 3, 500)
    for i in range(2):  # two more failing deliveries reach the disable threshold (5)
        svc.handle(limit("m1", 100_000 + i, at=T0 + timedelta(minutes=i + 1)))
    now += timedelta(hours=2)
    svc.dispatch_webhooks(now)
    now += timedelta(hours=2)
    svc.dispatch_webhooks(now)
    with svc.engine.connect() as conn:
        enabled = conn.execute(sa.select(merchants.c.webhook_enabled)).scalar_one()
    assert enabled is False
    assert svc.dispatch_webhooks(now + timedelta(days=1)) == 0


def test_one_dispatch_pass_records_each_outcome_in_delivery_order(env: dict[str, Any]) -> None:
    svc = env["svc"]
    svc.register_merchant("m1", "https://m1.example/hooks", KEY1)
    svc.register_merchant("m2", "https://m2.example/hooks", "key-m2-0123456789abcdef")
    answers = {"m1": [500, 200], "m2": [500, 500]}

    def transport(url: str, headers: Any, body: bytes) -> int:
        return answers["m1" if "m1.example" in url else "m2"].pop(0)

    svc.transport = transport
    for i in range(2):
        svc.handle(limit("m1", 100_000 + i, at=T0 + timedelta(minutes=i)))
        svc.handle(limit("m2", 200_000 + i, at=T0 + timedelta(minutes=i)))
    assert svc.dispatch_webhooks(T0 + timedelta(minutes=5)) == 4
    with svc.engine.connect() as conn:
        states = sorted((r.merchant_id, r.state, r.attempts, r.last_status)
                        for r in conn.execute(sa.select(webhook_deliveries)).all())
        failures = dict(conn.execute(sa.select(merchants.c.merchant_id, merchants.c.webhook_failures)).all())
    assert states == [("m1", "delivered", 1, 200), ("m1", "pending", 1, 500),
                      ("m2", "pending", 1, 500), ("m2", "pending", 1, 500)]
    assert failures == {"m1": 0, "m2": 2}, "a success resets the count, failures add up"


def _signed_by(secret: str, headers: dict[str, str], body: bytes, at: Any) -> bool:
    from services.disbursement.verifier.verify import WebhookVerificationError

    try:
        verify(secret, headers, body, now=at.timestamp())
    except WebhookVerificationError:
        return False
    return True


def test_re_registering_a_merchant_keeps_the_previous_secret_signing_for_the_overlap_then_drops_it(
        tmp_path: Any) -> None:
    transport, clock = Transport(), Clock()
    svc = bootstrap(DisbursementSettings(webhook_secret_overlap_seconds=3_600), db_url=f"sqlite:///{tmp_path}/d.db",
                    bus=Bus(), transport=transport, clock=clock, registry=CollectorRegistry())
    old = svc.register_merchant("m1", "https://m1.example/hooks", KEY1)
    clock.now = T0 + timedelta(minutes=10)
    new = svc.register_merchant("m1", "https://m1.example/new-hooks", KEY1)  # new endpoint, new secret
    assert new != old
    svc.handle(limit("m1", 100_000))
    inside = T0 + timedelta(minutes=69)  # 59 minutes into the one-hour overlap
    assert svc.dispatch_webhooks(inside) == 1
    url, headers, body = transport.calls[-1]
    assert url == "https://m1.example/new-hooks"
    assert len(headers["webhook-signature"].split()) == 2
    assert _signed_by(old, headers, body, inside) and _signed_by(new, headers, body, inside)
    assert [m["active_secrets"] for m in svc.list_merchants()] == [2]

    svc.handle(limit("m1", 90_000, at=T0 + timedelta(hours=2)))
    after = T0 + timedelta(minutes=71)  # the overlap ended at T0 + 70 min
    clock.now = after
    assert svc.dispatch_webhooks(after) == 1
    _, headers, body = transport.calls[-1]
    assert len(headers["webhook-signature"].split()) == 1
    assert _signed_by(new, headers, body, after) and not _signed_by(old, headers, body, after)
    assert [m["active_secrets"] for m in svc.list_merchants()] == [1]


def test_re_registering_with_the_same_secret_is_no_rotation_and_rotating_with_drop_previous_ends_the_overlap(
        env: dict[str, Any]) -> None:
    svc, transport = env["svc"], env["transport"]
    given = "whsec_" + base64.b64encode(b"0" * 24).decode()
    svc.register_merchant("m1", "https://m1.example/hooks", KEY1, webhook_secret=given)
    svc.register_merchant("m1", "https://m1.example/hooks", KEY1, webhook_secret=given)
    assert [m["active_secrets"] for m in svc.list_merchants()] == [1]
    newer = svc.rotate_secret("m1")
    assert [m["active_secrets"] for m in svc.list_merchants()] == [2]
    newest = svc.rotate_secret("m1", drop_previous=True)
    svc.handle(limit("m1", 100_000))
    assert svc.dispatch_webhooks(T0) == 1
    _, headers, body = transport.calls[-1]
    assert _signed_by(newest, headers, body, T0)
    assert not _signed_by(newer, headers, body, T0) and not _signed_by(given, headers, body, T0)


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "7776001"])
def test_a_webhook_secret_overlap_out_of_range_stops_the_service_at_start(value: str) -> None:
    from services.common.settings import SettingsError, load
    from services.disbursement.settings import PREFIX

    with pytest.raises(SettingsError, match="WEBHOOK_SECRET_OVERLAP_SECONDS"):
        load(DisbursementSettings, PREFIX, environ={PREFIX + "WEBHOOK_SECRET_OVERLAP_SECONDS": value})
