"""Consumer-lag exporter and report renderer, with fakes (no Kafka, no Prometheus)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from floatbridge.observability.lag import LagCollector, compute_lag, poll_lag
from floatbridge.observability.report import legend, parse_duration, render_report

pytestmark = pytest.mark.unit


class FakeOffsets:
    def __init__(self) -> None:
        self.commits = {"underwriter": {("marketplace.events.v1", 0): 40, ("marketplace.events.v1", 1): 7},
                        "empty-group": {}, "new-group": {("loans.v1", 0): -1}}
        self.ends = {("marketplace.events.v1", 0): 100, ("marketplace.events.v1", 1): 7, ("loans.v1", 0): 3}
        self.fail = False

    def groups(self) -> list[str]:
        if self.fail:
            raise ConnectionError("broker gone")
        return list(self.commits)

    def committed(self, group: str) -> dict[tuple[str, int], int]:
        return dict(self.commits[group])

    def end_offsets(self, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return {tp: self.ends[tp] for tp in partitions}


def test_lag_is_end_minus_committed_and_never_negative() -> None:
    samples = compute_lag("g", {("t", 0): 5, ("t", 1): 12, ("gone", 0): 1}, {("t", 0): 9, ("t", 1): 10})
    assert [(s.partition, s.lag) for s in samples] == [(0, 4), (1, 0)]


def test_partitions_without_a_commit_are_not_reported_as_zero_lag() -> None:
    assert poll_lag(FakeOffsets(), {"new-group"}) == []


def test_exporter_serves_lag_per_group_topic_partition() -> None:
    collector = LagCollector(FakeOffsets())
    collector.refresh()
    registry = CollectorRegistry()
    registry.register(collector)  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert ('floatbridge_kafka_consumer_lag_messages{group="underwriter",partition="0",'
            'topic="marketplace.events.v1"} 60.0') in text
    assert 'partition="1",topic="marketplace.events.v1"} 0.0' in text


def test_a_failed_poll_keeps_the_last_snapshot_and_counts_the_error() -> None:
    source = FakeOffsets()
    collector = LagCollector(source)
    collector.refresh()
    source.fail = True
    collector.refresh()
    registry = CollectorRegistry()
    registry.register(collector)  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert "floatbridge_kafka_lag_exporter_errors_total 1.0" in text
    assert 'group="underwriter"' in text


@pytest.mark.parametrize("text, seconds", [("15m", 900), ("1h", 3600), ("2d", 172800)])
def test_durations_parse(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "0h", "1.5h", "10", "h"])
def test_bad_durations_are_refused_with_a_clear_message(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(bad)


def test_legend_templates_use_series_labels() -> None:
    assert legend("{{group}} {{topic}}[{{partition}}]", {"group": "u", "topic": "t", "partition": "3"}, "x") == "u t[3]"
    assert legend("", {"__name__": "m", "code": "ok"}, "expr") == "code=ok"


class _FakePrometheus(BaseHTTPRequestHandler):
    queries: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        url = urlparse(self.path)
        if url.path == "/-/ready":
            body: dict[str, Any] | str = "ready"
        else:
            q = parse_qs(url.query)
            expr = q["query"][0]
            self.queries.append(expr)
            if "floatbridge_ingest_events_received_total" in expr:
                start = float(q["start"][0])
                body = {"status": "success", "data": {"resultType": "matrix", "result": [
                    {"metric": {"intake": "http"}, "values": [[start + 60 * i, str(i)] for i in range(5)]}]}}
            else:
                body = {"status": "success", "data": {"resultType": "matrix", "result": []}}
        raw = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *_: Any) -> None:
        pass


def test_report_renders_every_dashboard_from_range_queries(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakePrometheus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        pages = render_report(f"http://127.0.0.1:{server.server_port}", tmp_path / "out", 3600, now=1_700_000_000)
    finally:
        server.shutdown()
    names = sorted(p.name for p in pages)
    assert names == ["floatbridge-operations.html", "floatbridge-risk-and-portfolio.html",
                     "floatbridge-webhooks-and-integrations.html", "index.html"]
    ops = (tmp_path / "out" / "floatbridge-operations.html").read_text()
    assert "<h2>Ingest events received</h2>" in ops and "<polyline" in ops and ">http<" in ops
    assert not any("$__" in q for q in _FakePrometheus.queries), "Grafana macros must be substituted"
