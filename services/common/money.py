"""Immutable money in integer minor units with an ISO 4217 currency (stdlib only)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

# ISO 4217 minor-unit exponents. Codes not listed are unknown and rejected.
CURRENCY_EXPONENTS: dict[str, int] = {
    "AED": 2, "ARS": 2, "AUD": 2, "BDT": 2, "BGN": 2, "BHD": 3, "BRL": 2, "CAD": 2, "CHF": 2,
    "CLP": 0, "CNY": 2, "COP": 2, "CZK": 2, "DKK": 2, "EGP": 2, "EUR": 2, "GBP": 2, "HKD": 2,
    "HUF": 2, "IDR": 2, "ILS": 2, "INR": 2, "IQD": 3, "ISK": 0, "JOD": 3, "JPY": 0, "KES": 2,
    "KRW": 0, "KWD": 3, "LYD": 3, "MAD": 2, "MXN": 2, "MYR": 2, "NGN": 2, "NOK": 2, "NZD": 2,
    "OMR": 3, "PEN": 2, "PHP": 2, "PKR": 2, "PLN": 2, "PYG": 0, "QAR": 2, "RON": 2, "RUB": 2,
    "SAR": 2, "SEK": 2, "SGD": 2, "THB": 2, "TND": 3, "TRY": 2, "TWD": 2, "UAH": 2, "UGX": 0,
    "USD": 2, "UYU": 2, "VND": 0, "XAF": 0, "XOF": 0, "ZAR": 2,
    # The rest of ISO 4217's current codes (funds codes among them: CLF and UYW have 4 decimals, UYI none);
    # precious metals, SDR and the test/no-currency codes (XAU, XDR, XTS, XXX...) are not currencies of account.
    "AFN": 2, "ALL": 2, "AMD": 2, "AOA": 2, "AWG": 2, "AZN": 2, "BAM": 2, "BBD": 2, "BIF": 0, "BMD": 2,
    "BND": 2, "BOB": 2, "BOV": 2, "BSD": 2, "BTN": 2, "BWP": 2, "BYN": 2, "BZD": 2, "CDF": 2, "CHE": 2,
    "CHW": 2, "CLF": 4, "COU": 2, "CRC": 2, "CUP": 2, "CVE": 2, "DJF": 0, "DOP": 2, "DZD": 2, "ERN": 2,
    "ETB": 2, "FJD": 2, "FKP": 2, "GEL": 2, "GHS": 2, "GIP": 2, "GMD": 2, "GNF": 0, "GTQ": 2, "GYD": 2,
    "HNL": 2, "HTG": 2, "IRR": 2, "JMD": 2, "KGS": 2, "KHR": 2, "KMF": 0, "KPW": 2, "KYD": 2, "KZT": 2,
    "LAK": 2, "LBP": 2, "LKR": 2, "LRD": 2, "LSL": 2, "MDL": 2, "MGA": 2, "MKD": 2, "MMK": 2, "MNT": 2,
    "MOP": 2, "MRU": 2, "MUR": 2, "MVR": 2, "MWK": 2, "MXV": 2, "MZN": 2, "NAD": 2, "NIO": 2, "NPR": 2,
    "PAB": 2, "PGK": 2, "RSD": 2, "RWF": 0, "SBD": 2, "SCR": 2, "SDG": 2, "SHP": 2, "SLE": 2, "SOS": 2,
    "SRD": 2, "SSP": 2, "STN": 2, "SVC": 2, "SYP": 2, "SZL": 2, "TJS": 2, "TMT": 2, "TOP": 2, "TTD": 2,
    "TZS": 2, "USN": 2, "UYI": 0, "UYW": 4, "UZS": 2, "VED": 2, "VES": 2, "VUV": 0, "WST": 2, "XCD": 2,
    "XCG": 2, "XPF": 0, "YER": 2, "ZMW": 2, "ZWG": 2,
}

# Largest amount accepted anywhere: 10^15 minor units keeps every sum inside int64 columns.
MAX_AMOUNT = 10**15


class MoneyError(ValueError):
    """Raised for an unknown currency, a mixed-currency operation or an invalid amount."""


def exponent(currency: str) -> int:
    try:
        return CURRENCY_EXPONENTS[currency]
    except KeyError:
        raise MoneyError(f"unknown currency {currency!r}") from None


@dataclass(frozen=True, slots=True)
class Money:
    amount: int
    currency: str

    def __post_init__(self) -> None:
        if type(self.amount) is not int:
            raise MoneyError(f"amount must be an integer number of minor units, got {self.amount!r}")
        if self.currency not in CURRENCY_EXPONENTS:
            raise MoneyError(f"unknown currency {self.currency!r}")
        if abs(self.amount) > MAX_AMOUNT:
            raise MoneyError(f"amount {self.amount} exceeds the maximum {MAX_AMOUNT}")

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(0, currency)

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> Money:
        amount = obj.get("amount")
        currency = obj.get("currency")
        if not isinstance(currency, str):
            raise MoneyError("currency must be a string")
        if type(amount) is not int:
            raise MoneyError(f"amount must be an integer, got {amount!r}")
        return cls(amount, currency)

    @classmethod
    def from_major(cls, value: str | int | Decimal, currency: str) -> Money:
        """Parse a decimal major-unit amount ("12.34"); more precision than the currency has is an error."""
        exp = exponent(currency)
        try:
            dec = Decimal(str(value))
        except InvalidOperation:
            raise MoneyError(f"not a decimal amount: {value!r}") from None
        scaled = dec.scaleb(exp)
        if scaled != scaled.to_integral_value():
            raise MoneyError(f"{value} has more decimals than {currency} allows ({exp})")
        return cls(int(scaled), currency)

    def to_json(self) -> dict[str, object]:
        return {"amount": self.amount, "currency": self.currency}

    def _check(self, other: Money) -> None:
        if not isinstance(other, Money):
            raise MoneyError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise MoneyError(f"currency mismatch: {self.currency} vs {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._check(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._check(other)
        return Money(self.amount - other.amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._check(other)
        return self.amount < other.amount

    def __le__(self, other: Money) -> bool:
        self._check(other)
        return self.amount <= other.amount

    def min(self, other: Money) -> Money:
        return self if self <= other else other

    def max(self, other: Money) -> Money:
        return self if other <= self else other

    def clamp_floor_zero(self) -> Money:
        return self if self.amount >= 0 else Money(0, self.currency)

    def mul_bps(self, bps: int) -> Money:
        """Multiply by a rate in basis points, rounding down (never lend a fraction more)."""
        return Money((self.amount * bps) // 10_000, self.currency)

    def is_zero(self) -> bool:
        return self.amount == 0

    def format(self) -> str:
        exp = exponent(self.currency)
        sign = "-" if self.amount < 0 else ""
        whole, frac = divmod(abs(self.amount), 10**exp) if exp else (abs(self.amount), 0)
        return f"{sign}{whole}.{frac:0{exp}d} {self.currency}" if exp else f"{sign}{whole} {self.currency}"

    def __str__(self) -> str:
        return self.format()
