"""The debounce survives a restart: a merchant left undecided is saved as pending, and a new core over the same
store (a restarted or new worker that restored the table) finds it and decides it on its flush."""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas import codec
from services.underwriter.bootstrap import bootstrap
from services.underwriter.domain.scoring import FixedScorer
from services.underwriter.domain.state import MerchantState
from services.underwriter.service import Underwriter
from services.underwriter.settings import load
from services.underwriter.synthetic import Profile, history

pytestmark = pytest.mark.unit

START = datetime(2025, 1, 1, tzinfo=UTC)
DEBOUNCE = 3600


class BytesStore(dict[str, bytes]):
    """A bytes port like the Faust table adapter (the core serialises into it)."""


def core(store: Any) -> Underwriter:
    return bootstrap(settings=load(debounce_seconds=DEBOUNCE), scorer=FixedScorer(0.01), state_store=store)


def decided_then_debounced(u: Underwriter, merchant_id: str = "m1") -> dict[str, Any]:
    """A merchant's history (decided by its material events), then one order that only debounces."""
    for e in history(merchant_id, START, 40, Profile(orders_per_day=3), seed=1):
        u.handle(e)
    latest = datetime.fromtimestamp(u.state(merchant_id).latest, UTC)  # type: ignore[union-attr]
    order = codec.new_event("order.placed", merchant_id, {
        "order_id": f"{merchant_id}-late", "buyer_id": "b-late", "amount": {"amount": 250_000, "currency": "BRL"},
    }, latest + timedelta(minutes=1), "test", id=f"{merchant_id}-late-placed")
    assert u.handle(order) == []
    assert merchant_id in u.pending
    return order


@pytest.mark.parametrize("store_type", [BytesStore, dict])
def test_a_merchant_left_pending_is_decided_by_a_new_worker_over_the_same_store(store_type: type) -> None:
    store = store_type()
    first = core(store)
    order = decided_then_debounced(first)
    saved = first.state("m1")
    assert saved is not None and saved.pending[2] == order["id"]
    # What the first worker would have emitted on its flush, had it not stopped (same store contents, copied).
    expected = core(store_type((k, v.from_bytes(v.to_bytes()) if isinstance(v, MerchantState) else v)
                               for k, v in store.items()))
    expected.restore_pending()

    restarted = core(store)  # a new worker: nothing in memory, the store restored
    assert restarted.pending == {}
    restored = restarted.restore_pending()
    assert [s.merchant_id for s in restored] == ["m1"]
    when = datetime.fromisoformat(order["time"].replace("Z", "+00:00"))
    assert restarted.flush(when) == []  # still within the debounce
    out = restarted.flush(when + timedelta(seconds=DEBOUNCE))
    assert out and all(e["data"]["trigger_event_id"] == order["id"] for e in out)
    assert any(e["type"] == "credit_limit.updated" for e in out)
    assert out == expected.flush(when + timedelta(seconds=DEBOUNCE))
    assert restarted.pending == {}
    assert restarted.state("m1").pending == []  # type: ignore[union-attr]


def test_a_decided_merchant_is_not_pending_after_a_reload() -> None:
    store = BytesStore()
    first = core(store)
    order = decided_then_debounced(first)
    when = datetime.fromisoformat(order["time"].replace("Z", "+00:00"))
    assert first.flush(when + timedelta(seconds=DEBOUNCE))
    assert first.state("m1").pending == []  # type: ignore[union-attr]
    again = core(store)
    assert again.restore_pending() == [] and again.pending == {}
    assert again.flush(when + timedelta(days=30)) == []


def test_a_material_event_clears_the_saved_marker() -> None:
    store = BytesStore()
    first = core(store)
    order = decided_then_debounced(first)
    cancel = codec.new_event("order.cancelled", "m1", {"order_id": "m1-late", "reason": "buyer"},
                             datetime.fromisoformat(order["time"].replace("Z", "+00:00")) + timedelta(minutes=1),
                             "test", id="m1-late-cancelled")
    first.handle(cancel)
    assert "m1" not in first.pending and first.state("m1").pending == []  # type: ignore[union-attr]
    assert core(store).restore_pending() == []


def test_only_accepted_merchants_are_restored() -> None:
    store = BytesStore()
    first = core(store)
    decided_then_debounced(first, "m1")
    decided_then_debounced(first, "m2")
    again = core(store)
    restored = again.restore_pending(accept=lambda s: s.merchant_id == "m2")
    assert [s.merchant_id for s in restored] == ["m2"] and set(again.pending) == {"m2"}


def test_state_bytes_saved_before_the_marker_existed_still_load() -> None:
    store = BytesStore()
    first = core(store)
    decided_then_debounced(first)
    obj = json.loads(zlib.decompress(store["m1"]))
    assert obj["n"][2] == "m1-late-placed"
    del obj["n"]  # the format before the marker: no "n" key at all
    old = zlib.compress(json.dumps(obj, separators=(",", ":")).encode(), 1)
    state = MerchantState.from_bytes(old)
    assert state.pending == [] and state.latest == first.state("m1").latest  # type: ignore[union-attr]
    assert not MerchantState.may_be_pending(old)
    assert state.to_bytes() == old  # a state with nothing pending is saved exactly as before
    store["m1"] = old
    assert core(store).restore_pending() == []
