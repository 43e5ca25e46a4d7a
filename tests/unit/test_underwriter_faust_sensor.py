from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from services.underwriter.adapters.faust_app import attach_faust_sensor, create_app
from services.underwriter.settings import load

pytestmark = pytest.mark.unit


def test_worker_exports_faust_sensor_metrics_beside_its_own_under_the_service_prefix() -> None:
    app, uw = create_app(load(store="memory://", web_port=0, metrics_port=0))
    registry = uw.metrics.registry
    attach_faust_sensor(app, registry)
    names = {m.name for m in registry.collect()}
    faust_names = {n for n in names if n.startswith("floatbridge_underwriter_faust_")}
    assert "floatbridge_underwriter_faust_messages_received" in faust_names, sorted(faust_names)[:10]
    assert any(n.startswith("floatbridge_underwriter_") and "faust" not in n for n in names)
    assert isinstance(registry, CollectorRegistry)
