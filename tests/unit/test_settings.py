"""Settings from the environment: typed, frozen, and every bad value names its variable."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from services.common.settings import SettingsError, describe, load, redact

pytestmark = pytest.mark.unit

PREFIX = "FLOATBRIDGE_TEST_"


@dataclass(frozen=True)
class Sample:
    bootstrap: str = "127.0.0.1:19092"
    partitions: int = 12
    max_pd: float = 0.2
    kill_switch: bool = False
    currencies: tuple[str, ...] = ("BRL",)
    api_key: str | None = field(default=None, metadata={"doc": "marketplace key"})

    def validate(self) -> None:
        if self.partitions < 1:
            raise ValueError("partitions must be at least 1")


@dataclass(frozen=True)
class NeedsSecret:
    secret: str


def test_defaults_apply_when_nothing_is_set() -> None:
    assert load(Sample, PREFIX, environ={}) == Sample()


def test_values_are_converted_by_field_type() -> None:
    env = {PREFIX + "PARTITIONS": "3", PREFIX + "MAX_PD": "0.05", PREFIX + "KILL_SWITCH": "yes",
           PREFIX + "CURRENCIES": "BRL, JPY,,KWD", PREFIX + "API_KEY": "k"}
    loaded = load(Sample, PREFIX, environ=env)
    assert (loaded.partitions, loaded.max_pd, loaded.kill_switch) == (3, 0.05, True)
    assert loaded.currencies == ("BRL", "JPY", "KWD")
    assert loaded.api_key == "k"


def test_empty_optional_value_means_none() -> None:
    assert load(Sample, PREFIX, environ={PREFIX + "API_KEY": ""}).api_key is None


@pytest.mark.parametrize(("name", "value"), [
    ("PARTITIONS", "twelve"), ("MAX_PD", "low"), ("KILL_SWITCH", "maybe"), ("PARTITIONS", "1.5"),
])
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=PREFIX + name) as info:
        load(Sample, PREFIX, environ={PREFIX + name: value})
    assert repr(value) in str(info.value)


def test_missing_required_value_names_the_variable() -> None:
    with pytest.raises(SettingsError, match=f"{PREFIX}SECRET is required"):
        load(NeedsSecret, PREFIX, environ={})


def test_validate_failure_becomes_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="partitions must be at least 1"):
        load(Sample, PREFIX, environ={PREFIX + "PARTITIONS": "0"})


def test_overrides_win_and_settings_are_frozen() -> None:
    loaded = load(Sample, PREFIX, environ={PREFIX + "PARTITIONS": "3"}, partitions=1)
    assert loaded.partitions == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.partitions = 2  # type: ignore[misc]


def test_describe_and_redact_never_show_secrets() -> None:
    rows = {var: (default, doc) for var, default, doc in describe(Sample, PREFIX)}
    assert rows[PREFIX + "API_KEY"] == ("None", "marketplace key")
    assert redact("s3cr3t") == "<set, 6 chars>"
    assert "s3cr3t" not in redact("s3cr3t")
    assert redact("") == "<unset>"
