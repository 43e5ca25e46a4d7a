"""Standard Webhooks signing (https://www.standardwebhooks.com/) and delivery backoff."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence


class BadSecret(ValueError):
    pass


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def secret_bytes(secret: str) -> bytes:
    if not secret.startswith("whsec_"):
        raise BadSecret("webhook secret must start with 'whsec_'")
    try:
        return base64.b64decode(secret[len("whsec_"):], validate=True)
    except ValueError:
        raise BadSecret("webhook secret is not valid base64 after 'whsec_'") from None


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def headers(secrets_: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """One signature per active secret (two during a rotation), space separated."""
    if not secrets_:
        raise BadSecret("no active webhook secret")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, msg_id, timestamp, body) for s in secrets_),
        "content-type": "application/json",
    }


def backoff_seconds(attempt: int, base: float, cap: float, jitter: float) -> float:
    """Exponential backoff; `jitter` in [0, 1) is drawn by the caller so this stays deterministic."""
    delay: float = min(cap, base * (2 ** max(0, attempt - 1)))
    return delay * (0.5 + jitter / 2)
