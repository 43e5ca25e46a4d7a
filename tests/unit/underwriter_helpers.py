"""Shared builders of the underwriter's stream-attack tests: the core wired with fakes, events, money."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import codec
from services.underwriter.bootstrap import bootstrap
from services.underwriter.domain.policy import PolicySettings
from services.underwriter.domain.scoring import FixedScorer
from services.underwriter.domain.state import MerchantState
from services.underwriter.settings import load
from services.underwriter.synthetic import Profile, history

START = datetime(2025, 1, 1, tzinfo=UTC)
END = START + timedelta(days=60)


def engine(**policy: Any) -> Any:
    """The underwriter core through bootstrap(): fixed PD 0.01, 30 s debounce, policy overrides."""
    return bootstrap(settings=load(debounce_seconds=30), scorer=FixedScorer(0.01), policy=PolicySettings(**policy))


def ev(etype: str, data: dict[str, Any], when: datetime, eid: str, mid: str = "m1") -> dict[str, Any]:
    return codec.new_event(etype, mid, data, when, "https://marketplace.example", id=eid)


def brl(amount: int, currency: str = "BRL") -> dict[str, Any]:
    return {"amount": amount, "currency": currency}


def feed(u: Any, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Handle each event one at a time; every emitted event must be valid by its schema."""
    out: list[dict[str, Any]] = []
    for e in events:
        for o in u.handle(e):
            assert codec.validate(o) == [], (o["type"], codec.validate(o))
            out.append(o)
    return out


def limits(out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o["data"] for o in out if o["type"] == "credit_limit.updated"]


def t_of(e: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(e["time"].replace("Z", "+00:00"))


def steady(days: int = 60, start: datetime = START, **profile: Any) -> list[dict[str, Any]]:
    return history("m1", start, days, Profile(**profile))


def order(oid: str, amount: int, when: datetime, buyer: str = "", currency: str = "BRL") -> list[dict[str, Any]]:
    """Placed, paid five minutes later, shipped an hour later: an eligible receivable once shipped."""
    return [
        ev("order.placed", {"order_id": oid, "buyer_id": buyer or f"buyer-{oid}", "amount": brl(amount, currency)},
           when, f"{oid}-placed"),
        ev("order.paid", {"order_id": oid, "amount": brl(amount, currency)}, when + timedelta(minutes=5),
           f"{oid}-paid"),
        ev("order.shipped", {"order_id": oid}, when + timedelta(hours=1), f"{oid}-shipped"),
    ]


def rfc(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def applied(events: list[dict[str, Any]], merchant_id: str = "m1") -> MerchantState:
    """A merchant's state after `events`, straight through MerchantState.apply (no decisions)."""
    s = MerchantState(merchant_id)
    for e in events:
        s.apply(e)
    return s
