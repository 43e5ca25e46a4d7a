"""Verify a Floatbridge webhook (Standard Webhooks scheme). Standard library only: copy this file.

    from verify import verify, WebhookVerificationError
    event = verify(secret, request_headers, raw_body)   # raises WebhookVerificationError

`secret` is the `whsec_...` value shown when the endpoint was registered or rotated.
Pass a set (or any container with add) as `seen_ids` to refuse replayed message ids: a genuine one received
again raises WebhookDuplicate (a WebhookVerificationError): answer it 2xx without acting on it again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, MutableSet
from typing import Any


class WebhookVerificationError(Exception):
    """The request is not a genuine, fresh, first delivery; answer 400 and do not act on it."""


class WebhookDuplicate(WebhookVerificationError):
    """Genuine and fresh, but its webhook-id was already received: Floatbridge sent it again (your answer to
    the first one was lost or late, or ops replayed a dead letter). Do not act on it again, but answer 2xx:
    a 4xx makes Floatbridge retry it until it is dead-lettered."""


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"missing header {name}")


def _key(secret: str) -> bytes:
    raw = secret[len("whsec_"):] if secret.startswith("whsec_") else secret
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the webhook secret is not valid base64 (expected whsec_<base64>)") from None


def verify(secret: str, headers: Mapping[str, str], body: bytes | str, now: float | None = None,
           tolerance: int = 300, seen_ids: MutableSet[str] | None = None) -> Any:
    """Return the parsed JSON body if a `v1` signature matches `secret`; raise WebhookVerificationError otherwise."""
    msg_id = _header(headers, "webhook-id")
    ts_text = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        ts = int(ts_text)
    except ValueError:
        raise WebhookVerificationError(f"webhook-timestamp is not an integer: {ts_text[:32]!r}") from None
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance:
        raise WebhookVerificationError(f"webhook-timestamp is {int(current - ts)} s away from now "
                                       f"(tolerance {tolerance} s): stale or clock skew")
    payload = body.encode("utf-8") if isinstance(body, str) else body
    digest = hmac.new(_key(secret), f"{msg_id}.{ts}.".encode() + payload, hashlib.sha256).digest()
    expected = base64.b64encode(digest).decode("ascii")
    matched = False
    for candidate in signatures.split():
        version, _, sig = candidate.partition(",")
        # Compared as bytes: compare_digest refuses non-ASCII text with a TypeError, which a forged header
        # would otherwise turn into a crash of the receiver instead of a refusal.
        if version == "v1" and hmac.compare_digest(sig.encode("utf-8", "surrogateescape"), expected.encode("ascii")):
            matched = True
    if not matched:
        raise WebhookVerificationError("no signature matches: wrong secret or modified body")
    if seen_ids is not None:
        if msg_id in seen_ids:
            raise WebhookDuplicate(f"webhook-id {msg_id} was already received (replay)")
        seen_ids.add(msg_id)
    return json.loads(payload)
