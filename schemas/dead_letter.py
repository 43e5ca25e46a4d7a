"""Dead letters of the services that consume Floatbridge's topics.

A record on an input topic that a consumer cannot apply (not JSON, not a CloudEvent, a type that does not belong
on the topic, data its core refuses) is not only logged: it becomes an `ingest.rejected` event on
`ingest.rejected.v1`, the one dead-letter topic ops already watch, with the raw payload, the error, the topic,
partition and offset it was read from and the consumer that refused it. Its id is derived from that position and
the consumer, so a record processed again after a crash gives the same dead letter (same id), not a second one.

Buyer ids must not leave ingest in clear: a record produced straight to an internal topic may hold a raw one, so
every member whose name starts with "buyer" is blanked in the kept payload.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

REJECTED_TYPE = "ingest.rejected"
REJECTED_SCHEMA = "https://schemas.floatbridge.dev/v1/ingest.rejected.schema.json"
RAW_CAP_BYTES = 64 * 1024
REDACTED = "[redacted]"
MAX_MESSAGE = 1000
MAX_POINTER = 1024
MAX_ERRORS = 200  # the schema's maxItems
# A payload that is not JSON may still hold a buyer member: its value is blanked in the text (redact_text).
_RAW_KEY = re.compile(r'"((?:[^"\\]|\\.)*)"\s*:\s*')
_RAW_VALUE = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\Z)|[\[{].*|[^,}\]\s]*', re.DOTALL)
_ID_NAMESPACE = uuid.UUID("6d1f6f0e-5b2a-4c1e-9a55-0c3d2b7a9e10")


def redact(raw: bytes) -> str:
    """The payload as text with the value of every buyer member blanked (JSON kept as JSON where it parses)."""
    text = raw.decode("utf-8", errors="replace")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return redact_text(text)
    try:
        return json.dumps(_blank(doc), ensure_ascii=False, separators=(",", ":"))
    except RecursionError:
        return redact_text(text)


def redact_text(text: str) -> str:
    """Text that is not JSON with the value of every buyer member blanked, however its name is escaped
    (`"buyer\\u005fid"`), whatever the value (an unterminated string, an object: the rest of the text)."""
    out: list[str] = []
    pos = 0
    for m in _RAW_KEY.finditer(text):
        if m.start() < pos:
            continue
        if not _buyer_key(m.group(1)):
            continue
        value = _RAW_VALUE.match(text, m.end())
        end = value.end() if value else m.end()
        out.append(text[pos:m.end()])
        out.append('"[redacted]"')
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _buyer_key(escaped: str) -> bool:
    if "\\" not in escaped:
        return escaped[:5].lower() == "buyer"
    try:
        name = json.loads(f'"{escaped}"')
    except ValueError:
        return True  # an escape that does not decode: blank the value rather than guess
    return isinstance(name, str) and name[:5].lower() == "buyer"


def _blank(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: REDACTED if isinstance(k, str) and k[:5].lower() == "buyer" else _blank(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_blank(v) for v in node]
    return node


def _cap(text: str) -> tuple[str, bool]:
    data = text.encode("utf-8")
    if len(data) <= RAW_CAP_BYTES:
        return text, False
    return data[:RAW_CAP_BYTES].decode("utf-8", errors="ignore"), True


def consumer_rejection(raw: bytes | None, error: str, *, consumer: str, topic: str, partition: int, offset: int,
                       received_at: datetime, subject: Any = None, event_id: Any = None,
                       event_type: Any = None, errors: Sequence[tuple[str, str]] | None = None,
                       reason: str = "unprocessable") -> dict[str, Any]:
    """The `ingest.rejected` CloudEvent for a record `consumer` could not apply (see the module docstring).

    `errors`: every (JSON pointer, message) found, as ingest's rejections list them (a record refused by the
    marketplace contract, see schemas.contract_check); without it the one `error` is the list. `reason`: why
    (ingest's money/time/schema for a contract refusal; "unprocessable" otherwise)."""
    if received_at.tzinfo is None:
        raise ValueError("received_at must be timezone-aware")
    text, truncated = _cap(redact(raw or b""))
    received = received_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    data: dict[str, Any] = {
        "raw": text, "raw_truncated": truncated, "source": f"kafka:{topic}"[:256], "received_at": received,
        "reason": reason[:64], "consumer": consumer[:64], "partition": partition, "offset": offset,
        "errors": [{"pointer": "", "message": (error or "could not be applied")[:MAX_MESSAGE]}],
    }
    if errors:
        data["errors"] = [{"pointer": pointer if len(pointer) <= MAX_POINTER else "", "message":
                           (message or "invalid")[:MAX_MESSAGE]} for pointer, message in errors[:MAX_ERRORS]]
    for key, val in (("event_id", event_id), ("event_type", event_type)):
        if isinstance(val, str) and val:
            data[key] = val[:128]
    rid = str(uuid.uuid5(_ID_NAMESPACE, f"{consumer}:{topic}:{partition}:{offset}"))
    merchant = subject if isinstance(subject, str) and subject and len(subject) <= 128 else "unknown"
    return {
        "specversion": "1.0", "id": rid, "source": f"floatbridge/{consumer}"[:256], "type": REJECTED_TYPE,
        "time": received, "subject": merchant, "dataschema": REJECTED_SCHEMA, "datacontenttype": "application/json",
        "data": data,
    }
