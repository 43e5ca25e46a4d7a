"""Batches in the underwriter core (what the Faust worker hands it) and exact replays after a takeover."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.underwriter.bootstrap import bootstrap
from services.underwriter.domain.scoring import FixedScorer
from services.underwriter.domain.state import MAX_SEEN, MerchantState
from services.underwriter.service import Underwriter
from services.underwriter.settings import load
from services.underwriter.synthetic import Profile, history

pytestmark = pytest.mark.unit

START = datetime(2025, 1, 1, tzinfo=UTC)
TOPIC = "marketplace.events.v1:0"


class BytesStore(dict[str, bytes]):
    """A bytes port like the Faust table adapter (the core serialises into it)."""


def core(store: Any = None) -> Underwriter:
    return bootstrap(settings=load(debounce_seconds=30), scorer=FixedScorer(0.01),
                     state_store=BytesStore() if store is None else store)


def stream() -> list[dict[str, Any]]:
    events = history("m1", START, 50, Profile(orders_per_day=4), seed=1)
    events += history("m2", START, 50, Profile(orders_per_day=3), seed=2)
    events.sort(key=lambda e: (e["time"], e["id"]))
    return events


def applied_part(state: MerchantState | None) -> dict[str, Any]:
    """What the events built, without the decision bookkeeping (which depends on when decisions were taken)."""
    assert state is not None
    d = state.to_dict()
    for key in ("o", "d", "q", "p"):
        d.pop(key, None)
    return d


def test_batch_of_one_is_exactly_the_one_by_one_path() -> None:
    events = stream()
    a, b = core(), core()
    one = [o for e in events for o in a.handle(e)]
    batched = [o for e in events for o in b.handle_batch([e])[0]]
    assert one == batched and one
    assert a.state("m1") == b.state("m1")


def test_a_batch_scores_each_merchant_once_as_of_its_latest_event() -> None:
    events = stream()
    one, batched = core(), core()
    for e in events:
        one.handle(e)
    emitted: list[dict[str, Any]] = []
    for i in range(0, len(events), 100):
        chunk = events[i:i + 100]
        out, errors = batched.handle_batch(chunk)
        assert errors == []
        limits = [o for o in out if o["type"] == "credit_limit.updated"]
        subjects = [o["subject"] for o in limits]
        assert len(subjects) == len(set(subjects))  # at most one limit update per merchant and batch
        for o in limits:
            mine = [e for e in chunk if e["subject"] == o["subject"]]
            latest = max(mine, key=lambda e: e["time"])
            assert o["data"]["trigger_event_id"] == latest["id"]
            assert o["time"] == max(e["time"] for e in events[:i + 100] if e["subject"] == o["subject"])
        emitted += out
    assert emitted
    for m in ("m1", "m2"):
        assert applied_part(batched.state(m)) == applied_part(one.state(m))


def test_a_bad_event_in_a_batch_is_reported_and_the_rest_applies() -> None:
    events = history("m1", START, 10, Profile())
    bad = dict(events[3], id="bad-1", data={"order_id": "x", "amount": {"amount": -1, "currency": "BRL"}},
               type="order.placed")
    u = core()
    out, errors = u.handle_batch(events[:5] + [bad] + events[5:])
    assert [i for i, _ in errors] == [5]
    ref = core()
    for e in events:
        ref.handle(e)
    assert applied_part(u.state("m1")) == applied_part(ref.state("m1"))


def test_restored_state_skips_records_it_already_holds_however_many() -> None:
    """A worker killed after its state reached the changelog but before its input offsets were committed:
    the next owner restores the state and reads the same records again, far more than MAX_SEEN of them."""
    events = [e for e in stream() if e["subject"] == "m1"]
    positions = [(TOPIC, i) for i in range(len(events))]
    applied, committed = 400, 250
    assert applied - committed > MAX_SEEN
    first = core()
    first.handle_batch(events[:applied], positions[:applied])
    restored = core(BytesStore(first.store))  # the changelog holds the state after `applied` records
    replay = restored.handle_batch(events[committed:applied], positions[committed:applied])
    assert replay == ([], [])
    assert restored.state("m1") == first.state("m1")
    # Then it carries on exactly as the first worker would have.
    rest_a, _ = first.handle_batch(events[applied:], positions[applied:])
    rest_b, _ = restored.handle_batch(events[applied:], positions[applied:])
    assert rest_a == rest_b
    assert restored.state("m1") == first.state("m1")


def test_without_positions_a_long_replay_would_count_sales_twice() -> None:
    """Why positions are kept: the bounded id memory alone cannot recognise a long replay."""
    events = [e for e in stream() if e["subject"] == "m1"]
    u = core()
    for e in events[:400]:
        u.handle(e)
    before = applied_part(u.state("m1"))
    for e in events[250:400]:
        u.handle(e)
    assert applied_part(u.state("m1")) != before


def test_positions_survive_serialisation_and_old_states_without_them_still_load() -> None:
    s = MerchantState("m1")
    assert "p" not in s.to_dict()  # states written before positions existed have no "p"
    assert MerchantState.from_dict(s.to_dict()).positions == {}
    s.advance(TOPIC, 7)
    s.advance(TOPIC, 3)
    back = MerchantState.from_bytes(s.to_bytes())
    assert back.positions == {TOPIC: 7}
    assert back.already_applied(TOPIC, 7) and not back.already_applied(TOPIC, 8)


def test_fast_event_time_path_agrees_with_the_full_parser() -> None:
    import random

    from services.common.timeutil import parse_rfc3339
    from services.underwriter.domain.state import event_ts

    rng = random.Random(7)
    samples = ["2025-01-01T00:00:00Z", "2024-02-29T23:59:59Z", "2025-02-29T10:00:00Z", "2025-01-01T24:00:00Z",
               "2025-01-01T10:00:00+02:00", "2025-01-01T10:00:00.250Z", "1969-12-31T23:59:59Z",
               "２025-01-01T00:00:00Z", "2025-01-01 00:00:00Z"]
    samples += [f"{rng.randrange(1, 9999):04d}-{rng.randrange(0, 14):02d}-{rng.randrange(0, 33):02d}T"
                f"{rng.randrange(0, 26):02d}:{rng.randrange(0, 62):02d}:{rng.randrange(0, 62):02d}Z" for _ in range(3000)]
    for v in samples:
        try:
            want: int | str = int(parse_rfc3339(v).timestamp())
        except ValueError:
            want = "error"
        try:
            got: int | str = event_ts(v)
        except ValueError:
            got = "error"
        assert got == want, v
