"""The disbursement kill-switch gauge follows the database control row (and the forcing setting)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.disbursement.bootstrap import bootstrap
from services.disbursement.settings import DisbursementSettings
from tests.unit.disbursement_helpers import Bus, Clock, Transport

pytestmark = pytest.mark.unit


def _service(tmp_path: Any, settings: DisbursementSettings) -> tuple[Any, CollectorRegistry]:
    registry = CollectorRegistry()
    svc = bootstrap(settings, db_url=f"sqlite:///{tmp_path}/d.db", bus=Bus(), transport=Transport(),
                    clock=Clock(), registry=registry)
    return svc, registry


def test_kill_switch_gauge_follows_the_control_row(tmp_path: Any) -> None:
    svc, registry = _service(tmp_path, DisbursementSettings())
    assert registry.get_sample_value("floatbridge_disbursement_kill_switch") == 0.0
    svc.set_kill_switch(True)
    assert registry.get_sample_value("floatbridge_disbursement_kill_switch") == 1.0
    svc.set_kill_switch(False)
    assert registry.get_sample_value("floatbridge_disbursement_kill_switch") == 0.0


def test_kill_switch_setting_forces_the_gauge_on(tmp_path: Any) -> None:
    _, registry = _service(tmp_path, DisbursementSettings(kill_switch=True))
    assert registry.get_sample_value("floatbridge_disbursement_kill_switch") == 1.0
