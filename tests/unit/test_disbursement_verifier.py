"""The shipped merchant-side verifier against signatures computed by hand from the Standard Webhooks spec."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from services.disbursement.domain.webhooks_signing import headers as sign_headers
from services.disbursement.domain.webhooks_signing import new_secret
from services.disbursement.verifier.verify import WebhookVerificationError, verify

pytestmark = pytest.mark.unit
SECRET = "whsec_" + base64.b64encode(b"a fixed 24-byte secret!!").decode()
TS = 1_740_000_000
BODY = json.dumps({"type": "loan.disbursed", "id": "evt_1", "data": {"loan_id": "ln_1"}}).encode()


def spec_headers(secret: str = SECRET, msg_id: str = "msg_1", ts: int = TS, body: bytes = BODY) -> dict[str, str]:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    sig = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": f"v1,{sig}"}


def test_accepts_signature_computed_from_the_spec() -> None:
    assert verify(SECRET, spec_headers(), BODY, now=TS + 10)["data"]["loan_id"] == "ln_1"


def test_our_signer_matches_the_spec() -> None:
    assert sign_headers([SECRET], "msg_1", TS, BODY)["webhook-signature"] == spec_headers()["webhook-signature"]


def test_rejects_tampered_body() -> None:
    with pytest.raises(WebhookVerificationError, match="modified body"):
        verify(SECRET, spec_headers(), BODY.replace(b"ln_1", b"ln_2"), now=TS)


def test_rejects_wrong_secret() -> None:
    with pytest.raises(WebhookVerificationError, match="wrong secret"):
        verify(new_secret(), spec_headers(), BODY, now=TS)


def test_rejects_stale_timestamp() -> None:
    with pytest.raises(WebhookVerificationError, match="stale"):
        verify(SECRET, spec_headers(), BODY, now=TS + 301)


def test_rejects_replayed_id() -> None:
    seen: set[str] = set()
    verify(SECRET, spec_headers(), BODY, now=TS, seen_ids=seen)
    with pytest.raises(WebhookVerificationError, match="replay"):
        verify(SECRET, spec_headers(), BODY, now=TS, seen_ids=seen)


def test_accepts_when_any_of_two_rotated_signatures_matches() -> None:
    h = spec_headers()
    h["webhook-signature"] = "v1,AAAA " + h["webhook-signature"]
    assert verify(SECRET, h, BODY, now=TS)["id"] == "evt_1"


def test_missing_header_is_named() -> None:
    h = spec_headers()
    del h["webhook-timestamp"]
    with pytest.raises(WebhookVerificationError, match="missing header webhook-timestamp"):
        verify(SECRET, h, BODY, now=TS)


@pytest.mark.parametrize("forged", ["v1,é" + "A" * 40, "v1,\udcff", "v1,ü v1,ß"])
def test_a_forged_signature_with_non_ascii_characters_is_refused_not_a_crash(forged: str) -> None:
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify(SECRET, {**spec_headers(), "webhook-signature": forged}, BODY, now=TS)
