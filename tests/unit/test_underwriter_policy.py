"""Credit policy and offer decisions: brushing, offer churn, offer/limit consistency, risk withdrawals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas import codec
from services.common.timeutil import format_rfc3339
from services.underwriter.bootstrap import bootstrap
from services.underwriter.domain.features import INDEX, compute_features
from services.underwriter.domain.policy import PolicySettings, decide_limit
from services.underwriter.domain.scoring import FixedScorer
from services.underwriter.domain.state import DAY, MerchantState
from services.underwriter.settings import load
from services.underwriter.synthetic import Profile, history
from tests.scenario import healthy_merchant

pytestmark = pytest.mark.unit

START = datetime(2025, 1, 1, tzinfo=UTC)


def engine(**policy: Any) -> Any:
    return bootstrap(settings=load(debounce_seconds=30), scorer=FixedScorer(0.01), policy=PolicySettings(**policy))


def ts(e: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(e["time"].replace("Z", "+00:00"))


def decision_at(state: MerchantState, p: PolicySettings | None = None) -> Any:
    f = compute_features(state, datetime.fromtimestamp(state.latest, UTC))
    return decide_limit(state, f, 0.01, [], state.latest, p or PolicySettings()), f


def brushed(start: datetime, days: int) -> list[dict[str, Any]]:
    """Fake orders from five buyers: paid and shipped, but never delivered and never settled."""
    fake = history("m1", start, days, Profile(orders_per_day=10, buyers=5, cancel_rate=0.0, refund_rate=0.0),
                   onboard=False, order_prefix="fake")
    return [e for e in fake if e["type"] in ("order.placed", "order.paid", "order.shipped")]


def test_brushing_merchant_whose_orders_triple_from_few_buyers_sees_limit_rise_at_most_20_percent() -> None:
    honest = history("m1", START, 90, Profile(orders_per_day=4))
    campaign = START + timedelta(days=60)
    events = sorted(honest + brushed(campaign, 30), key=lambda e: (e["time"], e["id"]))
    state = MerchantState("m1")
    # As the backtest measures it: the highest limit of the 30 days before the campaign against the highest after.
    before = peak = 0
    peak_reasons: set[str] = set()
    placed_before = placed_peak = 0.0
    for e in events:
        state.apply(e)
        if e["type"] != "settlement.paid" or ts(e) < campaign - timedelta(days=30):
            continue  # scored once a day, after the payout, as a live run would at least
        d, f = decision_at(state)
        if ts(e) < campaign:
            before, placed_before = max(before, d.limit), f[INDEX["placed_gmv_30d"]]
        else:
            if d.limit >= peak:
                peak, peak_reasons = d.limit, {r.code for r in d.reasons}
            placed_peak = max(placed_peak, f[INDEX["placed_gmv_30d"]])
    assert before > 0
    assert placed_peak >= 3 * placed_before  # orders tripled...
    assert peak <= before * 1.2, (before, peak)  # ...the limit did not follow
    final, _ = decision_at(state)
    codes = {r.code for r in final.reasons}
    assert codes & {"GMV_SPIKE", "UNSETTLED_SALES"}, codes
    assert "BUYER_DIVERSITY" in codes
    assert peak_reasons  # the peak itself is explained


def test_honest_merchant_tripling_settled_sales_still_grows_its_limit() -> None:
    slow = history("m1", START, 90, Profile(orders_per_day=2))
    fast = history("m1", START + timedelta(days=45), 45, Profile(orders_per_day=6), onboard=False, order_prefix="g")
    a = decision_at(_build(slow))[0]
    b = decision_at(_build(sorted(slow + fast, key=lambda e: (e["time"], e["id"]))))[0]
    assert b.limit >= 2 * a.limit > 0


def _build(events: list[dict[str, Any]], mid: str = "m1") -> MerchantState:
    s = MerchantState(mid)
    for e in events:
        s.apply(e)
    return s


def test_steady_merchant_keeps_one_offer_open_without_churn() -> None:
    p = PolicySettings()
    u = engine()
    end = datetime(2025, 3, 1, tzinfo=UTC)
    merchants = [healthy_merchant(f"m{i}", end, days=45, seed=i + 1) for i in range(3)]
    out = [o for e in sorted((e for h in merchants for e in h.events), key=lambda e: e["time"]) for o in u.handle(e)]
    open_offer: dict[str, tuple[datetime, int]] = {}  # merchant -> (expires_at, amount)
    available: dict[str, int] = {}
    created = 0
    first: dict[str, datetime] = {}
    for o in out:
        m, t, data = o["subject"], ts(o), o["data"]
        if o["type"] == "credit_limit.updated":
            available[m] = data["available"]["amount"]
        elif o["type"] == "loan_offer.withdrawn":
            # Only on a real signal: here the weekly payout shrank the receivables below the open offer.
            assert data["reasons"][0]["code"] == "LIMIT_REDUCED"
            assert available[m] < open_offer[m][1]
            open_offer.pop(m)
        elif o["type"] == "loan_offer.created":
            created += 1
            first.setdefault(m, t)
            prev = open_offer.get(m)
            if prev is not None and prev[0] > t:  # replaced while still open: only when stale
                expiring = prev[0] - t <= timedelta(hours=p.offer_refresh_hours)
                grew = data["amount"]["amount"] >= prev[1] * (1 + p.offer_growth_bps / 10_000)
                assert expiring or grew, (m, t, prev, data["amount"])
            open_offer[m] = (ts({"time": data["expires_at"]}), data["amount"]["amount"])
    offer_days = sum((end - t) / timedelta(days=1) for t in first.values())
    assert len(first) == 3
    # A 24-hour offer renewed once a day, plus the odd growth or limit-cut replacement.
    assert created <= 1.3 * offer_days + 3, (created, offer_days)
    assert sum(1 for o in out if o["type"] == "loan_offer.withdrawn") <= 2 * 3 * 5  # at most ~one per weekly payout


def _loan_event(mid: str, etype: str, data: dict[str, Any], t: datetime, n: str) -> dict[str, Any]:
    return codec.new_event(etype, mid, data, t, "floatbridge/disbursement", id=f"{mid}-{etype}-{n}")


def test_offer_is_always_covered_by_the_limit_emitted_with_it() -> None:
    """Replays the disbursement check on every offer (available of the latest limit minus principal
    disbursed since) while the merchants accept every other offer as soon as it arrives."""
    u = engine(min_offer_minor=1_000)
    mids = [f"m{i}" for i in range(4)]
    events = sorted((e for i, m in enumerate(mids) for e in history(m, START, 50, Profile(orders_per_day=3 + i))),
                    key=lambda e: (e["time"], e["id"]))
    latest: dict[str, list[int]] = {}  # merchant -> [available of the latest limit, disbursed since]
    checked = accepted = 0
    owed: dict[str, int] = {}
    taken: dict[str, int] = {}
    queue = list(events)
    seen_offers = 0
    while queue:
        e = queue.pop(0)
        for o in u.handle(e):
            m, data = o["subject"], o["data"]
            if o["type"] == "credit_limit.updated":
                latest[m] = [data["available"]["amount"], 0]
                continue
            if o["type"] != "loan_offer.created":
                continue
            amount = data["amount"]["amount"]
            assert data["limit"]["amount"] >= amount
            assert m in latest and amount <= latest[m][0] - latest[m][1], (m, amount, latest.get(m))
            # ...and, loans being booked at acceptance, before the underwriter hears of them: the offer plus
            # everything already accepted stays within the limit.
            assert amount + owed.get(m, 0) <= data["limit"]["amount"], (m, amount, owed.get(m), data["limit"])
            checked += 1
            seen_offers += 1
            if seen_offers % 2 or taken.get(m, 0) >= 6:  # a few loans each: the state keeps the latest 16
                continue
            taken[m] = taken.get(m, 0) + 1
            accepted += 1
            latest[m][1] += amount
            owed[m] = owed.get(m, 0) + amount + 10
            n, t = data["offer_id"], ts(o)
            brl = {"amount": amount, "currency": "BRL"}
            # Acceptance and disbursement arrive as two events: the decision between them must not re-offer.
            queue[:0] = [
                _loan_event(m, "loan_offer.accepted", {"offer_id": n, "loan_id": "L" + n, "accepted_at": o["time"]}, t, n),
                _loan_event(m, "loan.disbursed", {"loan_id": "L" + n, "offer_id": n, "principal": brl,
                                                  "fee": {"amount": 10, "currency": "BRL"},
                                                  "due_at": data["due_at"], "payout_id": "p" + n}, t, n),
            ]
    assert checked >= 10 and accepted >= 5


def test_offer_created_in_a_decision_comes_after_its_limit() -> None:
    _, out = _run(history("m1", START, 60, Profile()))
    for i, o in enumerate(out):
        if o["type"] == "loan_offer.created":
            prev = next(p for p in reversed(out[:i]) if p["type"] != "loan_offer.withdrawn")
            assert prev["type"] == "credit_limit.updated"
            assert prev["data"]["trigger_event_id"] == o["data"]["trigger_event_id"]
            assert prev["data"]["available"]["amount"] >= o["data"]["amount"]["amount"]


def _run(events: list[dict[str, Any]], **policy: Any) -> tuple[Any, list[dict[str, Any]]]:
    u = engine(**policy)
    return u, [o for e in events for o in u.handle(e)]


def test_refund_surge_withdraws_open_offer() -> None:
    u, out = _run(history("m1", START, 60, Profile(refund_rate=0.0)))
    offer = u.state("m1").offer
    assert offer
    # Buyers start sending back most of what they received: refunds of recent, delivered orders.
    t = START + timedelta(days=60, hours=1)
    recent = [e for e in history("m1", START, 60, Profile(refund_rate=0.0))
              if e["type"] == "order.placed" and ts(e) > START + timedelta(days=50)]
    more: list[dict[str, Any]] = []
    for k, e in enumerate(recent[:20]):
        data = {"order_id": e["data"]["order_id"], "refund_id": f"rf{k}", "amount": e["data"]["amount"]}
        more += u.handle(codec.new_event("order.refunded", "m1", data, t + timedelta(minutes=k), "test", id=f"rf-{k}"))
    withdrawn = [o for o in more if o["type"] == "loan_offer.withdrawn"]
    assert withdrawn and withdrawn[0]["data"]["offer_id"] == offer[0]
    assert withdrawn[0]["data"]["reasons"][0]["code"] in ("REFUND_SURGE", "LIMIT_REDUCED")
    assert any(r["code"] == "REFUND_SURGE" for r in withdrawn[0]["data"]["reasons"])


def test_new_guard_withdraws_offer_even_when_the_limit_still_covers_it() -> None:
    u, out = _run(history("m1", START, 60, Profile(refund_rate=0.0)))
    offer = u.state("m1").offer
    assert offer
    # A handful of refunds of orders already settled: the limit barely moves, but the refund rate jumps.
    t = START + timedelta(days=60, hours=1)
    settled = [o for e in history("m1", START, 60, Profile(refund_rate=0.0)) if e["type"] == "settlement.paid"
               and ts(e) > START + timedelta(days=45) for o in e["data"]["orders"]]
    more: list[dict[str, Any]] = []
    for k, o in enumerate(settled[:8]):
        data = {"order_id": o["order_id"], "refund_id": f"rs{k}", "amount": o["amount"]}
        more += u.handle(codec.new_event("order.refunded", "m1", data, t + timedelta(minutes=k), "test", id=f"rs-{k}"))
    withdrawn = [o for o in more if o["type"] == "loan_offer.withdrawn"]
    assert withdrawn and withdrawn[0]["data"]["reasons"][0]["code"] == "REFUND_SURGE"


def test_order_shipped_but_never_delivered_stops_counting_after_the_overdue_window() -> None:
    events = history("m1", START, 60, Profile())
    s = _build(events)
    p = PolicySettings()
    d0, _ = decision_at(s, p)
    t = datetime.fromtimestamp(s.latest, UTC)
    money = {"amount": 50_000, "currency": "BRL"}
    for etype, dt in (("order.placed", 0), ("order.paid", 60), ("order.shipped", 3600)):
        s.apply(codec.new_event(etype, "m1", {"order_id": "ghost", "buyer_id": "bx", "amount": money},
                                t + timedelta(seconds=dt), "test", id=f"ghost-{etype}"))
    ids = lambda st: {r.order_id for r in decide_limit(st, compute_features(st, datetime.fromtimestamp(st.latest, UTC)),  # noqa: E731
                                                        0.01, [], st.latest, p).receivables}
    assert "ghost" in ids(s)
    late = s.latest + (p.default_delivery_days + p.receivable_overdue_days + 1) * DAY
    s.apply(codec.new_event("merchant.updated", "m1", {"category": "electronics"},
                            datetime.fromtimestamp(late, UTC), "test", id="tick"))
    assert "ghost" not in ids(s)
    assert d0.limit > 0


def test_policy_settings_refuse_a_refresh_window_longer_than_the_offer() -> None:
    with pytest.raises(ValueError, match="offer_refresh_hours"):
        PolicySettings(offer_refresh_hours=30).validate()


def test_receivables_financed_by_a_disbursed_loan_back_no_second_offer() -> None:
    uw = engine()
    out: list[dict[str, Any]] = []
    for e in healthy_merchant("m9", START + timedelta(days=45), days=45).events:
        out += uw.handle(e)
    offers = [e for e in out if e["type"] == "loan_offer.created"]
    assert offers, "a healthy merchant with receivables gets an offer"
    first = offers[-1]["data"]
    disbursed = codec.new_event("loan.disbursed", "m9", {
        "loan_id": "ln-1", "offer_id": first["offer_id"], "principal": first["amount"], "fee": first["fee"],
        "due_at": first["due_at"], "payout_id": "po-1", "order_ids": first["order_ids"]},
        offers[-1]["time"], "test", id="disb-1")
    assert not codec.validate(disbursed)
    later = uw.handle(disbursed) + uw.flush(START + timedelta(days=46))
    for e in later:
        if e["type"] == "loan_offer.created":
            assert not set(e["data"]["order_ids"]) & set(first["order_ids"]), "one receivable repays one loan"
    state = uw.state("m9")
    assert state is not None
    d, _ = decision_at(state)
    financed = {r.order_id for r in d.receivables if r.financed}
    assert financed == set(first["order_ids"]) & {r.order_id for r in d.receivables}
    assert financed, "the financed receivables are still open and marked"


def test_unsettled_placed_gmv_from_many_buyers_does_not_raise_the_limit() -> None:
    """Fake orders spread over many buyers slip past the buyer guards; they never settle, so receivables count only
    in proportion to the GMV that does settle (PLACED_AHEAD_OF_SETTLED) and the limit does not grow from them."""
    honest = history("m1", START, 100, Profile(orders_per_day=4))
    campaign = START + timedelta(days=70)
    fake = history("m1", campaign, 30, Profile(orders_per_day=8, buyers=400, cancel_rate=0.0, refund_rate=0.0),
                   onboard=False, order_prefix="fake")
    fake = [e for e in fake if e["type"] in ("order.placed", "order.paid", "order.shipped")]
    events = sorted(honest + fake, key=lambda e: (e["time"], e["id"]))
    state = MerchantState("m1")
    off = PolicySettings(settled_conversion_ratio=0)
    no_pace = PolicySettings(receivables_pace_bps=10**9)  # isolate the discount from the settled-pace cap
    before: list[int] = []
    during: list[tuple[int, int, str, float]] = []
    for e in events:
        state.apply(e)
        if e["type"] != "settlement.paid" or ts(e) < campaign - timedelta(days=30):
            continue
        d, f = decision_at(state)
        if ts(e) < campaign:
            before.append(d.limit)
            assert "PLACED_AHEAD_OF_SETTLED" not in d.codes  # an honest history is never discounted
        else:
            alone = decision_at(state, no_pace)[0].limit
            without = decision_at(state, PolicySettings(receivables_pace_bps=10**9, settled_conversion_ratio=0))[0].limit
            during.append((d.limit, alone, without, d.codes, f[INDEX["placed_gmv_30d"]] / f[INDEX["settled_gmv_30d"]]))
    base = sum(before) / len(before)
    _, last_alone, last_without, codes, gap = during[-1]
    assert gap > 2.0  # placed GMV ran well ahead of settled GMV
    assert "PLACED_AHEAD_OF_SETTLED" in codes
    assert last_alone * 2 < last_without  # without the settled-pace cap, the discount alone holds the limit back
    assert decision_at(state, off)[0].limit <= last_without
    assert max(limit for limit, *_ in during) <= 1.2 * base, (base, during)


def test_settled_conversion_discount_needs_a_full_settled_window_and_can_be_switched_off() -> None:
    state = MerchantState("m1")
    for e in history("m1", START, 30, Profile(orders_per_day=4)):
        state.apply(e)
    f = compute_features(state, datetime.fromtimestamp(state.latest, UTC))
    f[INDEX["placed_gmv_30d"]] = 10 * max(f[INDEX["settled_gmv_30d"]], 1.0)
    from services.underwriter.domain.policy import settled_conversion_keep

    assert settled_conversion_keep(f, PolicySettings())[0] == 1.0  # 30 days of tenure: too thin to compare
    f[INDEX["tenure_days"]] = 60
    keep, gap, days = settled_conversion_keep(f, PolicySettings())
    assert days == 30 and keep == pytest.approx(1.3 / gap) and keep < 0.2
    assert settled_conversion_keep(f, PolicySettings(settled_conversion_ratio=0))[0] == 1.0
    with pytest.raises(ValueError):
        PolicySettings(settled_conversion_ratio=0.5).validate()


def test_no_new_offer_between_an_acceptance_and_its_loan_so_no_order_is_financed_twice() -> None:
    """The acceptance is heard, then more sales, then the loan: until the loan names its orders they are not
    marked financed, so an offer made in between could finance the same orders again."""
    u = engine(min_offer_minor=1_000)
    events = history("m1", START, 60, Profile(orders_per_day=6))
    out = [o for e in events for o in u.handle(e)]
    first = next(o for o in reversed(out) if o["type"] == "loan_offer.created")["data"]
    assert u.state("m1").offer and u.state("m1").offer[0] == first["offer_id"]
    t, n = START + timedelta(days=60), first["offer_id"]
    accepted = u.handle(_loan_event("m1", "loan_offer.accepted",
                                    {"offer_id": n, "loan_id": "L" + n, "accepted_at": format_rfc3339(t)}, t, n))
    # A burst of new paid and shipped orders: the limit grows, and the accepted offer's orders look unfinanced.
    more = history("m1", START + timedelta(days=60, hours=1), 1, Profile(orders_per_day=40), onboard=False,
                   order_prefix="late")
    between = accepted + [o for e in more if e["type"] in ("order.placed", "order.paid", "order.shipped")
                          for o in u.handle(e)]
    assert not [o for o in between if o["type"] == "loan_offer.created"]
    t2 = START + timedelta(days=61, hours=1)
    brl = {"amount": first["amount"]["amount"], "currency": "BRL"}
    booked = u.handle(_loan_event("m1", "loan.disbursed", {
        "loan_id": "L" + n, "offer_id": n, "principal": brl, "fee": first["fee"], "due_at": first["due_at"],
        "payout_id": "p" + n, "order_ids": first["order_ids"]}, t2, n))
    # Once the loan is booked its orders are financed: any later offer rests on other orders only.
    d, _ = decision_at(u.state("m1"))
    financed = {r.order_id for r in d.receivables if r.financed}
    assert set(first["order_ids"]) & {r.order_id for r in d.receivables} <= financed
    assert financed
    for o in booked:
        if o["type"] == "loan_offer.created":
            assert not set(o["data"]["order_ids"]) & set(first["order_ids"])
