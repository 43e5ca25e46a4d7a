"""Metamorphic properties of `floatbridge replay`: changes to the input file that must not change one emitted byte
(a second run, exact duplicates re-sent later, gzip) and one that must change only the list of refused lines."""

from __future__ import annotations

import gzip
import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from floatbridge.embedded.runner import replay_file
from floatbridge.embedded.streams import MerchantShape, marketplace_stream

pytestmark = pytest.mark.unit

Base = tuple[list[str], bytes]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    """Two merchants who borrow (one stops trading and defaults), a little disorder; its lines and emitted bytes."""
    rng = random.Random(11)
    events = marketplace_stream(rng, [MerchantShape(days=50, orders_per_day=4, silent_from_day=38, odd_rate=0.05),
                                      MerchantShape(currency="KWD", days=50, orders_per_day=3, refund_rate=0.1)],
                                tail_days=80, swaps=10, late=3)
    lines = [json.dumps(e) for e in events]
    out = _replay(tmp_path_factory.mktemp("base"), lines)
    assert b'"loan.disbursed"' in out[1] and b'"loan.delinquent"' in out[1], "the stream lends and defaults"
    return lines, out[1]


def _replay(tmp: Path, lines: list[str], name: str = "in.ndjson") -> tuple[Any, bytes]:
    src = tmp / name
    body = ("\n".join(lines) + "\n").encode("utf-8")
    src.write_bytes(gzip.compress(body, mtime=0) if name.endswith(".gz") else body)
    result = replay_file(src, tmp / "out", accept="all", progress=False)
    return result, (tmp / "out" / "emitted.ndjson").read_bytes()


def test_the_same_file_replayed_twice_emits_byte_identical_output(base: Base, tmp_path: Path) -> None:
    lines, emitted = base
    result, again = _replay(tmp_path, lines)
    assert again == emitted
    assert result.engine.line_errors == []


def test_a_gzipped_file_emits_exactly_what_the_plain_file_emits(base: Base, tmp_path: Path) -> None:
    lines, emitted = base
    _result, zipped = _replay(tmp_path, lines, "in.ndjson.gz")
    assert zipped == emitted


@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.floats(0, 1)), min_size=1, max_size=25))
def test_exact_duplicates_re_sent_later_in_the_stream_change_nothing_emitted(
        base: Base, picks: list[tuple[float, float]]) -> None:
    lines, emitted = base
    with_dups = list(lines)
    for which, where in picks:
        i = int(which * len(with_dups))
        with_dups.insert(i + 1 + int(where * (len(with_dups) - i - 1)), with_dups[i])  # same id, same content
    with TemporaryDirectory() as tmp:
        result, out = _replay(Path(tmp), with_dups)
    assert out == emitted
    assert result.engine.line_errors == [], "an exact duplicate is dropped, not refused"


INVALID = {
    "not json": "{\"specversion\": \"1.0\", \"id\": \"cut",
    "float money": json.dumps({"specversion": "1.0", "id": "inv-float", "source": "x", "type": "order.paid",
                               "time": "2025-01-20T10:00:00Z", "subject": "m0",
                               "data": {"order_id": "m0-o00001", "amount": {"amount": 12.5, "currency": "BRL"}}}),
    "unknown type": json.dumps({"specversion": "1.0", "id": "inv-type", "source": "x", "type": "order.teleported",
                                "time": "2025-01-20T10:00:00Z", "subject": "m0", "data": {}}),
    "missing subject": json.dumps({"specversion": "1.0", "id": "inv-subject", "source": "x", "type": "order.shipped",
                                   "time": "2025-01-20T10:00:00Z", "data": {"order_id": "m0-o00001"}}),
    "a json array": "[1, 2, 3]",
}


@settings(max_examples=5, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.sampled_from(sorted(INVALID)), st.floats(0, 1))
def test_one_invalid_line_is_reported_by_its_number_and_everything_else_is_unchanged(
        base: Base, kind: str, where: float) -> None:
    lines, emitted = base
    at = int(where * len(lines))
    with TemporaryDirectory() as tmp:
        result, out = _replay(Path(tmp), [*lines[:at], INVALID[kind], *lines[at:]])
    assert [line for line, _eid, _errs in result.engine.line_errors] == [at + 1], kind
    assert result.engine.line_errors[0][2], "the line is reported with its errors"
    assert out == emitted


def _in_local_time(line: str, i: int) -> str:
    event = json.loads(line)
    offset = timezone(timedelta(hours=(-3, 5, 9)[i % 3]))
    event["time"] = datetime.fromisoformat(event["time"].replace("Z", "+00:00")).astimezone(offset).isoformat()
    return json.dumps(event)


SAME_EVENTS = {
    "event times with UTC offsets": lambda lines: [_in_local_time(x, i) for i, x in enumerate(lines)],
    "members in another order, other spacing": lambda lines: [
        json.dumps(dict(reversed(list(json.loads(x).items()))), separators=(", ", " : ")) for x in lines],
    "CRLF line ends": lambda lines: [x + "\r" for x in lines],
}


@pytest.mark.parametrize("variant", sorted(SAME_EVENTS))
def test_the_same_events_written_differently_emit_byte_identical_output(base: Base, tmp_path: Path,
                                                                        variant: str) -> None:
    lines, emitted = base
    result, out = _replay(tmp_path, SAME_EVENTS[variant](lines))
    assert result.engine.line_errors == []
    assert out == emitted
