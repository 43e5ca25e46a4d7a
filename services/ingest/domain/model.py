"""Value objects of the ingest core: what comes in, what goes out, what the caller is told."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum
from typing import Any, TypeVar

_T = TypeVar("_T", bound=type)


def quick_init(cls: _T) -> _T:
    """Give a frozen slots dataclass an `__init__` that stores each field through its slot descriptor.

    The generated `__init__` of a frozen dataclass calls `object.__setattr__` (looked up anew) for every
    field, several times the cost of a plain attribute store; these value objects are built several times
    per event on the ingest hot path. Same signature, same defaults, instances just as immutable
    (assignment still raises FrozenInstanceError); only for classes without `__post_init__` or
    default factories."""
    if getattr(cls, "__post_init__", None) is not None:
        raise TypeError(f"{cls.__name__} has __post_init__")
    ns: dict[str, Any] = {}
    params: list[str] = []
    body: list[str] = []
    for f in fields(cls):
        if f.default_factory is not MISSING:
            raise TypeError(f"{cls.__name__}.{f.name} has a default factory")
        ns[f"_set_{f.name}"] = cls.__dict__[f.name].__set__
        if f.default is MISSING:
            params.append(f.name)
        else:
            ns[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        body.append(f"    _set_{f.name}(self, {f.name})")
    exec(f"def __init__(self, {', '.join(params)}) -> None:\n" + "\n".join(body), ns)
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init  # type: ignore[misc]
    return cls


@quick_init
@dataclass(frozen=True, slots=True)
class Issue:
    """One problem with an event: a JSON pointer into the raw event and a plain message."""

    pointer: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"pointer": self.pointer, "message": self.message}


class Reason(StrEnum):
    """Bounded reason labels for rejections (also used as metric labels)."""

    MALFORMED = "malformed"
    SIZE = "size"
    SCHEMA = "schema"
    MONEY = "money"
    TIME = "time"
    CONFLICT = "conflict"


class Status(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    RETRY = "retry"  # not taken now (broker down, or another replica holds the id): send again later


@dataclass(frozen=True, slots=True)
class Malformed:
    """An input item that was not even JSON (an NDJSON line, a Kafka record value), or JSON no event may be:
    duplicate keys in an object, a number out of range. `pointer` says where (when known); `doc` is what
    could be parsed of it (kept, redacted, in the dead letter instead of `text`)."""

    text: str
    error: str
    pointer: str = ""
    doc: Any = None


@quick_init
@dataclass(frozen=True, slots=True)
class NormalisedEvent:
    """A canonical event ready to produce; `payload` is its encoded form, `content_hash` its sha256."""

    event_id: str
    event_type: str
    subject: str
    event: dict[str, Any]
    payload: bytes
    content_hash: str


@quick_init
@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    issues: tuple[Issue, ...]
    event_id: str | None = None
    event_type: str | None = None
    subject: str | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class EventResult:
    """The answer for one submitted event, in submission order."""

    index: int
    status: Status
    event_id: str | None = None
    event_type: str | None = None
    reason: Reason | None = None
    errors: tuple[Issue, ...] = ()
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "id": self.event_id, "status": self.status.value}
        if self.reason is not None:
            out["reason"] = self.reason.value
        if self.errors:
            out["errors"] = [e.to_json() for e in self.errors]
        if self.detail:
            out["detail"] = self.detail
        return out


@quick_init
@dataclass(frozen=True, slots=True)
class Outgoing:
    """A record for the sink: `kind` is "event" (marketplace.events) or "rejected" (dead letter)."""

    kind: str
    key: str
    event_id: str
    payload: bytes
    headers: tuple[tuple[str, bytes], ...] = field(default=())
