"""Performance work must not move a single feature value: the champion model was trained on them.

The expected values below were captured from the feature code before it was optimised.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas import codec
from services.underwriter.bootstrap import bootstrap
from services.underwriter.domain.features import compute_features
from services.underwriter.domain.scoring import FixedScorer
from services.underwriter.domain.state import MerchantState, StateError
from services.underwriter.settings import load
from services.underwriter.synthetic import Profile, history

pytestmark = pytest.mark.unit

START = datetime(2025, 1, 1, tzinfo=UTC)

# (days after START, compute_features of golden_state() as of then)
EXPECTED: list[tuple[float, list[float]]] = [
    (5, [5.0, 81160.0, 81160.0, 81160.0, 11.0, 11.0, 11.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 4.285714285714286, 1.0, 2.623251712612346, 7378.181818181818, 0.0, 0.0, 0.09090909090909091, 0.09090909090909091, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]),
    (30, [30.0, 262974.0, 760585.0, 766115.0, 30.0, 92.0, 93.0, 164354.0, 502522.0, 502522.0, 19.0, 61.0, 61.0, 1.4817954976385657, 275.0759493670886, 0.6583363894859342, 8267.228260869566, 0.0, 0.021739130434782608, 0.1, 0.08695652173913043, 0.0, 6.390710382513661, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]),
    (61.5, [61.5, 164423.0, 836171.0, 1677572.0, 19.0, 90.0, 189.0, 182205.0, 833481.0, 1392742.0, 19.0, 87.0, 155.0, 0.8427343210898249, 1.9875683532584343, 0.5882551857922635, 9290.788888888888, 0.05263157894736842, 0.03333333333333333, 0.05263157894736842, 0.044444444444444446, 0.005291005291005291, 6.4080645161290315, 90.0, 0.0, 0.030303030303030304, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]),
    (68, [68.0, 127165.0, 799902.0, 1804737.0, 13.0, 84.0, 202.0, 140776.0, 735721.0, 1533518.0, 17.0, 79.0, 172.0, 0.6813245336839477, 1.5921061666840826, 0.6000994145566723, 9522.642857142857, 0.0, 0.023809523809523808, 0.0, 0.047619047619047616, 0.0049504950495049506, 6.41109496124031, 84.0, 0.0, 0.022727272727272728, 38256.0, 3.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]),
    (72.25, [72.25, 361563.0, 962320.0, 2095435.0, 33.0, 94.0, 228.0, 164522.0, 736544.0, 1619777.0, 18.0, 77.0, 180.0, 1.6102291486051568, 1.6985389832453015, 0.8596834233755886, 10237.446808510638, 0.0, 0.02127659574468085, 0.0, 0.031914893617021274, 0.013157894736842105, 6.41087962962963, 90.0, 0.07692307692307693, 0.038461538461538464, 205383.0, 20.0, 30000.0, 0.0407307642177521, 1.0, 1.0, 0.0, 0.0]),
    (74.9, [74.9, 492844.0, 1081497.0, 2288865.0, 44.0, 105.0, 245.0, 127165.0, 741223.0, 1652386.0, 13.0, 78.0, 184.0, 1.953023051777833, 1.7914952193531717, 0.9418277613169362, 10299.971428571429, 0.0, 0.01904761904761905, 0.0, 0.01904761904761905, 0.012244897959183673, 6.413722826086957, 97.0, 0.11538461538461539, 0.057692307692307696, 351740.0, 31.0, 30000.0, 0.04047364963040812, 1.0, 1.0, 4.0, 0.0]),
]
# Loan history rows carry the loan id's hash since loans.v1 became idempotent per loan. Re-recorded when the state
# began to remember the refund, chargeback and settlement ids it counted ("i", so a re-send counts once), the
# category each loan and offer reserved its exposure in, and closed orders as packed 32-bit hex ("x"); every
# feature value above is unchanged (this history re-sends nothing). Re-recorded when open loans began to hold the
# exposure their offer reserved (L_HELD, one int a loan): without that field the state hashes as before.
# Re-recorded when buckets gained cancelled money (CANCEL_GMV, saved only where non-zero: the other eleven fields of
# every bucket are unchanged), settlement ids began to be kept 90 days (older than 32 as 16-bit "S<week>" hashes) and
# event ids began to be saved as packed 40-bit hex ("e"); every other member and every feature value is unchanged.
# Re-recorded when an onboarding began to keep its time as the category's ("v": [0, onboarding time]), so that an
# update dated before it and re-sent late is stale; every other member and every feature value is unchanged.
# Re-recorded when refund and chargeback ids began to be counted per order (their hashes in "i" name the order too,
# same size); every other member and every feature value is unchanged.
STATE_DIGEST = "5564e9f647bd34ddffd26470550b072a20ee13a814c750fdc70b38c491165174"


def golden_state() -> MerchantState:
    events = history("g1", START, 75, Profile(orders_per_day=3, refund_rate=0.05, cancel_rate=0.05, chargeback_rate=0.02), seed=11)
    events += history("g1", START + timedelta(days=70), 5, Profile(orders_per_day=6, buyers=4), onboard=False, order_prefix="s", seed=3)
    brl = lambda a: {"amount": a, "currency": "BRL"}  # noqa: E731
    t = START + timedelta(days=60)
    loans = [
        ("loan.disbursed", {"loan_id": "L1", "offer_id": "o1", "principal": brl(50000), "fee": brl(500), "due_at": "2025-03-20T00:00:00Z", "payout_id": "p1"}, t),
        ("loan.repayment_applied", {"loan_id": "L1", "amount": brl(20000), "remaining": brl(30500)}, t + timedelta(days=3)),
        ("loan.repaid", {"loan_id": "L1", "repaid_at": "2025-03-10T00:00:00Z"}, t + timedelta(days=8)),
        ("loan.disbursed", {"loan_id": "L2", "offer_id": "o2", "principal": brl(40000), "fee": brl(400), "due_at": "2025-03-25T00:00:00Z", "payout_id": "p2"}, t + timedelta(days=9)),
        ("loan.delinquent", {"loan_id": "L2", "days_past_due": 4, "bucket": "1-7", "remaining": brl(30000)}, t + timedelta(days=14)),
    ]
    for i, (etype, data, when) in enumerate(loans):
        events.append(codec.new_event(etype, "g1", data, when, "test", id=f"gl-{i}"))
    events.sort(key=lambda e: e["time"])
    s = MerchantState("g1")
    for e in events:
        s.apply(e)
    return s


def test_features_of_a_fixed_state_equal_the_values_the_champion_was_trained_on() -> None:
    s = golden_state()
    for days, expected in EXPECTED:
        assert compute_features(s, START + timedelta(days=days)) == expected, days


def test_applying_a_fixed_history_builds_the_same_state_as_before() -> None:
    s = golden_state()
    blob = json.dumps(s.to_dict(), sort_keys=True, separators=(",", ":")).encode()
    assert hashlib.sha256(blob).hexdigest() == STATE_DIGEST


def test_rejected_event_leaves_the_live_state_unchanged_and_can_be_retried() -> None:
    s = golden_state()
    before = json.dumps(s.to_dict(), sort_keys=True)
    bad = codec.new_event("settlement.paid", "g1", {
        "gross": {"amount": 2000, "currency": "BRL"},
        "orders": [{"order_id": "x1", "amount": {"amount": 1000, "currency": "BRL"}},
                   {"order_id": "x2", "amount": {"amount": -5, "currency": "BRL"}}],
    }, START + timedelta(days=75), "test", id="bad-1")
    with pytest.raises(StateError, match="bad amount"):
        s.apply(bad)
    assert json.dumps(s.to_dict(), sort_keys=True) == before
    bad["data"]["orders"][1]["amount"]["amount"] = 1000
    assert s.apply(bad) is True  # its id was not remembered by the failed attempt


def test_dict_store_keeps_live_objects_and_state_returns_a_copy() -> None:
    u = bootstrap(settings=load(debounce_seconds=30), scorer=FixedScorer(0.01))
    for e in history("m1", START, 20, Profile()):
        u.handle(e)
    assert isinstance(u.store["m1"], MerchantState)
    copy = u.state("m1")
    assert copy is not None and copy == u.store["m1"] and copy is not u.store["m1"]
    copy.buckets.clear()
    assert u.store["m1"].buckets


class BytesStore(dict[str, bytes]):
    """A bytes port like the Faust table adapter (not a plain dict, so the core serialises)."""


def test_bytes_store_gets_the_same_decisions_as_the_object_store() -> None:
    events = history("m1", START, 45, Profile())
    plain = bootstrap(settings=load(debounce_seconds=30), scorer=FixedScorer(0.01))
    table = bootstrap(settings=load(debounce_seconds=30), scorer=FixedScorer(0.01), state_store=BytesStore())
    a = [o for e in events for o in plain.handle(e)]
    b = [o for e in events for o in table.handle(e)]
    assert a == b and a
    assert isinstance(table.store["m1"], bytes)
    assert MerchantState.from_bytes(table.store["m1"]) == plain.store["m1"]


def test_single_row_fast_path_predicts_exactly_what_booster_predict_does() -> None:
    np = pytest.importorskip("numpy")
    pytest.importorskip("lightgbm")
    from services.underwriter.adapters.lightgbm_scorer import LightGBMScorer

    scorer = LightGBMScorer.champion(load().model_registry)
    assert scorer._predict is not None and scorer._contrib is not None
    s = golden_state()
    for days, _ in EXPECTED:
        f = compute_features(s, START + timedelta(days=days))
        row = np.asarray([f], dtype=np.float64)
        assert scorer._predict(f)[0] == float(scorer.booster.predict(row, num_threads=1)[0])
        assert list(scorer._contrib(f)) == list(scorer.booster.predict(row, pred_contrib=True, num_threads=1)[0])


def test_state_bytes_written_with_the_fast_encoder_hold_the_same_json_and_state() -> None:
    import zlib

    from services.underwriter.service import state_bytes

    s = golden_state()
    s.advance("marketplace.events.v1:3", 12345)
    s.category = "música"  # outside ASCII: UTF-8 rather than \u escapes, the same text once decoded
    fast, slow = state_bytes(s), s.to_bytes()
    assert json.loads(zlib.decompress(fast)) == json.loads(zlib.decompress(slow)) == s.to_dict()
    assert MerchantState.from_bytes(fast) == s
    s.category = "books"
    assert zlib.decompress(state_bytes(s)) == zlib.decompress(s.to_bytes())  # ASCII: the very same JSON text


def test_state_bytes_fall_back_to_the_stdlib_encoder_for_integers_beyond_64_bits() -> None:
    from services.underwriter.service import state_bytes

    s = golden_state()
    s.positions["huge:0"] = 2**70
    assert MerchantState.from_bytes(state_bytes(s)) == s


def _reference_features_parts(s: MerchantState, as_of: int) -> tuple[Any, ...]:
    """The window sums, buyer shares and open receivables exactly as written before they were optimised."""
    from collections import Counter

    from services.underwriter.domain.state import (
        BUCKET_FIELDS,
        F_PAID,
        F_SHIPPED,
        R_AMOUNT,
        R_CLOSED,
        R_FLAGS,
        R_PLACED,
        R_REFUNDED,
        R_SHIPPED,
    )

    def column_sums(rows: list[list[int]]) -> list[int]:
        return [sum(col) for col in zip(*rows, strict=True)] if rows else [0] * BUCKET_FIELDS

    today = as_of // 86_400
    d7, d30, d90 = [], [], []
    for day, b in s.buckets.items():
        age = today - day
        if 0 <= age < 90:
            (d7 if age < 7 else d30 if age < 30 else d90).append(b)
    w7 = column_sums(d7)
    w30 = column_sums([w7, *d30])
    w90 = column_sums([w30, *d90])
    sample = [h for day, _, h in s.buyers if today - 30 < day <= today]
    if sample:
        counts = Counter(sample)
        n = len(sample)
        buyers = (float(round(len(counts) / n * max(w30[1], n))), sum(c for c in counts.values() if c > 1) / n,
                  max(counts.values()) / n)
    else:
        buyers = (0.0, 0.0, 0.0)
    total = count = 0
    for rec in s.receivables.values():
        placed = rec[R_PLACED]
        if not placed or placed > as_of or (rec[R_CLOSED] and rec[R_CLOSED] <= as_of):
            continue
        if rec[R_FLAGS] & F_PAID and rec[R_FLAGS] & F_SHIPPED and rec[R_SHIPPED] <= as_of:
            total += max(0, rec[R_AMOUNT] - rec[R_REFUNDED])
            count += 1
    return w7, w30, w90, buyers, (total, count)


@pytest.mark.parametrize("seed", range(40))
def test_optimised_window_buyer_and_receivable_sums_equal_the_plain_loops_on_random_states(seed: int) -> None:
    """Buckets in any of the three windows or none, buyer samples with repeats, receivables at every boundary
    (placed, shipped or closed exactly at as_of, refunded beyond their amount, flags missing, never placed)."""
    import random

    from services.underwriter.domain import features as f

    rng = random.Random(seed)
    as_of = 1_750_000_000 + rng.randrange(86_400)
    today = as_of // 86_400
    s = MerchantState("m")
    for day in rng.sample(range(today - 120, today + 3), rng.randrange(0, 40)):
        s.buckets[day] = [rng.randrange(0, 10_000) for _ in range(12)]
    s.buyers = sorted([today - rng.randrange(-1, 35), rng.randrange(50), rng.randrange(6)]
                      for _ in range(rng.randrange(0, 66)))
    near = [0, as_of - 1, as_of, as_of + 1, as_of - 86_400 * rng.randrange(1, 60)]
    for i in range(rng.randrange(0, 120)):
        s.receivables[f"o{i}"] = [rng.randrange(0, 50_000), rng.randrange(0, 256), rng.choice(near),
                                  rng.choice(near), rng.choice(near), rng.randrange(0, 60_000), rng.choice(near)]
    w7, w30, w90, buyers, open_receivables = _reference_features_parts(s, as_of)
    assert f._windows(s, today) == (w7, w30, w90)
    assert f._buyer_features(s, today, w30[1]) == buyers
    assert f._receivables(s, as_of) == open_receivables
