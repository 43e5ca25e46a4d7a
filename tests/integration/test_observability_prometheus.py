"""A real Prometheus scrapes running Floatbridge processes; every panel query of the committed
dashboards must return data and every alert rule must parse and evaluate without error.

The processes to run live in PROCESSES below (one place): each is a command line with {port} (and
optionally {kafka}) placeholders and the Prometheus job it is scraped as.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from floatbridge.observability.promapi import PrometheusClient, PrometheusError
from floatbridge.observability.queries import RULES_DIR, all_panel_queries, load_rules, render_expr

pytestmark = pytest.mark.integration

FB = [sys.executable, "-m", "floatbridge.cli"]


@dataclass(frozen=True)
class Proc:
    name: str
    job: str
    argv: tuple[str, ...]


# The running system under test. The embedded engine serves all three services' metrics on one port
# while it runs; the run must last until the checks below have passed (DATA_TIMEOUT).
PROCESSES: tuple[Proc, ...] = (
    Proc("embedded", "floatbridge-embedded",
         (*FB, "demo", "--merchants", "100", "--days", "90", "--no-progress", "--out", "{tmp}/demo",
          "--metrics-port", "{port}", "--hold", "600")),
    Proc("lag-exporter", "floatbridge-lag-exporter",
         (*FB, "lag-exporter", "--port", "{port}", "--bootstrap-servers", "{kafka}", "--interval", "1")),
)

START_TIMEOUT = 90.0  # per process, until /metrics answers
DATA_TIMEOUT = 120.0  # until every panel query has data
RATE_INTERVAL = "1m"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metrics_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _wait(what: str, ok: Callable[[], bool], timeout: float, alive: Callable[[], str | None]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        dead = alive()
        if dead:
            pytest.fail(f"{what}: {dead}", pytrace=False)
        time.sleep(0.5)
    pytest.fail(f"{what}: not ready after {timeout:.0f}s", pytrace=False)


def _tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def _command_available(argv: tuple[str, ...]) -> bool:
    sub = argv[len(FB)]
    probe = subprocess.run([*FB, sub, "--help"], capture_output=True, timeout=60)
    return probe.returncode == 0


def _binary(name: str, env_var: str) -> str:
    path = os.environ.get(env_var) or shutil.which(name)
    if not path:
        pytest.skip(f"{name} not found: install it (apt-get install prometheus) or set {env_var}")
    return path


def _seed_consumer_group(kafka: str, topic: str, group: str) -> None:
    """A group with known lag (5 produced, 2 committed) so the exporter has a partition to report."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    producer = KafkaProducer(bootstrap_servers=kafka)
    for i in range(5):
        producer.send(topic, key=b"m1", value=f"{i}".encode(), partition=0)
    producer.flush(timeout=30)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=kafka, group_id=group, enable_auto_commit=False)
    consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(2, "", -1)})
    consumer.close()


@dataclass(frozen=True)
class System:
    client: PrometheusClient
    seeded_group: str


@pytest.fixture(scope="module")
def running_system(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    prometheus = _binary("prometheus", "FLOATBRIDGE_TEST_PROMETHEUS_BIN")
    missing = [p.name for p in PROCESSES if not _command_available(p.argv)]
    if missing:
        pytest.skip(f"processes not available yet: {missing} (see PROCESSES in this file)")
    tmp = tmp_path_factory.mktemp("prom")
    suffix = f"{os.getpid()}_{int(time.time())}"
    group = f"test-observability-{suffix}"
    _seed_consumer_group(kafka_bootstrap, f"test.observability.lag.{suffix}", group)

    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    jobs: dict[str, list[str]] = {}
    try:
        for p in PROCESSES:
            port = _free_port()
            argv = [a.format(port=port, kafka=kafka_bootstrap, tmp=tmp) for a in p.argv]
            log = tmp / f"{p.name}.log"
            with log.open("wb") as fh:
                proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            procs.append((proc, log))
            jobs.setdefault(p.job, []).append(f"127.0.0.1:{port}")

            def died(proc: subprocess.Popen[bytes] = proc, log: Path = log) -> str | None:
                code = proc.poll()
                return None if code is None else f"exited with {code}:\n{_tail(log)}"

            _wait(f"{p.name} /metrics on :{port}", lambda port=port: _metrics_up(port), START_TIMEOUT, died)

        client = _start_prometheus(prometheus, tmp, jobs, procs)
        yield System(client, group)
    finally:
        for proc, _ in reversed(procs):
            proc.terminate()
        for proc, _ in reversed(procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _start_prometheus(
    binary: str, tmp: Path, jobs: dict[str, list[str]], procs: list[tuple[subprocess.Popen[bytes], Path]]
) -> PrometheusClient:
    port = _free_port()
    scrape = "\n".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: {targets!r}".replace("'", '"')
        for job, targets in jobs.items()
    )
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES_DIR}/*.yml\n"
        f"scrape_configs:\n{scrape}\n"
    )
    log = tmp / "prometheus.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    procs.append((proc, log))
    client = PrometheusClient(f"http://127.0.0.1:{port}", timeout=5)

    def died() -> str | None:
        code = proc.poll()
        return None if code is None else f"exited with {code}:\n{_tail(log)}"

    _wait("prometheus ready", client.ready, 30, died)

    def all_up() -> bool:
        targets = client.targets()
        return len(targets) == sum(map(len, jobs.values())) and all(t["health"] == "up" for t in targets)

    _wait("all scrape targets up", all_up, 30, died)
    return client


def _empty_queries(client: PrometheusClient) -> tuple[list[str], list[str]]:
    empty, errors = [], []
    for q in all_panel_queries():
        try:
            if not client.query(render_expr(q.expr, rate_interval=RATE_INTERVAL)):
                empty.append(f"{q.where}: {q.expr}")
        except PrometheusError as exc:
            errors.append(f"{q.where}: {exc}")
    return empty, errors


def test_every_dashboard_panel_query_returns_data(running_system: System) -> None:
    deadline = time.monotonic() + DATA_TIMEOUT
    while True:
        empty, errors = _empty_queries(running_system.client)
        assert not errors, "panel queries Prometheus rejects:\n" + "\n".join(errors)
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not empty, "panel queries without data after an end-to-end run:\n" + "\n".join(empty)


def test_every_alert_rule_parses_and_evaluates(running_system: System) -> None:
    rules = load_rules()
    assert rules
    failures = []
    for rule in rules:
        try:
            running_system.client.query(rule.expr)
        except PrometheusError as exc:
            failures.append(f"{rule.where}: {exc}")
    assert not failures, "\n".join(failures)


def test_prometheus_evaluates_every_loaded_rule_without_error(running_system: System) -> None:
    expected = {r.name for r in load_rules()}
    deadline = time.monotonic() + 30

    def state() -> list[dict[str, Any]]:
        return [r for g in running_system.client.rule_groups() for r in g["rules"]]

    rules = state()
    while time.monotonic() < deadline and any(r.get("lastEvaluation", "").startswith("0001") for r in rules):
        time.sleep(1)
        rules = state()
    assert {r["name"] for r in rules} == expected
    unhealthy = [f"{r['name']}: {r.get('lastError')}" for r in rules if r.get("health") != "ok"]
    assert not unhealthy, "\n".join(unhealthy)


def test_lag_exporter_reports_the_seeded_group_lag(running_system: System) -> None:
    result = running_system.client.query(
        f'floatbridge_kafka_consumer_lag_messages{{group="{running_system.seeded_group}"}}'
    )
    assert [s.points[-1][1] for s in result] == [3.0]
