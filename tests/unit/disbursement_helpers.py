"""Builders shared by the disbursement tests (events as the underwriter and marketplace send them)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from schemas.codec import new_event
from services.disbursement.bootstrap import bootstrap
from services.disbursement.service import AcceptOffer, DisbursementService
from services.disbursement.settings import DisbursementSettings

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CUR = "BRL"
M1_KEY = "key-m1-0123456789abcdef"


def m(amount: int, currency: str = CUR) -> dict[str, Any]:
    return {"amount": amount, "currency": currency}


def ev(etype: str, merchant: str, data: dict[str, Any], at: datetime, eid: str | None = None) -> dict[str, Any]:
    return new_event(etype, merchant, data, at, "urn:test", id=eid)


def onboarded(merchant: str, at: datetime = T0) -> dict[str, Any]:
    return ev("merchant.onboarded", merchant, {"category": "toys", "country": "BR", "currency": CUR}, at)


def limit(merchant: str, available: int, at: datetime = T0, lim: int | None = None) -> dict[str, Any]:
    return ev("credit_limit.updated", merchant, {
        "limit": m(lim or available), "available": m(available), "outstanding": m(0),
        "eligible_receivables": m(available * 2), "pd": 0.02, "model_version": "t1", "reasons": [],
        "trigger_event_id": "trig-" + merchant}, at)


def offer(merchant: str, offer_id: str, amount: int, fee: int = 0, at: datetime = T0,
          order_ids: tuple[str, ...] = ("o1",), due_days: int = 10, expires_hours: int = 24,
          orders: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "offer_id": offer_id, "amount": m(amount), "fee": m(fee), "apr": "0.2190",
        "due_at": (at + timedelta(days=due_days)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "expires_at": (at + timedelta(hours=expires_hours)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "order_ids": list(order_ids), "pd": 0.02, "model_version": "t1", "reasons": []}
    if orders is not None:
        data["orders"] = orders
    return ev("loan_offer.created", merchant, data, at)


def settlement(merchant: str, sid: str, withheld: int, at: datetime,
               orders: tuple[tuple[str, int], ...] = (), gross: int = 100_000) -> dict[str, Any]:
    return ev("settlement.paid", merchant, {
        "settlement_id": sid, "gross": m(gross), "fees": m(0), "withheld": m(withheld), "net": m(gross - withheld),
        "orders": [{"order_id": o, "amount": m(a)} for o, a in orders]}, at)


class Bus:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def publish(self, topic: str, key: str, event: dict[str, Any]) -> None:
        self.sent.append((topic, key, event))

    def of_type(self, etype: str) -> list[dict[str, Any]]:
        return [e for _, _, e in self.sent if e["type"] == etype]


class Transport:
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.calls: list[tuple[str, dict[str, str], bytes]] = []

    def __call__(self, url: str, headers: Mapping[str, str], body: bytes) -> int:
        self.calls.append((url, dict(headers), body))
        return self.status


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def service_env(settings: DisbursementSettings | None = None, *, db_url: str | None = None,
                engine: sa.Engine | None = None, webhook_url: str | None = "https://m1.example/hooks",
                bus: Bus | None = None, rail: Any = None, onboard: bool = True) -> dict[str, Any]:
    """The disbursement service through bootstrap with a fake bus (or `bus`), webhook transport and clock (at
    T0), merchant m1 registered (API key M1_KEY) and, unless `onboard` is false, onboarded:
    {"svc", "bus", "transport", "clock"}."""
    bus, transport, clock = bus or Bus(), Transport(), Clock()
    svc = bootstrap(settings or DisbursementSettings(), db_url=db_url, engine=engine, bus=bus, rail=rail,
                    transport=transport, clock=clock, registry=CollectorRegistry())
    svc.register_merchant("m1", webhook_url, M1_KEY)
    if onboard:
        svc.handle(onboarded("m1"))
    return {"svc": svc, "bus": bus, "transport": transport, "clock": clock}


def disburse(svc: DisbursementService, offer_id: str, amount: int, fee: int = 0, at: datetime = T0,
             available: int = 1_000_000, lim: int | None = None, **kw: Any) -> dict[str, Any]:
    """A limit, an offer to m1 at `at` and its acceptance a minute later; the loan as the 200 answer shows it."""
    svc.handle(limit("m1", available, at=at, lim=lim))
    svc.handle(offer("m1", offer_id, amount, fee, at=at, **kw))
    result = svc.accept(AcceptOffer(offer_id, "m1", "idem-" + offer_id, at + timedelta(minutes=1)))
    assert result.status_code == 200, result.body
    return result.body


def audit_collections(svc: DisbursementService) -> list[Any]:
    """What `floatbridge audit` finds wrong between the collection instructions the service published (on
    its fake bus) and its database's ledger."""
    from floatbridge.audit.checks import Snapshot, check
    from floatbridge.audit.sources import read_database

    svc.relay_outbox()  # PostgreSQL: nothing relays on its own
    snap = Snapshot(collection_events=svc.publisher.of_type("collection.instruction"))  # type: ignore[union-attr]
    read_database(svc.engine.url.render_as_string(hide_password=False), snap)
    return [d for d in check(snap).discrepancies if d.check.startswith("collections.")]


class DownThenUpRail:
    """A payout rail that fails (PayoutFailed, as an HTTP 503 would) while `down`, then pays through the
    sandbox rail of the service's own database (`attach` it once the service exists)."""

    def __init__(self) -> None:
        self.inner: Any = None
        self.down = True

    def attach(self, engine: sa.Engine) -> DownThenUpRail:
        from services.disbursement.adapters.payout_rails import SandboxRail

        self.inner = SandboxRail(engine)
        return self

    def pay(self, request: Any) -> str:
        from services.disbursement.ports import PayoutFailed

        if self.down:
            raise PayoutFailed("rail answered 503")
        assert self.inner is not None, "attach() the rail to the service's engine first"
        return str(self.inner.pay(request))


@contextmanager
def pg_service_env(url: str, **engine_kwargs: Any) -> Iterator[dict[str, Any]]:
    """service_env over a fresh, migrated PostgreSQL schema (integration tests)."""
    from services.disbursement.bootstrap import make_engine
    from services.disbursement.migrations import upgrade

    eng = make_engine(url, **engine_kwargs)
    try:
        upgrade(eng)
        yield service_env(engine=eng)
    finally:
        eng.dispose()
