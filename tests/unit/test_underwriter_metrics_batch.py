"""The underwriter's per-batch metric updates expose exactly what per-event updates would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from services.underwriter.adapters.metrics import LAG_BUCKETS, observe_many


def _histogram() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    return registry, Histogram("lag_seconds", "lag", buckets=LAG_BUCKETS, registry=registry)


def _samples(registry: CollectorRegistry) -> list[bytes]:
    return [line for line in generate_latest(registry).splitlines() if b"_created" not in line]


def test_observing_a_batch_of_lags_at_once_exposes_the_same_buckets_and_sum_as_one_by_one() -> None:
    values = [0.0, 0.1, 0.1000001, 0.5, 3.0, 30.0, 86400.0, 86400.5, 1e9, 59.999, 60.0, 0.05]
    one_registry, one = _histogram()
    for v in values:
        one.observe(v)
    many_registry, many = _histogram()
    observe_many(many, values)
    observe_many(many, [])
    assert _samples(many_registry) == _samples(one_registry)
    assert many_registry.get_sample_value("lag_seconds_bucket", {"le": "60.0"}) == 9
    assert many_registry.get_sample_value("lag_seconds_count") == len(values)
