"""Client-side traffic for fault tests and the soak: a marketplace that resends until every event
is final (the documented retry contract), and merchants that accept their open offers. Every loop
is bounded in attempts and time."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

FINAL = frozenset({"accepted", "duplicate", "rejected"})


class Marketplace:
    def __init__(self, url: str, api_key: str, attempts: int = 60, backoff: float = 0.5) -> None:
        self.url, self.key, self.attempts, self.backoff = url.rstrip("/"), api_key, attempts, backoff
        self.statuses: dict[str, str] = {}  # event id -> final status
        self.retries = 0
        self.errors_seen: dict[int, int] = {}  # HTTP status (0 = connection error) -> count

    def send(self, events: list[dict[str, Any]]) -> None:
        """Send one batch; resend the events not yet final until they are (bounded)."""
        pending = list(events)
        for _ in range(self.attempts):
            if not pending:
                return
            try:
                r = httpx.post(f"{self.url}/v1/events", json=pending, timeout=30,
                               headers={"Authorization": f"Bearer {self.key}"})
            except httpx.HTTPError:
                self._note(0)
                time.sleep(self.backoff)
                continue
            if r.status_code not in (200, 503):
                self._note(r.status_code)
                raise AssertionError(f"ingest answered {r.status_code}: {r.text[:300]}")
            try:
                results = r.json()["results"]
            except (ValueError, KeyError):  # a bare 503 (busy, no per-event results)
                self._note(r.status_code)
                time.sleep(self.backoff)
                continue
            if r.status_code != 200:
                self._note(r.status_code)
            still = []
            for ev, res in zip(pending, results, strict=True):
                if res["status"] in FINAL:
                    self.statuses[ev["id"]] = res["status"]
                else:
                    still.append(ev)
            if still:
                self.retries += 1
                time.sleep(self.backoff)
            pending = still
        raise AssertionError(f"{len(pending)} events still not final after {self.attempts} attempts")

    def _note(self, status: int) -> None:
        self.errors_seen[status] = self.errors_seen.get(status, 0) + 1

    def accepted_ids(self) -> set[str]:
        return {e for e, s in self.statuses.items() if s in ("accepted", "duplicate")}


def register_merchant(disb_url: str, admin_key: str, merchant_id: str, api_key: str, webhook_url: str | None = None,
                      webhook_secret: str | None = None, attempts: int = 30) -> str:
    body: dict[str, Any] = {"merchant_id": merchant_id, "api_key": api_key, "currency": "BRL"}
    if webhook_url:
        body["webhook_url"] = webhook_url
    if webhook_secret:
        body["webhook_secret"] = webhook_secret
    for _ in range(attempts):
        try:
            r = httpx.post(f"{disb_url}/admin/merchants", json=body, timeout=10,
                           headers={"Authorization": f"Bearer {admin_key}"})
            if r.status_code == 201:
                return str(r.json()["webhook_secret"])
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"could not register merchant {merchant_id}")


class Acceptor(threading.Thread):
    """Merchants accepting each open offer once it is stored (polls the database read-only), retrying
    with the same Idempotency-Key through crashes; records every answer."""

    def __init__(self, disb_url: str, database_url: str, keys: dict[str, str], period: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.disb_url, self.keys, self.period = disb_url.rstrip("/"), keys, period
        self.database_url = database_url
        self.answers: dict[str, list[int]] = {}  # offer id -> status codes seen
        self.done: set[str] = set()
        self._stop_evt = threading.Event()

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(15)

    def run(self) -> None:
        import sqlalchemy as sa

        engine = sa.create_engine(self.database_url, pool_pre_ping=True)
        try:
            while not self._stop_evt.wait(self.period):
                try:
                    with engine.connect() as conn:
                        rows = conn.execute(sa.text("SELECT offer_id, merchant_id FROM offers WHERE state = 'open'"))
                        todo = [(o, m) for o, m in rows if o not in self.done and m in self.keys]
                except sa.exc.SQLAlchemyError:
                    continue
                for offer_id, mid in todo:
                    self.accept(offer_id, mid)
        finally:
            engine.dispose()

    def accept(self, offer_id: str, mid: str) -> None:
        try:
            r = httpx.post(f"{self.disb_url}/v1/offers/{offer_id}/accept", timeout=15,
                           headers={"Authorization": f"Bearer {self.keys[mid]}", "Idempotency-Key": f"acc-{offer_id}"})
            code = r.status_code
        except httpx.HTTPError:
            code = 0
        self.answers.setdefault(offer_id, []).append(code)
        if code in (200, 202, 404, 409, 422):
            self.done.add(offer_id)


def interleave(histories: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Merge merchants' histories by event time (each merchant's order is kept)."""
    merged = [e for h in histories for e in h]
    merged.sort(key=lambda e: (e["time"], e["subject"]))
    return merged


def chunks(events: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [events[i:i + size] for i in range(0, len(events), size)]


class DecisionFeeder:
    """Stands in for the underwriter where a fault test targets the other services: produces
    credit_limit.updated and loan_offer.created events, as the underwriter would, to the run's topics."""

    def __init__(self, kafka: str, prefix: str) -> None:
        from kafka import KafkaProducer

        self.prefix = prefix
        self.producer = KafkaProducer(bootstrap_servers=kafka, acks="all", retries=10)
        self.n = 0

    def offer(self, merchant_id: str, amount: int, order_ids: list[str], fee: int = 300) -> str:
        from datetime import UTC, datetime, timedelta

        from schemas import topics as t
        from schemas.codec import encode, new_event
        from services.common.timeutil import format_rfc3339

        self.n += 1
        now = datetime.now(UTC).replace(microsecond=0)
        offer_id = f"off-{merchant_id}-{self.n}"
        money = {"amount": amount * 2, "currency": "BRL"}
        reasons = [{"code": "settled_gmv_30d", "text": "Steady settled sales"}]
        limit = new_event("credit_limit.updated", merchant_id, {
            "limit": money, "available": money, "outstanding": {"amount": 0, "currency": "BRL"},
            "eligible_receivables": money, "pd": 0.02, "model_version": "fault-test", "reasons": reasons,
            "trigger_event_id": f"trigger-{offer_id}"}, now, "urn:floatbridge:underwriter", id=f"lim-{offer_id}")
        offer = new_event("loan_offer.created", merchant_id, {
            "offer_id": offer_id, "amount": {"amount": amount, "currency": "BRL"},
            "fee": {"amount": fee, "currency": "BRL"}, "apr": "0.2190",
            "due_at": format_rfc3339(now + timedelta(days=20)), "expires_at": format_rfc3339(now + timedelta(hours=24)),
            "order_ids": order_ids, "pd": 0.02, "model_version": "fault-test", "reasons": reasons},
            now, "urn:floatbridge:underwriter", id=f"evt-{offer_id}")
        key = merchant_id.encode()
        self.producer.send(self.prefix + t.CREDIT_LIMITS, key=key, value=encode(limit))
        self.producer.send(self.prefix + t.LOAN_OFFERS, key=key, value=encode(offer))
        self.producer.flush(30)
        return offer_id

    def close(self) -> None:
        self.producer.close(10)
