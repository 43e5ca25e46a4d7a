"""Payout rails: a sandbox that records payouts in its own table, and the marketplace's payout API."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from services.common.timeutil import utc_now
from services.disbursement.adapters.orm import sandbox_payouts
from services.disbursement.adapters.repository import run
from services.disbursement.ports import PayoutFailed, PayoutRejected, PayoutRequest

_INSERT = sa.insert(sandbox_payouts)
# 4xx answers that say "not now" rather than "never": timeout, conflict (a request in flight), too early,
# too many requests; and the ones that point at our own configuration rather than at this payout (credentials,
# permissions, a wrong URL or method, a proxy): a bad API key or base URL must not cancel every loan in flight,
# it leaves them `accepted` for recovery while ops fix it (the payout-failure alert fires). Every other 4xx
# (400, 402, 410, 422, 451...) refuses this payout, and a retry cannot change that.
TRANSIENT_4XX = frozenset({401, 403, 404, 405, 407, 408, 409, 425, 429})


def is_permanent_refusal(status_code: int) -> bool:
    return 400 <= status_code < 500 and status_code not in TRANSIENT_4XX


class SandboxRail:
    """Records each payout once per idempotency key; a repeated key returns the first payout id."""

    def __init__(self, engine: sa.Engine):
        self.engine = engine

    def pay(self, request: PayoutRequest) -> str:
        payout_id = "po_" + uuid.uuid5(uuid.NAMESPACE_URL, "sandbox:" + request.idempotency_key).hex[:24]
        row = {
            "idempotency_key": request.idempotency_key, "payout_id": payout_id, "merchant_id": request.merchant_id,
            "amount": request.amount, "currency": request.currency, "created_at": utc_now(),
        }
        try:
            with self.engine.begin() as conn:
                run(conn, _INSERT, row)
        except sa.exc.IntegrityError:
            with self.engine.connect() as conn:
                existing = conn.execute(
                    sa.select(sandbox_payouts.c.payout_id).where(
                        sandbox_payouts.c.idempotency_key == request.idempotency_key)
                ).scalar_one()
            return str(existing)
        return payout_id

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(sandbox_payouts)).scalar_one())


class HttpRail:
    """POST {base}/v1/payouts with an Idempotency-Key; the marketplace answers the same payout on a retry."""

    def __init__(self, base_url: str, api_key: str = "", timeout: float = 10.0, client: Any = None):
        import httpx

        self.client = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)
        self.api_key = api_key

    def pay(self, request: PayoutRequest) -> str:
        import httpx

        headers = {"Idempotency-Key": request.idempotency_key}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body = {
            "merchant_id": request.merchant_id, "reference": request.reference,
            "amount": {"amount": request.amount, "currency": request.currency},
        }
        try:
            resp = self.client.post("/v1/payouts", json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise PayoutFailed(f"payout API unreachable: {exc.__class__.__name__}") from None
        if is_permanent_refusal(resp.status_code):
            raise PayoutRejected(f"payout API refused ({resp.status_code}): {resp.text[:200]}")
        if resp.status_code >= 300:
            raise PayoutFailed(f"payout API answered {resp.status_code}: {resp.text[:200]}")
        try:
            answer = resp.json()
        except ValueError:  # a proxy's error page with a 2xx status: not a payout; retried with the same key
            raise PayoutFailed(f"payout API answer is not JSON (HTTP {resp.status_code})") from None
        payout_id = answer.get("payout_id") if isinstance(answer, dict) else None
        if not isinstance(payout_id, str) or not payout_id:
            raise PayoutFailed("payout API answer has no payout_id")
        return payout_id
