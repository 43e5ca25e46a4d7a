"""Merchant plans: the latent business each merchant runs, drawn once from its own RNG.

A plan fixes, per day, the latent health (0 = dead, 1 = thriving), the genuine order
rate and the rate of fake orders. Everything observable (orders, cancellations,
refunds, settlements) is derived from the plan by the engine, so a default is a
consequence of the business: a collapsing merchant stops shipping, its in-flight
orders are cancelled or refunded and its settlements dry up.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from floatbridge.simulator.config import ARCHETYPES, SimConfig

CATEGORIES = ("electronics", "fashion", "home", "beauty", "toys", "sports", "books", "food")
# Relative ticket size per category (electronics tickets are large, books small).
CATEGORY_TICKET = {"electronics": 2.6, "fashion": 1.0, "home": 1.4, "beauty": 0.8, "toys": 0.9,
                   "sports": 1.3, "books": 0.5, "food": 0.6}


@dataclass(slots=True)
class MerchantPlan:
    index: int
    merchant_id: str
    archetype: str
    category: str
    onboard_day: int
    base_rate: float  # genuine orders/day at full health
    ticket_centavos: int  # median ticket
    fee_bps: int  # marketplace commission on settlements
    payout_offset: int  # merchant is paid out on days where (day + offset) % 7 == 0
    health: list[float]  # per day
    rate: list[float]  # genuine orders/day, per day
    fake_rate: list[float]  # fake orders/day, per day (brushing or bust-out inflation)
    collapse_day: int | None  # the business stops (fails or disappears) on this day
    repeat_share: float
    loyal_buyers: int
    fake_buyers: int
    notes: dict[str, int]

    def would_default(self) -> bool:
        return self.collapse_day is not None


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    names = [a for a in ARCHETYPES if weights.get(a, 0) > 0]
    return rng.choices(names, weights=[weights[a] for a in names])[0]


def _ar_noise(rng: random.Random, days: int, sigma: float, phi: float = 0.9) -> list[float]:
    out, x = [], 0.0
    for _ in range(days):
        x = phi * x + rng.gauss(0, sigma)
        out.append(x)
    return out


def _decline(health: list[float], start: int, length: int, floor: float, stop: float = 1.0) -> int | None:
    """Walk health down linearly from `start` over `length` days; return the collapse day if it fails.

    A failing business rarely fades to nothing: it stops abruptly (cash or stock runs out) once the
    decline has gone `stop` of the way, with orders still in flight.
    """
    h0 = health[start] if start < len(health) else 0.8
    for d in range(start, len(health)):
        frac = min(1.0, (d - start) / max(1, length))
        health[d] = max(floor, h0 * (1 - frac) + floor * frac) if floor > 0 else h0 * (1 - frac)
        if floor == 0 and frac >= stop:
            for k in range(d, len(health)):
                health[k] = 0.0
            return d
    return None


def make_plan(cfg: SimConfig, index: int) -> MerchantPlan:
    rng = random.Random(cfg.seed * 1_000_003 + index * 7_919 + 17)
    days = cfg.days
    archetype = _pick(rng, cfg.mix)
    category = rng.choice(CATEGORIES)
    # Most merchants exist before day 0; a few onboard during the run.
    onboard_day = 0 if rng.random() < 0.85 else rng.randrange(0, max(1, days // 2))
    # Log-normal spread of sizes with the configured mean (mean = exp(mu + s^2/2)).
    s = 0.9
    base_rate = min(40.0, max(0.15, math.exp(math.log(cfg.mean_orders_per_day) - s * s / 2 + rng.gauss(0, s))))
    ticket = int(cfg.median_ticket_centavos * CATEGORY_TICKET[category] * math.exp(rng.gauss(0, 0.35)))
    health = [min(1.0, max(0.05, 0.82 + n)) for n in _ar_noise(rng, days, 0.02)]
    mult = [1.0] * days
    fake = [0.0] * days
    collapse: int | None = None
    notes: dict[str, int] = {}

    if archetype == "growing":
        g = rng.uniform(0.04, 0.12)  # monthly growth
        mult = [math.exp(g * d / 30) for d in range(days)]
    elif archetype == "seasonal":
        amp, phase = rng.uniform(0.3, 0.7), rng.randrange(365)
        start_doy = cfg.start_dt().timetuple().tm_yday
        for d in range(days):
            doy = (start_doy + d) % 365
            bump = 1.8 if 325 <= doy <= 332 else (1.4 if 340 <= doy <= 358 else 1.0)
            mult[d] = max(0.1, (1 + amp * math.sin(2 * math.pi * (doy - phase) / 365)) * bump)
    elif archetype == "declining":
        start = rng.randrange(min(30, days - 1), max(31, days - 20)) if days > 40 else 0
        length = rng.randrange(30, 150)
        floor = 0.0 if rng.random() < 0.7 else rng.uniform(0.3, 0.45)
        collapse = _decline(health, start, length, floor, rng.uniform(0.45, 0.8))
        notes["decline_start_day"] = start
    elif archetype == "brushing":
        # Campaigns of fake orders that escalate until placed GMV is several times the genuine one.
        d = rng.randrange(14, 60)
        level = rng.uniform(0.5, 1.0)
        notes["first_campaign_day"] = d
        while d < days:
            length = rng.randrange(7, 28)
            for k in range(d, min(days, d + length)):
                fake[k] = base_rate * level
            level = min(4.0, level * rng.uniform(1.3, 1.8))
            d += length + rng.randrange(3, 21)
    elif archetype == "bust_out":
        lo = min(90, max(1, days // 3))
        disappear = rng.randrange(lo, max(lo + 1, days - 10)) if days > 20 else days
        inflate_len = rng.randrange(14, 35)
        factor = rng.uniform(2.5, 6.0)
        for k in range(max(0, disappear - inflate_len), min(days, disappear)):
            ramp = (k - (disappear - inflate_len)) / inflate_len
            fake[k] = base_rate * factor * (0.3 + 0.7 * ramp)
        if disappear < days:
            collapse = disappear
            for k in range(disappear, days):
                health[k] = 0.0
        notes["inflate_start_day"] = max(0, disappear - inflate_len)

    # A healthy-looking business can still fail (a lost supplier, a fraud claim): short warning.
    healthy = collapse is None and archetype in ("steady", "growing", "seasonal") and days > 30
    if healthy and rng.random() < cfg.shock_rate_per_year * days / 365:
        start = rng.randrange(15, days - 5)
        collapse = _decline(health, start, rng.randrange(10, 45), 0.0, rng.uniform(0.45, 0.8))
        notes["shock_start_day"] = start

    # Genuine demand follows health: a sick business sells (and ships) less.
    rate = [base_rate * mult[d] * min(1.2, health[d] / 0.82) ** 1.5 for d in range(days)]
    return MerchantPlan(
        index=index,
        merchant_id=f"m{index:06d}",
        archetype=archetype,
        category=category,
        onboard_day=onboard_day,
        base_rate=base_rate,
        ticket_centavos=max(500, ticket),
        fee_bps=rng.randrange(1000, 1700, 50),
        payout_offset=rng.randrange(7),
        health=health,
        rate=rate,
        fake_rate=fake,
        collapse_day=collapse,
        repeat_share=rng.uniform(0.1, 0.45),
        loyal_buyers=rng.randrange(15, 250),
        fake_buyers=rng.randrange(3, 9) if archetype == "brushing" else rng.randrange(10, 40),
        notes=notes,
    )


def truth_record(plan: MerchantPlan) -> dict[str, object]:
    """What the simulator knows and the model must never see (weekly health to keep it small)."""
    return {
        "archetype": plan.archetype,
        "category": plan.category,
        "onboard_day": plan.onboard_day,
        "collapse_day": plan.collapse_day,
        "would_default": plan.would_default(),
        "base_orders_per_day": round(plan.base_rate, 3),
        "health_weekly": [round(h, 3) for h in plan.health[::7]],
        **plan.notes,
    }
