"""Broker restart under traffic, on a throwaway broker (never the shared one): ingest answers 503 while
it is down, the services reconnect by themselves and catch up; nothing accepted is lost."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from floatbridge.audit.sources import audit
from floatbridge.audit.traffic import DecisionFeeder, Marketplace, chunks, interleave, register_merchant
from floatbridge.stack import free_port
from tests.e2e.test_faults_kill import ADMIN_KEY, INGEST_KEY, histories, make_stack

pytestmark = [pytest.mark.e2e, pytest.mark.soak]  # > 3 minutes with a broker start and stop
SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "local" / "kafka.sh"


class ThrowawayKafka:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="fb-kafka-fault-")
        self.port = free_port()
        self.env = {**os.environ, "FLOATBRIDGE_LOCAL_DIR": self.dir, "FLOATBRIDGE_KAFKA_PORT": str(self.port),
                    "FLOATBRIDGE_KAFKA_CONTROLLER_PORT": str(free_port()), "FLOATBRIDGE_KAFKA_HEAP": "384m"}
        self.bootstrap = f"127.0.0.1:{self.port}"

    def run(self, action: str) -> None:
        subprocess.run(["bash", str(SCRIPT), action], env=self.env, check=True, capture_output=True, timeout=150)


@pytest.fixture
def broker(kafka_bootstrap: str) -> Iterator[ThrowawayKafka]:
    k = ThrowawayKafka()
    try:
        k.run("start")
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"throwaway broker did not start: {exc.stderr.decode()[-500:]}")
    try:
        yield k
    finally:
        k.run("stop")


def test_broker_restart_under_traffic_services_reconnect_and_catch_up(
        broker: ThrowawayKafka, pg_schema_url: str, fresh_topic_prefix: str, tmp_path: Path) -> None:
    stack = make_stack(broker.bootstrap, pg_schema_url, fresh_topic_prefix, tmp_path, workers=0)
    stack.prepare()
    stack.start(wait=90)
    try:
        disb = f"http://127.0.0.1:{stack.cfg.disbursement_port}"
        merchants = histories(3, days=8)
        for mid, _, _ in merchants:
            register_merchant(disb, ADMIN_KEY, mid, f"key-{mid}-0123456789abcdef")
        market = Marketplace(f"http://127.0.0.1:{stack.cfg.ingest_port}", INGEST_KEY, attempts=120)
        batches = chunks(interleave([ev for _, _, ev in merchants]), 25)
        sender = threading.Thread(target=lambda: [market.send(b) for b in batches], daemon=True)
        sender.start()
        time.sleep(1.0)
        broker.run("stop")
        time.sleep(3)
        broker.run("start")
        sender.join(150)
        assert not sender.is_alive(), "the marketplace could not deliver its events after the restart"
        feeder = DecisionFeeder(broker.bootstrap, fresh_topic_prefix)
        feeder.offer(merchants[0][0], 2_000, [merchants[0][1][0][0]])
        feeder.close()
        report = audit(broker.bootstrap, pg_schema_url, fresh_topic_prefix, settle_seconds=60)
        # audit() settles on "no discrepancy", which holds before disbursement has consumed the offer: give
        # the reconnecting consumer the same 60 s to store it (eventually consistent, not a timing goal).
        deadline = time.monotonic() + 60
        while report.ok and report.counts["offers_stored"] < 1 and time.monotonic() < deadline:
            time.sleep(1)
            report = audit(broker.bootstrap, pg_schema_url, fresh_topic_prefix, settle_seconds=60)
        print(report.to_text(), market.errors_seen)
        assert report.ok, report.to_text()
        assert report.counts["offers_stored"] == 1, "disbursement reconnected and consumes again"
        assert report.counts["ingest_accepted"] == sum(len(ev) for _, _, ev in merchants)
    finally:
        stack.stop()
