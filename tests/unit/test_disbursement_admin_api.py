"""Admin API edge cases found by fuzzing: clear 4xx answers, never a 500."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from services.disbursement.adapters.http_api import create_app
from services.disbursement.bootstrap import bootstrap
from services.disbursement.settings import DisbursementSettings
from tests.unit.disbursement_helpers import Bus, Clock, Transport

pytestmark = pytest.mark.unit
ADMIN = {"Authorization": "Bearer admin-secret-key"}


@pytest.fixture()
def client(tmp_path: Any) -> TestClient:
    svc = bootstrap(DisbursementSettings(admin_api_key="admin-secret-key"), db_url=f"sqlite:///{tmp_path}/d.db",
                    bus=Bus(), transport=Transport(), clock=Clock(), registry=CollectorRegistry())
    return TestClient(create_app(svc))


def test_registering_a_second_merchant_with_a_taken_api_key_is_a_conflict(client: TestClient) -> None:
    key = "shared-key-0123456789"
    assert client.post("/admin/merchants", json={"merchant_id": "m1", "api_key": key}, headers=ADMIN).status_code == 201
    second = client.post("/admin/merchants", json={"merchant_id": "m2", "api_key": key}, headers=ADMIN)
    assert second.status_code == 409 and second.json()["error"]["code"] == "api_key_in_use"
    assert "m1" not in second.text  # does not reveal who holds the key
    listed = {m["merchant_id"] for m in client.get("/admin/merchants", headers=ADMIN).json()}
    assert listed == {"m1"}


def test_moving_a_taken_api_key_to_another_merchant_is_a_conflict(client: TestClient) -> None:
    client.post("/admin/merchants", json={"merchant_id": "m1", "api_key": "key-one-0123456789"}, headers=ADMIN)
    client.post("/admin/merchants", json={"merchant_id": "m2", "api_key": "key-two-0123456789"}, headers=ADMIN)
    moved = client.put("/admin/merchants/m2/api-key", json={"api_key": "key-one-0123456789"}, headers=ADMIN)
    assert moved.status_code == 409 and moved.json()["error"]["code"] == "api_key_in_use"


@pytest.mark.parametrize("value", [0.0, "yes", 1, None])
def test_kill_switch_takes_only_a_real_boolean(client: TestClient, value: Any) -> None:
    answer = client.put("/admin/kill-switch", json={"on": value}, headers=ADMIN)
    assert answer.status_code == 422
    assert client.put("/admin/kill-switch", json={"on": False}, headers=ADMIN).json() == {"on": False}


def test_committed_openapi_spec_matches_the_app_and_declares_error_answers() -> None:
    import json
    from pathlib import Path

    from services.disbursement.adapters.http_api import openapi_spec

    path = Path(__file__).resolve().parents[2] / "services/disbursement/openapi.json"
    generated = json.loads(json.dumps(openapi_spec()))
    assert json.loads(path.read_text()) == generated, "regenerate services/disbursement/openapi.json"
    accept = generated["paths"]["/v1/offers/{offer_id}/accept"]["post"]["responses"]
    assert {"200", "202", "400", "401", "404", "409", "422", "429", "503"} <= set(accept)
    assert accept["409"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
