"""Frozen settings read from the environment with a prefix, validated at start (stdlib only).

Each service declares a frozen dataclass; `load(cls, prefix)` fills it from
`<PREFIX><FIELD_NAME_UPPER>` variables, converting by the field's type, and raises
`SettingsError` naming the variable when a value is missing or malformed.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class SettingsError(ValueError):
    pass


def _convert(raw: str, typ: Any, var: str) -> Any:
    origin = typing.get_origin(typ)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if raw == "":
            return None
        return _convert(raw, args[0], var)
    if typ is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{var}: expected a boolean (true/false), got {raw!r}")
    if typ is int:
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{var}: expected an integer, got {raw!r}") from None
    if typ is float:
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"{var}: expected a number, got {raw!r}") from None
    if typ is str:
        return raw
    if origin is tuple:
        inner = typing.get_args(typ)[0]
        return tuple(_convert(p.strip(), inner, var) for p in raw.split(",") if p.strip())
    raise SettingsError(f"{var}: unsupported setting type {typ!r}")


def load(cls: type[T], prefix: str, environ: Mapping[str, str] | None = None, **overrides: Any) -> T:
    env = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name in overrides:
            values[field.name] = overrides[field.name]
            continue
        var = prefix + field.name.upper()
        if var in env:
            values[field.name] = _convert(env[var], hints[field.name], var)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise SettingsError(f"{var} is required but not set")
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except SettingsError:
            raise
        except ValueError as exc:
            raise SettingsError(f"{prefix}*: {exc}") from None
    return obj


def describe(cls: type[Any], prefix: str) -> list[tuple[str, str, str]]:
    """(variable, default, doc) rows for the README's configuration table."""
    rows = []
    for field in dataclasses.fields(cls):
        default = field.default if field.default is not dataclasses.MISSING else "(required)"
        rows.append((prefix + field.name.upper(), repr(default), str(field.metadata.get("doc", ""))))
    return rows


def redact(value: str) -> str:
    """Show that a secret is set without showing it."""
    return "<unset>" if not value else f"<set, {len(value)} chars>"
