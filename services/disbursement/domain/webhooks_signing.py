"""Standard Webhooks signing (https://www.standardwebhooks.com/) and delivery backoff."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from services.common.timeutil import format_rfc3339, parse_rfc3339


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


# A merchant's stored secrets (merchants.webhook_secrets, newest first): the current one as a plain string,
# earlier ones still inside their rotation overlap as {"secret": ..., "expires_at": RFC 3339 UTC}. A plain
# string never expires (rows written before overlaps existed keep working as they did).
MAX_SECRETS = 4  # the current secret plus at most three still overlapping


def _expiry(entry: Any) -> datetime | None:
    text = entry.get("expires_at") if isinstance(entry, dict) else None
    return parse_rfc3339(text) if isinstance(text, str) else None


def _secret_of(entry: Any) -> str | None:
    value = entry.get("secret") if isinstance(entry, dict) else entry
    return value if isinstance(value, str) else None


def active_secrets(stored: Sequence[Any] | None, now: datetime) -> list[str]:
    """The secrets that sign a delivery made at `now`: every stored one whose overlap has not ended."""
    out: list[str] = []
    for entry in stored or ():
        secret, until = _secret_of(entry), _expiry(entry)
        if secret is not None and (until is None or now < until) and secret not in out:
            out.append(secret)
    return out


def rotated(stored: Sequence[Any] | None, new: str, now: datetime, overlap: timedelta) -> list[Any]:
    """The stored list after `new` becomes the current secret at `now`: every secret still active keeps
    signing until `now + overlap` (or its own earlier end), so a receiver that has not switched yet still
    verifies; an overlap of zero drops them at once. Giving the current secret again changes nothing."""
    active = active_secrets(stored, now)
    if active and active[0] == new:
        return list(stored or ())
    end = now + overlap
    kept: list[Any] = []
    if overlap > timedelta(0):
        for entry in stored or ():
            secret, until = _secret_of(entry), _expiry(entry)
            if secret is None or secret == new or secret not in active or any(k["secret"] == secret for k in kept):
                continue
            stop = end if until is None else min(until, end)
            kept.append({"secret": secret, "expires_at": format_rfc3339(stop)})
    return [new, *kept[:MAX_SECRETS - 1]]


def backoff_seconds(attempt: int, base: float, cap: float, jitter: float) -> float:
    """Exponential backoff; `jitter` in [0, 1) is drawn by the caller so this stays deterministic."""
    delay: float = min(cap, base * (2 ** max(0, attempt - 1)))
    return delay * (0.5 + jitter / 2)
