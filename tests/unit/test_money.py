"""Money: integer minor units, one currency, exact decimal parsing, round-down rates."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.money import MAX_AMOUNT, Money, MoneyError

pytestmark = pytest.mark.unit


def test_addition_and_subtraction_stay_in_minor_units() -> None:
    assert Money(125000, "BRL") + Money(1, "BRL") == Money(125001, "BRL")
    assert Money(125000, "BRL") - Money(25000, "BRL") == Money(100000, "BRL")
    assert -Money(5, "JPY") == Money(-5, "JPY")
    assert Money(3, "BRL").min(Money(2, "BRL")) == Money(2, "BRL")
    assert Money(3, "BRL").max(Money(2, "BRL")) == Money(3, "BRL")
    assert Money(-3, "BRL").clamp_floor_zero() == Money.zero("BRL")


@pytest.mark.parametrize("op", [
    lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a < b, lambda a, b: a <= b, lambda a, b: a.min(b),
])
def test_mixing_currencies_is_an_error(op: object) -> None:
    with pytest.raises(MoneyError, match="currency mismatch: BRL vs USD"):
        op(Money(1, "BRL"), Money(1, "USD"))  # type: ignore[operator]


def test_combining_with_a_plain_number_is_an_error() -> None:
    with pytest.raises(MoneyError):
        Money(1, "BRL") + 1  # type: ignore[operator]


@pytest.mark.parametrize(("value", "currency", "minor"), [
    ("1250", "JPY", 1250), ("12.34", "BRL", 1234), ("12.5", "BRL", 1250), ("1.234", "KWD", 1234),
    ("0.001", "KWD", 1), (Decimal("7"), "BRL", 700), (3, "KWD", 3000),
])
def test_from_major_converts_exactly(value: str | int | Decimal, currency: str, minor: int) -> None:
    assert Money.from_major(value, currency) == Money(minor, currency)


@pytest.mark.parametrize(("value", "currency"), [
    ("1250.5", "JPY"), ("0.1", "JPY"), ("12.345", "BRL"), ("0.001", "BRL"), ("1.2345", "KWD"), ("0.0001", "KWD"),
])
def test_from_major_rejects_more_decimals_than_the_currency_has(value: str, currency: str) -> None:
    with pytest.raises(MoneyError, match=f"more decimals than {currency}"):
        Money.from_major(value, currency)


@pytest.mark.parametrize("value", ["12,34", "", "abc", "1e"])
def test_from_major_rejects_non_decimals(value: str) -> None:
    with pytest.raises(MoneyError, match="not a decimal"):
        Money.from_major(value, "BRL")


@pytest.mark.parametrize(("amount", "bps", "expected"), [
    (999, 3000, 299), (1, 9999, 0), (10_000, 1, 1), (12345, 10_000, 12345), (0, 5000, 0), (3, 3333, 0),
])
def test_mul_bps_rounds_down(amount: int, bps: int, expected: int) -> None:
    assert Money(amount, "BRL").mul_bps(bps) == Money(expected, "BRL")


@given(st.integers(0, MAX_AMOUNT), st.integers(0, 10_000))
def test_mul_bps_never_exceeds_the_exact_product(amount: int, bps: int) -> None:
    result = Money(amount, "BRL").mul_bps(bps).amount
    assert result * 10_000 <= amount * bps < (result + 1) * 10_000


def test_money_is_immutable_and_hashable() -> None:
    money = Money(100, "BRL")
    with pytest.raises(dataclasses.FrozenInstanceError):
        money.amount = 5  # type: ignore[misc]
    assert {money, Money(100, "BRL")} == {money}


@pytest.mark.parametrize(("amount", "currency", "message"), [
    (1.5, "BRL", "integer"), (True, "BRL", "integer"), ("100", "BRL", "integer"),
    (1, "XYZ", "unknown currency"), (1, "brl", "unknown currency"), (MAX_AMOUNT + 1, "BRL", "maximum"),
])
def test_invalid_money_is_refused(amount: object, currency: str, message: str) -> None:
    with pytest.raises(MoneyError, match=message):
        Money(amount, currency)  # type: ignore[arg-type]


def test_json_round_trip_and_strict_parsing() -> None:
    money = Money(12500, "KWD")
    assert Money.from_json(money.to_json()) == money
    with pytest.raises(MoneyError):
        Money.from_json({"amount": 125.0, "currency": "KWD"})
    with pytest.raises(MoneyError):
        Money.from_json({"amount": 125})


@pytest.mark.parametrize(("money", "text"), [
    (Money(125000, "BRL"), "1250.00 BRL"), (Money(3480, "JPY"), "3480 JPY"),
    (Money(12500, "KWD"), "12.500 KWD"), (Money(-5, "BRL"), "-0.05 BRL"),
])
def test_format_uses_the_currency_exponent(money: Money, text: str) -> None:
    assert str(money) == text
