"""Prometheus metrics (floatbridge_disbursement_*) on a per-service registry; DB-backed gauges at scrape."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.disbursement.adapters.orm import loans, merchant_refunds, offers, outbox
from services.disbursement.adapters.repository import get_control
from services.disbursement.domain.loans import OPEN_STATES

log = logging.getLogger(__name__)
NS = "floatbridge_disbursement"
KILL_KEY = "kill_switch"  # control row key (services.disbursement.service.KILL_KEY)


class StateCollector(Collector):
    """Gauges read from the database at scrape time, so every replica reports the same truth."""

    def __init__(self, engine: sa.Engine, clock: Callable[[], datetime], kill_switch_setting: bool = False):
        self.engine = engine
        self.clock = clock
        self.kill_switch_setting = kill_switch_setting  # FLOATBRIDGE_DISBURSEMENT_KILL_SWITCH forces it on

    def collect(self) -> Iterator[GaugeMetricFamily]:
        offers_g = GaugeMetricFamily(f"{NS}_offers", "Offers by state", labels=["state"])
        principal_g = GaugeMetricFamily(
            f"{NS}_outstanding_principal_minor", "Outstanding principal (minor units)", labels=["currency"])
        dpd_g = GaugeMetricFamily(f"{NS}_loans_by_dpd_bucket", "Open loans by days-past-due bucket", labels=["bucket"])
        lag_g = GaugeMetricFamily(f"{NS}_outbox_lag_seconds", "Age of the oldest unsent outbox row")
        kill_g = GaugeMetricFamily(f"{NS}_kill_switch", "1 while acceptances are paused (setting or control row)")
        parked_g = GaugeMetricFamily(
            f"{NS}_payouts_parked", "Accepted loans whose payout failed past the cap and waits for ops "
            "(docs/runbook.md: FloatbridgePayoutsParked); kind: loan or refund (of an overpayment)",
            labels=["currency", "kind"])
        try:
            with self.engine.connect() as conn:
                for state, n in conn.execute(sa.select(offers.c.state, sa.func.count()).group_by(offers.c.state)):
                    offers_g.add_metric([state], n)
                open_ = loans.c.state.in_([s.value for s in OPEN_STATES])
                q = sa.select(loans.c.currency, sa.func.sum(loans.c.principal_due)).where(open_).group_by(loans.c.currency)
                for cur, total in conn.execute(q):
                    principal_g.add_metric([cur], float(total or 0))
                counts: dict[str, int] = dict(conn.execute(
                    sa.select(sa.func.coalesce(loans.c.bucket, "current"), sa.func.count()).where(open_)
                    .group_by(sa.func.coalesce(loans.c.bucket, "current"))).all())
                for bucket in ("current", "1-7", "8-30", "31-60"):
                    dpd_g.add_metric([bucket], counts.get(bucket, 0))
                oldest = conn.execute(sa.select(sa.func.min(outbox.c.id)).where(outbox.c.sent_at.is_(None))).scalar()
                lag = 0.0
                if oldest is not None:
                    created = conn.execute(sa.select(outbox.c.created_at).where(outbox.c.id == oldest)).scalar_one()
                    lag = max(0.0, (self.clock() - created).total_seconds())
                lag_g.add_metric([], lag)
                # Same rule as DisbursementService.kill_switch: the setting or the control row "1".
                on = self.kill_switch_setting or get_control(conn, KILL_KEY) == "1"
                kill_g.add_metric([], 1.0 if on else 0.0)
                for kind, table, waiting in (("loan", loans, "accepted"), ("refund", merchant_refunds, "pending")):
                    parked = conn.execute(
                        sa.select(table.c.currency, sa.func.count()).where(
                            table.c.state == waiting, table.c.payout_parked_at.is_not(None))
                        .group_by(table.c.currency)).all()
                    for cur, n in sorted(parked):
                        parked_g.add_metric([cur, kind], n)
        except sa.exc.SQLAlchemyError as exc:  # a scrape must not fail because the DB blinked
            log.warning("metrics: database unavailable: %s", exc.__class__.__name__)
            return
        yield from (offers_g, principal_g, dpd_g, lag_g, kill_g, parked_g)


class DisbursementMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.accept_latency = Histogram(
            f"{NS}_acceptance_latency_seconds", "Time to answer an offer acceptance", ["outcome"], registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
        self.accepts = Counter(f"{NS}_acceptances_total", "Acceptance answers by code", ["code"], registry=r)
        self.disbursed = Counter(
            f"{NS}_disbursed_minor_total", "Principal disbursed (minor units)", ["currency"], registry=r)
        self.charge_offs = Counter(f"{NS}_charge_offs_total", "Loans charged off", ["currency"], registry=r)
        self.cancelled = Counter(f"{NS}_loans_cancelled_total", "Loans cancelled before payout (rail refused)",
                                 ["currency"], registry=r)
        self.webhook_attempts = Counter(f"{NS}_webhook_attempts_total", "Webhook delivery attempts", registry=r)
        self.webhook_failures = Counter(f"{NS}_webhook_failures_total", "Failed webhook attempts", registry=r)
        self.webhook_dead = Counter(f"{NS}_webhook_dead_letters_total", "Webhooks given up on", registry=r)
        self.webhook_latency = Histogram(
            f"{NS}_webhook_latency_seconds", "Webhook HTTP round trip", registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
        self.events = Counter(f"{NS}_events_consumed_total", "Events handled by type", ["type"], registry=r)
        self.published = Counter(f"{NS}_outbox_published_total", "Outbox rows published", ["topic"], registry=r)
        self.rejected_records = Counter(
            f"{NS}_records_rejected_total", "Consumed records that could not be applied, sent to the dead-letter "
            "topic, by stage (decode: not a CloudEvent; type: not allowed on its topic; apply: refused)",
            ["stage"], registry=r)

    def attach_state(self, engine: sa.Engine, clock: Callable[[], datetime], kill_switch_setting: bool = False) -> None:
        self.registry.register(StateCollector(engine, clock, kill_switch_setting))

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def noop(*_: Any, **__: Any) -> None:
    return None
