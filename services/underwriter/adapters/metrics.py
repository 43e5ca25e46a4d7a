"""Prometheus metrics of the underwriter (no merchant labels: bounded cardinality)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from services.underwriter.domain.psi import RollingPSI, ScoreReference

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)
LAG_BUCKETS = (0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 3600, 21600, 86400)
LIMIT_BUCKETS = (0, 10_000, 50_000, 100_000, 500_000, 1_000_000, 5_000_000, 10_000_000)
PD_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
BATCH_BUCKETS = (1, 10, 50, 100, 200, 500, 1000, 2000, 5000)
PSI_EVERY = 200  # recompute the PSI gauge every this many scores (not per score)


class UnderwriterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_total = Counter("floatbridge_underwriter_events_total", "Events consumed, by type and outcome",
                              ["type", "outcome"], registry=r)
        self.decisions = Counter("floatbridge_underwriter_decisions_total", "Decisions emitted, by kind", ["kind"], registry=r)
        self.scores = Counter("floatbridge_underwriter_scores_total", "Merchants scored, by trigger", ["trigger"], registry=r)
        self.processing = Histogram("floatbridge_underwriter_processing_seconds",
                                    "Wall-clock delay from consuming an event to emitting its decisions",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.event_lag = Histogram("floatbridge_underwriter_event_time_lag_seconds",
                                   "Wall clock minus event time of consumed events", buckets=LAG_BUCKETS, registry=r)
        self.limits = Histogram("floatbridge_underwriter_limit_minor_units", "Credit limits decided (minor units)",
                                buckets=LIMIT_BUCKETS, registry=r)
        self.pd = Histogram("floatbridge_underwriter_pd", "Calibrated probability of default of scored merchants",
                            buckets=PD_BUCKETS, registry=r)
        self.model = Info("floatbridge_underwriter_model", "Champion and challenger model versions", registry=r)
        self.table_size = Gauge("floatbridge_underwriter_table_merchants", "Merchants held in the state table", registry=r)
        self.pending = Gauge("floatbridge_underwriter_pending_merchants", "Merchants waiting for a debounced rescore", registry=r)
        self.challenger = Counter("floatbridge_underwriter_challenger_scores_total",
                                  "Challenger scores beside the champion, by agreement on the PD tier",
                                  ["agreement"], registry=r)
        self.challenger_pd_diff = Histogram("floatbridge_underwriter_challenger_pd_abs_diff",
                                            "Absolute PD difference challenger vs champion",
                                            buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5), registry=r)
        self.psi = Gauge("floatbridge_underwriter_score_psi",
                         "PSI of the most recent PDs of merchants with a limit against the champion's training score distribution",
                         ["model_version"], registry=r)
        self.batch_records = Histogram("floatbridge_underwriter_batch_records",
                                       "Records per batch the worker hands to the core (each merchant of a batch is scored once)",
                                       buckets=BATCH_BUCKETS, registry=r)
        self.rejected = Counter("floatbridge_underwriter_records_rejected_total",
                                "Input records the worker could not apply, sent to the dead-letter topic, by stage "
                                "(decode: not a CloudEvent; type: not allowed on its topic; apply: refused by the core)",
                                ["stage"], registry=r)
        self.kill_switch = Gauge("floatbridge_underwriter_kill_switch",
                                 "1 while the underwriter's kill switch pauses new offers", registry=r)
        self._rolling: RollingPSI | None = None
        self._psi_child: Any = None
        # Label children cached by label value: .labels() costs more than the increment itself.
        self._event_children: dict[tuple[str, str], Any] = {}
        self._score_children: dict[str, Any] = {}
        self._decision_children: dict[str, Any] = {}

    def track_psi(self, model_version: str, reference: Mapping[str, Any], window: int = 5000,
                  every: int = PSI_EVERY) -> None:
        """Start the PSI gauge of `model_version` against its metadata's score_reference block."""
        self._rolling = RollingPSI(ScoreReference.from_json(reference), window=window, every=min(every, window))
        self._psi_child = self.psi.labels(model_version)
        self._psi_child.set(float("nan"))  # not computed yet: no data, rather than a reassuring 0

    def kill_switch_state(self, on: bool) -> None:
        self.kill_switch.set(1 if on else 0)

    # The service calls these; kept tiny so a fake is trivial.
    def events(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Events of one batch by (type, outcome)."""
        for key, n in counts.items():
            child = self._event_children.get(key)
            if child is None:
                child = self._event_children[key] = self.events_total.labels(*key)
            child.inc(n)

    def lags(self, seconds: Sequence[float]) -> None:
        """The event-time lag of each event of one batch."""
        observe_many(self.event_lag, [max(0.0, s) for s in seconds])

    def processed(self, seconds: float) -> None:
        self.processing.observe(seconds)

    def scored(self, trigger: str, pd: float, limit: int) -> None:
        child = self._score_children.get(trigger)
        if child is None:
            child = self._score_children[trigger] = self.scores.labels(trigger)
        child.inc()
        self.pd.observe(pd)
        self.limits.observe(limit)
        # Only merchants granted a limit: the reference is the training rows, which are credit decision
        # points (tenure and receivables minimums); new or ineligible merchants would read as drift.
        if self._rolling is not None and limit > 0:
            value = self._rolling.add(pd)
            if value is not None:
                self._psi_child.set(value)

    def decision(self, kind: str) -> None:
        child = self._decision_children.get(kind)
        if child is None:
            child = self._decision_children[kind] = self.decisions.labels(kind)
        child.inc()

    def model_info(self, champion: str, challenger: str) -> None:
        self.model.info({"champion": champion, "challenger": challenger or "none"})

    def shadow(self, agree: bool, diff: float) -> None:
        self.challenger.labels("agree" if agree else "disagree").inc()
        self.challenger_pd_diff.observe(diff)

    def rejected_record(self, stage: str) -> None:
        self.rejected.labels(stage).inc()

    def batch(self, records: int) -> None:
        self.batch_records.observe(records)

    def sizes(self, merchants: int, pending: int) -> None:
        self.table_size.set(merchants)
        self.pending.set(pending)


def observe_many(histogram: Any, values: Sequence[float]) -> None:
    """Histogram.observe for each value, with one update per bucket instead of one per value (a batch of 1,000
    events paid ~1,000 locked updates of the sum and of a bucket). Reads prometheus_client's bucket list, the same
    way Histogram.observe does; a test checks the exposition equals observing the values one by one."""
    if not values:
        return
    histogram._raise_if_not_observable()
    bounds = histogram._upper_bounds
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect_left(bounds, value)] += 1  # the first bound >= value, as observe's `value <= bound`
    for i, n in enumerate(counts):
        if n:
            histogram._buckets[i].inc(n)
    histogram._sum.inc(sum(values))
